"""`cxrtrek export-hf`: a project checkpoint as a Hugging Face directory of the family its model
config belongs to (`families`: LLaVA -> `LlavaForConditionalGeneration`, Gemma 3 / MedGemma ->
`Gemma3ForConditionalGeneration`), which loads with no network in `transformers`:

    model = load_torch_model(out)                       # cxrtrek_jax.hf; the family's model class
    processor = AutoProcessor.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)

Files: config.json (the family's `to_hf_config`) and generation_config.json; model.safetensors,
or shards plus model.safetensors.index.json above `max_shard_bytes` (`safetensors_dir`);
tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja and
cxrtrek_chat_format.json (the checkpoint's tokenizer); processor_config.json (the family's
`write_processor`; its image preprocessing is described in the family module). With
`lora="adapter"` also `lora_adapter/` (`adapter_config.json` + `adapter_model.safetensors`,
PEFT's layout). Only JSON and safetensors are written, and everything is checked before writing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cxrtrek_jax.hf import families
from cxrtrek_jax.hf.errors import ExportError
from cxrtrek_jax.hf.family_spec import HFFamily
from cxrtrek_jax.hf.safetensors_dir import DEFAULT_MAX_SHARD_BYTES, write_safetensors_dir
from cxrtrek_jax.hf.tensor_specs import flatten_tree, tensors_from_params
from cxrtrek_jax.model import LoraConfig, ModelConfig

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_DIR",
    "ADAPTER_WEIGHTS_FILE",
    "EXPORT_DTYPES",
    "LORA_MODES",
    "ExportError",
    "ExportResult",
    "export_checkpoint",
    "lora_adapter_tensors",
    "parse_size",
    "write_lora_adapter",
]

EXPORT_DTYPES = ("float32", "bfloat16")
# "merge": fold adapters into the base weights; "adapter": base weights plus a PEFT adapter
# directory; "none": the checkpoint must hold no adapters.
LORA_MODES = ("none", "merge", "adapter")
ADAPTER_DIR = "lora_adapter"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_checkpoint` wrote: `files` relative to `directory`, and the LoRA
    module names merged (mode "merge") or written as an adapter (mode "adapter")."""

    directory: Path
    files: tuple[str, ...]
    lora_modules: tuple[str, ...]


def parse_size(text: str) -> int:
    """Bytes of a size such as "2GB" (10**9), "500MiB" (2**20) or "123456"; must be > 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ExportError(f"cannot read the size {text!r}: expected a number with an optional unit "
                          f"({', '.join(u for u in _SIZE_UNITS if u)}), e.g. 2GB")
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size < 1:
        raise ExportError(f"size {text!r} must be at least one byte")
    return size


# ---------------------------------------------------------------------------
# LoRA: merged, stripped, or as PEFT adapter tensors
# ---------------------------------------------------------------------------

def _without_lora(tree: Mapping) -> dict:
    return {key: _without_lora(value) if isinstance(value, Mapping) else value
            for key, value in tree.items() if key != "lora"}


def lora_adapter_tensors(config: ModelConfig, params: Mapping, *, dtype: str = "float32",
                         ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """PEFT tensors of the adapters in `params` and the module names they adapt.

    Each adapted dense layer with kernel [*in, *out] and adapter a [*in, r],
    b [r, *out] gives `base_model.model.<module>.lora_A.weight` = a as
    [r, prod(in)] and `...lora_B.weight` = b as [prod(out), r], so that
    W_hf + (lora_alpha / r) * B @ A is the merged weight in Hugging Face
    layout.
    """
    if config.lora is None:
        raise ExportError("the checkpoint's model config has no LoRA adapters")
    family = families.family_for_config(config)
    flat = flatten_tree(params)
    out_dtype = np.dtype(_numpy_dtype(dtype))
    dense = [spec for spec in family.tensor_specs(dataclasses.replace(config, lora=None), False)
             if spec.kind == "dense"]
    adapted = {path[:-2] for path in flat if len(path) > 2 and path[-2] == "lora"}
    stray = sorted(".".join(map(str, p)) for p in adapted - {spec.path[:-1] for spec in dense})
    if stray:
        raise ExportError(f"LoRA adapters on layers with no Hugging Face Linear module (a PEFT adapter cannot "
                          f"target them; Gemma 3's projector is a plain weight matrix): {stray}; export them "
                          "merged (--merge-lora)")
    tensors: dict[str, np.ndarray] = {}
    modules = []
    for spec in dense:
        layer = spec.path[:-1]
        if layer not in adapted:
            continue
        a = np.asarray(flat[(*layer, "lora", "a")], np.float32)
        b = np.asarray(flat[(*layer, "lora", "b")], np.float32)
        rank = a.shape[-1]
        module = family.layout.module_name(spec.hf_name)
        tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(
            a.reshape(-1, rank).T.astype(out_dtype))
        tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(
            b.reshape(rank, -1).T.astype(out_dtype))
        modules.append(module)
    return tensors, tuple(modules)


def _numpy_dtype(dtype: str):
    import jax.numpy as jnp

    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"export dtype must be one of {EXPORT_DTYPES}, got {dtype!r}")
    return jnp.dtype(dtype)


def write_lora_adapter(directory: str | os.PathLike, lora: LoraConfig, tensors: Mapping[str, np.ndarray],
                       modules: tuple[str, ...], *, base_model_path: str) -> None:
    """Write `adapter_config.json` + `adapter_model.safetensors` (PEFT LoRA) into `directory`.

    tensors, modules: from `lora_adapter_tensors`. The config lists the
    modules by full name in `target_modules`; `lora_alpha / r` is our
    `LoraConfig.scale`.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    adapter_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_path,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": list(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (directory / ADAPTER_CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2) + "\n")
    save_file(dict(tensors), str(directory / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})


# ---------------------------------------------------------------------------
# Tokenizer and generation config
# ---------------------------------------------------------------------------

def _load_tokenizer(tokenizer_dir: Path | None, config: ModelConfig):
    """Our tokenizer of `tokenizer_dir`, checked against the model config."""
    from data_pipeline.text.tokenizer import load_tokenizer

    if tokenizer_dir is None:
        raise ExportError("the checkpoint names no tokenizer directory; pass one (--tokenizer DIR)")
    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot load the tokenizer of {tokenizer_dir}: {err}") from err
    mismatch = tokenizer.model_mismatch(config.image_token_id, config.vocab_size)
    if mismatch:
        raise ExportError(f"tokenizer {tokenizer_dir}: {mismatch}")
    return tokenizer


def _write_generation_config(directory: Path, tokenizer) -> None:
    """Greedy-by-default generation that stops at end-of-turn (or eos)."""
    from transformers import GenerationConfig

    stops = list(dict.fromkeys([tokenizer.end_of_turn_id, tokenizer.eos_id]))  # one id when they coincide
    GenerationConfig(bos_token_id=tokenizer.bos_id, eos_token_id=stops,
                     pad_token_id=tokenizer.pad_id).save_pretrained(str(directory))


# Files of an imported checkpoint's own processor, kept with its tokenizer at import.
CHECKPOINT_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _keep_checkpoint_processor(out_dir: Path, tokenizer, tokenizer_dir: Path) -> None:
    """For a checkpoint that renders through its own chat template (imported, `CheckpointTemplate`):
    the processor files it came with (image processor settings, image-token settings) replace the
    family's, and its template becomes the processor's and the tokenizer's, so `AutoProcessor` gives
    the tokens and pixels it was trained on."""
    template = getattr(tokenizer, "template", None)
    if template is None:
        return
    for name in CHECKPOINT_PROCESSOR_FILES:
        kept = tokenizer_dir / name
        if kept.exists():
            data = json.loads(kept.read_text(encoding="utf-8"))
            data.pop("chat_template", None)
            (out_dir / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out_dir / "chat_template.json").unlink(missing_ok=True)
    (out_dir / "chat_template.jinja").write_text(template.chat_template, encoding="utf-8")
    config_path = out_dir / "tokenizer_config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["chat_template"] = template.chat_template
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# The whole export
# ---------------------------------------------------------------------------

def _check_output_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"output directory {out_dir} exists and is not empty; choose a new directory")


def _relative_files(directory: Path) -> tuple[str, ...]:
    return tuple(sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()))


def export_checkpoint(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, *, lora: str = "none",
                      dtype: str = "float32", max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                      step: int | None = None, tokenizer_dir: str | os.PathLike | None = None) -> ExportResult:
    """Write checkpoint `step` (default: the newest) of `ckpt_dir` as a Hugging Face directory of its
    model config's family.

    lora: one of `LORA_MODES`; a checkpoint with adapters needs "merge" or
    "adapter", one without needs "none". dtype: of the written weights.
    tokenizer_dir: overrides the tokenizer the checkpoint names. The output
    directory must be new or empty; everything is checked before writing.
    """
    from cxrtrek_jax.decoding.model_loading import load_checkpoint_model

    if lora not in LORA_MODES:
        raise ExportError(f"lora mode must be one of {LORA_MODES}, got {lora!r}")
    _numpy_dtype(dtype)
    out_dir = Path(out_dir)
    _check_output_dir(out_dir)
    loaded = load_checkpoint_model(ckpt_dir, step)
    config = loaded.config
    if config.lora is not None and lora == "none":
        raise ExportError(f"checkpoint {ckpt_dir} holds LoRA adapters; export them merged into the weights "
                          "(--merge-lora) or as a PEFT adapter directory (--lora-adapter)")
    if config.lora is None and lora != "none":
        raise ExportError(f"checkpoint {ckpt_dir} holds no LoRA adapters; drop --merge-lora/--lora-adapter")
    base_config = dataclasses.replace(config, lora=None)
    family = families.family_for_config(base_config)
    tokenizer = _load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else loaded.tokenizer_dir, config)
    family_ids = family.check_export(tokenizer, base_config)
    tensors, lora_modules, adapter_tensors = _weights(loaded.model(), config, family, lora, dtype)
    token_ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    hf_config = family.to_hf_config(base_config, **token_ids, **family_ids)

    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config.dtype = dtype
    hf_config.to_json_file(str(out_dir / "config.json"))
    write_safetensors_dir(tensors, str(out_dir), max_shard_bytes=max_shard_bytes)
    _write_generation_config(out_dir, tokenizer)
    family.write_processor(out_dir, tokenizer, base_config)
    _keep_checkpoint_processor(out_dir, tokenizer, Path(tokenizer_dir) if tokenizer_dir else loaded.tokenizer_dir)
    if lora == "adapter":
        write_lora_adapter(out_dir / ADAPTER_DIR, config.lora, adapter_tensors, lora_modules,
                           base_model_path=str(out_dir.resolve()))
    return ExportResult(out_dir, _relative_files(out_dir), lora_modules)


def _weights(model, config: ModelConfig, family: HFFamily, lora: str, dtype: str,
             ) -> tuple[dict[str, np.ndarray], tuple[str, ...], dict[str, np.ndarray]]:
    """(checkpoint tensors of the base weights, LoRA module names, PEFT adapter tensors) of `model`
    (a CXRTrekNet of `config`, changed in place by mode "merge")."""
    from flax import nnx

    from cxrtrek_jax.model import merge_lora

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    base_config = dataclasses.replace(config, lora=None)
    lora_modules: tuple[str, ...] = ()
    adapter_tensors: dict[str, np.ndarray] = {}
    if lora == "adapter":
        adapter_tensors, lora_modules = lora_adapter_tensors(config, params, dtype=dtype)
    if lora == "merge":
        merged_paths = merge_lora(model)
        lora_modules = tuple(family.layout.module_name(name)
                             for name in _hf_weight_names(base_config, family, merged_paths))
        base_params = nnx.state(model, nnx.Param)
    else:
        base_params = _without_lora(params)
    tensors = tensors_from_params(base_params, family.tensor_specs(base_config, False), dtype=dtype)
    return tensors, lora_modules, adapter_tensors


def _hf_weight_names(config: ModelConfig, family: HFFamily, module_paths: tuple[str, ...]) -> list[str]:
    """Checkpoint weight names of our dense layers given by dotted module path."""
    by_path = {".".join(map(str, spec.path[:-1])): spec.hf_name
               for spec in family.tensor_specs(config, False) if spec.kind == "dense"}
    missing = [path for path in module_paths if path not in by_path]
    if missing:
        raise ExportError(f"merged LoRA layers with no Hugging Face weight: {missing}")
    return [by_path[path] for path in module_paths]
