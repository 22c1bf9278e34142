"""`HFFamily`: what one Hugging Face architecture family declares so that import, export and the
PyTorch loader handle it (one `FAMILY = HFFamily(...)` per family module, one row of the table in
`cxrtrek_jax.hf.families`)."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cxrtrek_jax.hf.tensor_specs import CONDITIONAL_GENERATION_LAYOUT, CheckpointLayout, TensorSpec
from cxrtrek_jax.model import ModelConfig

__all__ = ["HFFamily"]


@dataclasses.dataclass(frozen=True)
class HFFamily:
    """One Hugging Face family: its names, its two-way config mapping, its tensors and its export hooks.

    name: for messages ("LLaVA"). model_types: the config.json `model_type`s it reads (the first
    is the one it writes). config_class, model_class: classes of `transformers` by name, e.g.
    "LlavaConfig", "LlavaForConditionalGeneration", or "package.module:Name" for a class defined
    elsewhere (resolved when first needed, `hf_class`). architecture: one line for
    messages ("SigLIP or CLIP + Llama"). text_family, projector_kind: the `TextConfig.family` and
    `ProjectorConfig.kind` of the model configs it exports (no two families share the pair).
    to_hf_config(cfg, *, bos_token_id, eos_token_id, pad_token_id, **ids): the transformers
    config, `ids` being what `check_export` returned. from_hf_config(hf_config_or_dict, *,
    max_images, dtype): our ModelConfig, refusing (HFConfigError, naming the field) what
    CXRTrekNet cannot represent. tensor_specs(cfg, vision_head): every checkpoint tensor in
    order; with vision_head also the dropped ones of SigLIP's pooling head.
    check_export(tokenizer, cfg): checks, before anything is written, that the processor can be
    written for our tokenizer and model (ExportError), and returns the token ids `to_hf_config`
    needs beyond bos/eos/pad. write_processor(directory, tokenizer, cfg): the tokenizer files
    and processor_config.json of an `AutoProcessor`. chat_image_wrapping(config_json,
    hf_tokenizer, added_tokens): the `ChatFormat` fields (image_open, image_close) of the text
    the family's processor writes around each image's tokens, from an imported directory
    (HFConfigError when the tokenizer lacks them); None: it writes none. layout: the checkpoint's
    tensor and module names.
    """

    name: str
    model_types: tuple[str, ...]
    config_class: str
    model_class: str
    architecture: str
    text_family: str
    projector_kind: str
    to_hf_config: Callable[..., Any]
    from_hf_config: Callable[..., ModelConfig]
    tensor_specs: Callable[[ModelConfig, bool], list[TensorSpec]]
    check_export: Callable[[Any, ModelConfig], dict[str, int]]
    write_processor: Callable[[Path, Any, ModelConfig], None]
    chat_image_wrapping: Callable[[Mapping[str, Any], Any, set[str]], dict[str, str]] | None = None
    layout: CheckpointLayout = CONDITIONAL_GENERATION_LAYOUT

    def owns(self, cfg: ModelConfig) -> bool:
        """Whether the family exports `cfg` (its decoder family and projector kind)."""
        return (cfg.text.family, cfg.projector.kind) == (self.text_family, self.projector_kind)

    def hf_class(self, name: str) -> type:
        """The class `name` names (`config_class` or `model_class`): "Name" in `transformers`, or
        "package.module:Name"."""
        module, _, attribute = name.rpartition(":")
        return getattr(importlib.import_module(module or "transformers"), attribute)

    def describe(self) -> str:
        """E.g. "'llava' (LlavaForConditionalGeneration: SigLIP or CLIP + Llama)"."""
        model_class = self.model_class.rpartition(":")[2]
        return f"{', '.join(repr(t) for t in self.model_types)} ({model_class}: {self.architecture})"
