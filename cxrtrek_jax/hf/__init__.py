"""Hugging Face interop: the LLaVA and Gemma 3 tensor mappings, `cxrtrek import-hf` and `cxrtrek export-hf`.

    from cxrtrek_jax import hf
    hf.import_hf_checkpoint("llava-or-medgemma-dir", "runs/imported")  # -> a params-only step-0 checkpoint
    hf.export_checkpoint("runs/x/checkpoints", "hf-out")   # -> Llava- or Gemma3ForConditionalGeneration dir

Modules: `llava` (config and tensor mapping between CXRTrekNet and
`LlavaForConditionalGeneration`, safetensors I/O; `load_hf_checkpoint` dispatches on
`model_type`), `gemma3` (the same for `Gemma3ForConditionalGeneration`: Gemma 3, MedGemma),
`importer` (a Hugging Face directory as a checkpoint, with its chat format) and `exporter` (a
checkpoint as a Hugging Face directory, optionally with a PEFT LoRA adapter).
"""

from cxrtrek_jax.hf.exporter import ExportError, ExportResult, export_checkpoint, load_checkpoint
from cxrtrek_jax.hf.importer import HFImportError, ImportResult, derive_chat_format, import_hf_checkpoint
from cxrtrek_jax.hf.llava import (
    HFCheckpointError,
    HFConfigError,
    from_hf_config,
    load_hf_checkpoint,
    save_hf_checkpoint,
    to_hf_config,
)

__all__ = [
    "ExportError", "ExportResult", "export_checkpoint", "load_checkpoint",
    "HFImportError", "ImportResult", "derive_chat_format", "import_hf_checkpoint",
    "HFCheckpointError", "HFConfigError", "from_hf_config", "load_hf_checkpoint",
    "save_hf_checkpoint", "to_hf_config",
]
