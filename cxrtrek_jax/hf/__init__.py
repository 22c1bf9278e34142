"""Hugging Face interop for every family in the table (LLaVA; Gemma 3 / MedGemma): `cxrtrek import-hf`,
`cxrtrek export-hf`, and the PyTorch model of an exported directory.

    from cxrtrek_jax import hf
    hf.import_hf_checkpoint("llava-or-medgemma-dir", "runs/imported")  # -> a params-only step-0 checkpoint
    hf.export_checkpoint("runs/x/checkpoints", "hf-out")   # -> Llava- or Gemma3ForConditionalGeneration dir
    model = hf.load_torch_model("hf-out")                 # that class, from_pretrained

Modules: shared by every family, `errors`, `tensor_specs` (tensor name mapping and layout
changes), `safetensors_dir` (single or sharded safetensors files), `siglip_tower` (the vision
tower both families use), `clip_tower` (LLaVA-1.5's) and `family_spec` (`HFFamily`, what a family
declares); one module per
family, `llava_family` (`LlavaForConditionalGeneration`) and `gemma3_family`
(`Gemma3ForConditionalGeneration`; the CXRTrekNet decoder itself is `cxrtrek_jax/model/gemma3.py`);
`families`, the table everything below looks families up in; `conversion` (configs, tensors,
checkpoint directories and the PyTorch model of any family); `importer` (a Hugging Face directory
as a checkpoint, with its chat format) and `exporter` (a checkpoint as a Hugging Face directory,
optionally with a PEFT LoRA adapter).
"""

from cxrtrek_jax.hf.conversion import (
    from_hf_config,
    from_hf_tensors,
    hf_tensor_specs,
    load_hf_checkpoint,
    load_torch_model,
    save_hf_checkpoint,
    to_hf_config,
    to_hf_tensors,
)
from cxrtrek_jax.hf.errors import ExportError, HFCheckpointError, HFConfigError
from cxrtrek_jax.hf.exporter import ExportResult, export_checkpoint
from cxrtrek_jax.hf.families import family_for_config, family_for_model_type
from cxrtrek_jax.hf.importer import HFImportError, ImportResult, derive_chat_format, import_hf_checkpoint
from cxrtrek_jax.hf.safetensors_dir import SAFETENSORS_INDEX_FILE, read_safetensors_dir, write_safetensors_dir

__all__ = [
    "from_hf_config", "from_hf_tensors", "hf_tensor_specs", "load_hf_checkpoint", "load_torch_model",
    "save_hf_checkpoint", "to_hf_config", "to_hf_tensors",
    "ExportError", "HFCheckpointError", "HFConfigError",
    "ExportResult", "export_checkpoint",
    "family_for_config", "family_for_model_type",
    "HFImportError", "ImportResult", "derive_chat_format", "import_hf_checkpoint",
    "SAFETENSORS_INDEX_FILE", "read_safetensors_dir", "write_safetensors_dir",
]
