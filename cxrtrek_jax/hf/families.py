"""The table of Hugging Face families: the one place import, export and the PyTorch loader look up
which family reads a config.json (`family_for_model_type`, by its `model_type`) and which exports
a model config (`family_for_config`, by its text.family and projector.kind).

    FAMILIES = (llava_family.FAMILY, gemma3_family.FAMILY)

A family is one module of `cxrtrek_jax.hf` (name it `<family>_family.py`) that declares
`FAMILY = HFFamily(...)` (`family_spec.HFFamily`), i.e.:
  * name, model_types (the config.json `model_type`s it reads), architecture (one line);
  * config_class and model_class: the `transformers` class names of its config and of its
    `*ForConditionalGeneration` model (`load_torch_model` loads the latter);
  * text_family and projector_kind: the `TextConfig.family` / `ProjectorConfig.kind` it exports;
  * to_hf_config / from_hf_config: the config mapping both ways, refusing by field name
    (`errors.refuse`) what either side cannot represent;
  * tensor_specs(cfg, vision_head): every checkpoint tensor, built from `tensor_specs` (dense,
    norm, bias specs) and `siglip_tower` / `clip_tower` (its vision tower, if SigLIP / CLIP);
  * check_export and write_processor: the export's checks and its tokenizer + processor files;
  * optionally chat_image_wrapping (text its processor writes around an image's tokens) and
    layout (tensor and module names, default `CONDITIONAL_GENERATION_LAYOUT`).
Adding a third family is that module plus its row in `FAMILIES`; nothing else branches on the
family. No two rows may share a model_type or a (text_family, projector_kind) pair.
"""

from __future__ import annotations

from cxrtrek_jax.hf import gemma3_family, llava_family
from cxrtrek_jax.hf.errors import HFConfigError
from cxrtrek_jax.hf.family_spec import HFFamily
from cxrtrek_jax.model import ModelConfig

__all__ = ["FAMILIES", "family_for_config", "family_for_model_type", "find_family", "supported"]

FAMILIES: tuple[HFFamily, ...] = (llava_family.FAMILY, gemma3_family.FAMILY)


def find_family(model_type: str | None) -> HFFamily | None:
    """The family that reads config.json `model_type`, None when no family does."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def supported() -> str:
    """The families for messages: "'llava' (LlavaForConditionalGeneration: SigLIP or CLIP + Llama) and ..."."""
    return " and ".join(f.describe() for f in FAMILIES)


def family_for_model_type(model_type: str | None, where: str) -> HFFamily:
    """The family that reads config.json `model_type`; HFConfigError naming `where` (the config file)
    and every supported model_type when none does."""
    family = find_family(model_type)
    if family is None:
        raise HFConfigError(f"{where}: model_type {model_type!r} is not supported; supported: {supported()}")
    return family


def family_for_config(cfg: ModelConfig) -> HFFamily:
    """The family that exports `cfg`; HFConfigError naming every family's pair when none does."""
    owners = [f for f in FAMILIES if f.owns(cfg)]
    if len(owners) != 1:
        pairs = ", ".join(f"{f.name} (text.family {f.text_family!r}, projector.kind {f.projector_kind!r})"
                          for f in FAMILIES)
        raise HFConfigError(f"{'no' if not owners else 'more than one'} Hugging Face family exports text.family "
                            f"{cfg.text.family!r} with projector.kind {cfg.projector.kind!r}; families: {pairs}")
    return owners[0]
