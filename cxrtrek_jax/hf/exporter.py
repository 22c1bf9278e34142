"""`cxrtrek export-hf`: a project checkpoint as a Hugging Face LLaVA directory, or, for a Gemma 3
family model, as a `Gemma3ForConditionalGeneration` directory (config.json, generation_config.json,
safetensors, the tokenizer files with the chat template, preprocessor_config.json; `hf_gemma3`).
The rest of this docstring describes the LLaVA directory.

The directory loads with no network in `transformers`:

    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)     # LlavaProcessor
    tokenizer = AutoTokenizer.from_pretrained(out)

Files: config.json and generation_config.json; model.safetensors, or shards
plus model.safetensors.index.json above `max_shard_bytes` (`hf_llava`);
tokenizer.json, tokenizer_config.json, special_tokens_map.json,
chat_template.jinja and cxrtrek_chat_format.json (the checkpoint's tokenizer);
processor_config.json (`LlavaProcessor` + its image processor). With
`lora="adapter"` also `lora_adapter/` (`adapter_config.json` +
`adapter_model.safetensors`, PEFT's layout). Only JSON and safetensors are
written.

Image preprocessing. Ours (`data_pipeline.files.images`): an 8-bit grayscale file
becomes x / 255; `resize_with_pad` fits it into S x S (longest side S, the
other round(side * S / longest)) with PIL's antialiased BILINEAR on float
("F") pixels, centred at offset floor((S - side) / 2) on black; the vision
tower normalises (x - pixel_mean) / pixel_std. `JanusImageProcessor` (PIL
backend) does the same geometry exactly: longest side to S with the same
rounding (`min_size=1`), BILINEAR, centred pad with offset floor(pad / 2).
Its pad colour is int(255 * image_mean), so the padding is black only when
image_mean < 1 / 255; the normalisation is kept exact by choosing
image_mean = image_std * pixel_mean / pixel_std with image_mean = 2**-9 and
rescale_factor = image_std / (255 * pixel_std) (see
`image_processor_options`). The one difference left is that transformers
resizes 8-bit images through PIL's 8-bit path (two passes, each rounded to
an integer level) where we resize floats: on 8-bit grayscale files the
pixel values differ by less than 1/255 before normalisation (less than
2/255 after it with pixel_std = 0.5; measured 0.98/255 at most over random
and smooth images of 17..1000 px), and are identical when the file is
already S x S. Inputs must be 8-bit images (PIL images or uint8 arrays; a
colour image is used per channel, where we use its luminance). When
torchvision is installed, `AutoProcessor.from_pretrained(out,
backend="pil")` picks this PIL processor; its torchvision twin resizes
differently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cxrtrek_jax.hf import gemma3 as hf_gemma3
from cxrtrek_jax.hf import llava as hf_llava
from cxrtrek_jax.model import LoraConfig, ModelConfig, VisionConfig

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_DIR",
    "ADAPTER_WEIGHTS_FILE",
    "EXPORT_DTYPES",
    "LORA_MODES",
    "ExportError",
    "ExportResult",
    "LoadedCheckpoint",
    "export_checkpoint",
    "hf_module_name",
    "image_processor_options",
    "load_checkpoint",
    "lora_adapter_tensors",
    "parse_size",
    "write_lora_adapter",
    "write_processor",
]

EXPORT_DTYPES = ("float32", "bfloat16")
# "merge": fold adapters into the base weights; "adapter": base weights plus a PEFT adapter
# directory; "none": the checkpoint must hold no adapters.
LORA_MODES = ("none", "merge", "adapter")
ADAPTER_DIR = "lora_adapter"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
_PROCESSOR_IMAGE_MEAN = 2.0**-9  # < 1/255, so JanusImageProcessor pads with int(255 * mean) = 0
_PEFT_PREFIX = "base_model.model."
# Checkpoint tensor names (hf_llava) -> module names inside `LlavaForConditionalGeneration`.
_MODULE_PREFIXES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head", "lm_head"),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class ExportError(ValueError):
    """A checkpoint or request that cannot be exported; the message says why."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_checkpoint` wrote: `files` relative to `directory`, and the LoRA
    module names merged (mode "merge") or written as an adapter (mode "adapter")."""

    directory: Path
    files: tuple[str, ...]
    lora_modules: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    """config; `model`, the CXRTrekNet holding the checkpoint's parameters (LoRA included);
    metadata; the tokenizer directory it names (None when it names none)."""

    config: ModelConfig
    model: Any
    metadata: Mapping[str, Any]
    tokenizer_dir: Path | None


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
# Reading the checkpoint
# ---------------------------------------------------------------------------

def load_checkpoint(ckpt_dir: str | os.PathLike, step: int | None = None) -> LoadedCheckpoint:
    """Config, parameters and tokenizer directory of checkpoint `step` (default: the newest).

    Raises ExportError when the metadata holds no usable model config and
    `CheckpointMismatchError` (naming each parameter) when the parameters do
    not fit it.
    """
    from flax import nnx

    from cxrtrek_jax.train import checkpointing
    from cxrtrek_jax.decoding.model_loading import split_for_decoding, tokenizer_dir_of
    from cxrtrek_jax.model import from_dict

    ckpt_dir = Path(ckpt_dir)
    metadata = checkpointing.read_metadata(ckpt_dir, step)
    if "model_config" not in metadata:
        raise ExportError(f"checkpoint {ckpt_dir}: its metadata holds no model_config")
    try:
        config = from_dict(metadata["model_config"])
    except (TypeError, ValueError) as err:
        raise ExportError(f"checkpoint {ckpt_dir}: unusable model_config in its metadata: {err}") from err
    params = checkpointing.load_params(ckpt_dir, step)
    model = nnx.merge(*split_for_decoding(config, params, where=f"checkpoint {ckpt_dir}"))
    return LoadedCheckpoint(config, model, metadata, tokenizer_dir_of(metadata, ckpt_dir))


# ---------------------------------------------------------------------------
# LoRA: merged, stripped, or as PEFT adapter tensors
# ---------------------------------------------------------------------------

def _without_lora(tree: Mapping) -> dict:
    return {key: _without_lora(value) if isinstance(value, Mapping) else value
            for key, value in tree.items() if key != "lora"}


def hf_module_name(tensor_name: str) -> str:
    """The `LlavaForConditionalGeneration` module of a checkpoint weight name, e.g.
    "language_model.model.layers.0.self_attn.q_proj.weight" -> "model.language_model.layers.0.self_attn.q_proj"."""
    module = tensor_name.removesuffix(".weight")
    for prefix, replacement in _MODULE_PREFIXES:
        if module.startswith(prefix):
            return replacement + module[len(prefix):]
    raise ExportError(f"tensor {tensor_name!r} belongs to no known LLaVA module")


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
    flat = hf_llava.flatten_tree(params)
    out_dtype = np.dtype(_numpy_dtype(dtype))
    dense = [spec for spec in hf_llava.hf_tensor_specs(dataclasses.replace(config, lora=None))
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
        module = hf_module_name(spec.hf_name)
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
# Tokenizer and processor
# ---------------------------------------------------------------------------

def image_processor_options(vision: VisionConfig) -> dict[str, Any]:
    """Keyword arguments of `JanusImageProcessor` reproducing our preprocessing for `vision`.

    Output pixels: (x * rescale_factor - image_mean) / image_std for 8-bit x,
    equal to (x / 255 - pixel_mean) / pixel_std; the pad colour
    int(255 * image_mean) is 0 (see the module docstring). The processor feeds
    RGB, so the vision tower must take 3 channels.
    """
    from PIL import Image

    if vision.num_channels != 3:
        raise ExportError(f"the Hugging Face image processor gives 3-channel pixels; the vision tower takes "
                          f"{vision.num_channels} (vision.num_channels)")
    if vision.pixel_mean > 0:
        image_mean = _PROCESSOR_IMAGE_MEAN
        image_std = image_mean * vision.pixel_std / vision.pixel_mean
    else:
        image_mean, image_std = 0.0, vision.pixel_std
    return {
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": vision.image_size, "width": vision.image_size},
        "min_size": 1,
        "resample": int(Image.Resampling.BILINEAR),
        "do_pad": True,
        "do_rescale": True,
        "rescale_factor": image_std / (255.0 * vision.pixel_std),
        "do_normalize": True,
        "image_mean": [image_mean] * 3,
        "image_std": [image_std] * 3,
    }


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


def write_processor(directory: str | os.PathLike, tokenizer, config: ModelConfig) -> None:
    """Write the tokenizer files and processor_config.json of an `AutoProcessor`
    (`LlavaProcessor`: `JanusImageProcessor`, the tokenizer, the chat template) into `directory`.

    tokenizer: our `CXRTrekTokenizer`; its files (and cxrtrek_chat_format.json) are
    written first, then rewritten by `transformers` in its own format.
    """
    from transformers import AutoTokenizer, LlavaProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    from data_pipeline.text.chat_template import jinja_template

    directory = Path(directory)
    tokenizer.save(directory, model_max_length=config.text.max_positions)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    processor = LlavaProcessor(
        image_processor=JanusImageProcessorPil(**image_processor_options(config.vision)),
        tokenizer=hf_tokenizer,
        patch_size=config.vision.patch_size,
        vision_feature_select_strategy="full",
        chat_template=jinja_template(tokenizer.format),
        image_token=tokenizer.format.image,
    )
    processor.save_pretrained(str(directory))


def _image_marker_ids(tokenizer) -> dict[str, int]:
    """Gemma 3's start/end-of-image ids: the added tokens of the format's image_open / image_close."""
    fmt, backend = tokenizer.format, tokenizer.backend
    added = {t.content for t in backend.get_added_tokens_decoder().values()}
    found = {}
    for key, text in (("boi_token_id", fmt.image_open), ("eoi_token_id", fmt.image_close)):
        tokens = [t for t in added if t in text]
        if len(tokens) != 1:
            raise ExportError(f"a Gemma 3 export needs one added token in the chat format's "
                              f"{'image_open' if key.startswith('boi') else 'image_close'} {text!r} "
                              "(Gemma 3's start/end-of-image token)")
        found[key] = backend.token_to_id(tokens[0])
    return found


def write_gemma3_processor(directory: str | os.PathLike, tokenizer, config: ModelConfig) -> None:
    """The tokenizer files and processor_config.json of an `AutoProcessor` (`Gemma3Processor`: its
    PIL image processor with our rescaling and normalisation). The one chat template (tokenizer
    and processor) writes "<start_of_image>" per image, which the processor expands to
    image_open + N image tokens + image_close; given `tokens_per_image=N` it writes that
    expansion itself (as `render` does).

    Gemma 3's image processor resizes straight to S x S (the aspect is not kept) where ours fits
    the longest side and pads (`data_pipeline.files.images.resize_with_pad`): the pixels agree for
    square images; pad others to a square first.
    """
    from transformers import AutoTokenizer, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from data_pipeline.text.chat_template import jinja_template

    directory = Path(directory)
    fmt, vision = tokenizer.format, config.vision
    markers = _image_marker_ids(tokenizer)
    boi, eoi = (tokenizer.backend.id_to_token(markers[k]) for k in ("boi_token_id", "eoi_token_id"))
    if (fmt.image_open, fmt.image_close) != (f"\n\n{boi}", f"{eoi}\n\n"):
        raise ExportError(f"Gemma3Processor writes each image as '\\n\\n{boi}' + image tokens + '{eoi}\\n\\n'; "
                          f"the chat format has image_open={fmt.image_open!r}, image_close={fmt.image_close!r}")
    if vision.num_channels != 3:
        raise ExportError(f"the Hugging Face image processor gives 3-channel pixels; the vision tower takes "
                          f"{vision.num_channels} (vision.num_channels)")
    tokenizer.save(directory, model_max_length=config.text.max_positions)
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["extra_special_tokens"] = {"boi_token": boi, "eoi_token": eoi, "image_token": fmt.image}
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    image_processor = Gemma3ImageProcessorPil(
        do_convert_rgb=True, do_resize=True, size={"height": vision.image_size, "width": vision.image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[vision.pixel_mean] * 3,
        image_std=[vision.pixel_std] * 3, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=hf_tokenizer,
                                chat_template=jinja_template(fmt, image_text=boi),
                                image_seq_length=config.tokens_per_image)
    processor.save_pretrained(str(directory))


def _write_generation_config(directory: Path, tokenizer) -> None:
    """Greedy-by-default generation that stops at end-of-turn (or eos)."""
    from transformers import GenerationConfig

    stops = list(dict.fromkeys([tokenizer.end_of_turn_id, tokenizer.eos_id]))  # one id when they coincide
    GenerationConfig(bos_token_id=tokenizer.bos_id, eos_token_id=stops,
                     pad_token_id=tokenizer.pad_id).save_pretrained(str(directory))


# ---------------------------------------------------------------------------
# The whole export
# ---------------------------------------------------------------------------

def _check_output_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"output directory {out_dir} exists and is not empty; choose a new directory")


def _relative_files(directory: Path) -> tuple[str, ...]:
    return tuple(sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()))


def export_checkpoint(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, *, lora: str = "none",
                      dtype: str = "float32", max_shard_bytes: int = hf_llava.DEFAULT_MAX_SHARD_BYTES,
                      step: int | None = None, tokenizer_dir: str | os.PathLike | None = None) -> ExportResult:
    """Write checkpoint `step` (default: the newest) of `ckpt_dir` as a Hugging Face directory.

    lora: one of `LORA_MODES`; a checkpoint with adapters needs "merge" or
    "adapter", one without needs "none". dtype: of the written weights.
    tokenizer_dir: overrides the tokenizer the checkpoint names. The output
    directory must be new or empty; everything is checked before writing.
    """
    from flax import nnx

    from cxrtrek_jax.model import merge_lora

    if lora not in LORA_MODES:
        raise ExportError(f"lora mode must be one of {LORA_MODES}, got {lora!r}")
    _numpy_dtype(dtype)
    out_dir = Path(out_dir)
    _check_output_dir(out_dir)
    loaded = load_checkpoint(ckpt_dir, step)
    config = loaded.config
    if config.lora is not None and lora == "none":
        raise ExportError(f"checkpoint {ckpt_dir} holds LoRA adapters; export them merged into the weights "
                          "(--merge-lora) or as a PEFT adapter directory (--lora-adapter)")
    if config.lora is None and lora != "none":
        raise ExportError(f"checkpoint {ckpt_dir} holds no LoRA adapters; drop --merge-lora/--lora-adapter")
    tokenizer = _load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else loaded.tokenizer_dir, config)
    image_processor_options(config.vision)  # refuses a vision tower the processor cannot feed

    params = nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param))
    base_config = dataclasses.replace(config, lora=None)
    lora_modules: tuple[str, ...] = ()
    if lora == "adapter":
        adapter_tensors, lora_modules = lora_adapter_tensors(config, params, dtype=dtype)
    if lora == "merge":
        merged_paths = merge_lora(loaded.model)
        lora_modules = tuple(hf_module_name(name) for name in _hf_weight_names(base_config, merged_paths))
        base_params = nnx.state(loaded.model, nnx.Param)
    else:
        base_params = _without_lora(params)
    tensors = hf_llava.to_hf_tensors(base_params, base_config, dtype=dtype)

    token_ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    if hf_gemma3.is_gemma3(base_config):
        hf_config = hf_gemma3.to_hf_config(base_config, **token_ids, **_image_marker_ids(tokenizer))
    else:
        hf_config = hf_llava.to_hf_config(base_config, **token_ids)

    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config.dtype = dtype
    hf_config.to_json_file(str(out_dir / "config.json"))
    hf_llava.write_safetensors_dir(tensors, str(out_dir), max_shard_bytes=max_shard_bytes)
    _write_generation_config(out_dir, tokenizer)
    if hf_gemma3.is_gemma3(base_config):
        write_gemma3_processor(out_dir, tokenizer, base_config)
    else:
        write_processor(out_dir, tokenizer, base_config)
    if lora == "adapter":
        write_lora_adapter(out_dir / ADAPTER_DIR, config.lora, adapter_tensors, lora_modules,
                           base_model_path=str(out_dir.resolve()))
    return ExportResult(out_dir, _relative_files(out_dir), lora_modules)


def _hf_weight_names(config: ModelConfig, module_paths: tuple[str, ...]) -> list[str]:
    """Checkpoint weight names of our dense layers given by dotted module path."""
    by_path = {".".join(map(str, spec.path[:-1])): spec.hf_name
               for spec in hf_llava.hf_tensor_specs(config) if spec.kind == "dense"}
    missing = [path for path in module_paths if path not in by_path]
    if missing:
        raise ExportError(f"merged LoRA layers with no Hugging Face weight: {missing}")
    return [by_path[path] for path in module_paths]

