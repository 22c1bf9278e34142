"""`cxrtrek import-hf` and `cxrtrek export-hf`: Hugging Face directories in and out, of either family
(LLaVA: `LlavaForConditionalGeneration`; Gemma 3 / MedGemma: `Gemma3ForConditionalGeneration`)."""

from __future__ import annotations

import argparse

from cxrtrek_jax.cli import CLIError

_FORMAT_FIELDS = (
    ("bos", "--bos-token", "beginning-of-sequence token"),
    ("eos", "--eos-token", "end-of-sequence token"),
    ("pad", "--pad-token", "padding token"),
    ("image", "--image-token", "image placeholder token"),
    ("end_of_turn", "--end-of-turn-token", "token ending every message"),
    ("system_prefix", "--system-prefix", "text opening a system message"),
    ("user_prefix", "--user-prefix", "text opening a user message"),
    ("assistant_prefix", "--assistant-prefix", "text opening an assistant message"),
    ("system_end", "--system-end", "text closing a system message (default: the end-of-turn token)"),
    ("user_end", "--user-end", "text closing a user message (default: the end-of-turn token)"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_import(subparsers)
    _register_export(subparsers)


def _register_import(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-hf",
        help="import a local Hugging Face LLaVA or Gemma 3 / MedGemma directory as a checkpoint",
        description=(
            "Read a local Hugging Face directory of a LLaVA (LlavaForConditionalGeneration: SigLIP or CLIP + "
            "Llama, e.g. llava-hf/llava-1.5-7b-hf) or Gemma 3 / MedGemma (Gemma3ForConditionalGeneration) model, "
            "chosen by its "
            "config.json model_type ('llava' or 'gemma3'), with config.json, model.safetensors or sharded "
            "safetensors with an index, and tokenizer files, into a params-only checkpoint that training "
            "and decoding load, with the tokenizer copied into CKPT_DIR/tokenizer. Pickle checkpoints "
            "(.bin) are refused. The checkpoint keeps its own chat template, found where transformers "
            "looks (chat_template.jinja, chat_template.json, processor_config.json, tokenizer_config.json): "
            "training, decoding and export render conversations with it as its processor does; and its own "
            "image processor (preprocessor_config.json: CLIP's crop, Gemma 3's square resize), settings it "
            "does not reproduce refused by key. Our own exports carry cxrtrek_chat_format.json; a directory "
            "without a template falls back to its special tokens; the token flags override, and the "
            "prefix/turn-end flags replace the template by a fixed format."
        ),
    )
    parser.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model directory")
    parser.add_argument("--out", required=True, metavar="CKPT_DIR", help="new checkpoint directory")
    parser.add_argument("--max-images", type=int, default=4,
                        help="image slots per sample in the model config (default 4)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of the model config (parameters stay float32; default float32)")
    for field, flag, what in _FORMAT_FIELDS:
        parser.add_argument(flag, dest=f"fmt_{field}", metavar="TEXT", help=f"the {what}")
    parser.set_defaults(func=_import)


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-hf",
        help="export a checkpoint as a Hugging Face LLaVA or Gemma 3 / MedGemma directory",
        description=(
            "Write a checkpoint as a directory that transformers loads offline: a LLaVA model "
            "(text.family llama) as LlavaForConditionalGeneration, a Gemma 3 / MedGemma model (text.family "
            "gemma3) as Gemma3ForConditionalGeneration, with AutoProcessor and AutoTokenizer: "
            "config.json, generation_config.json, safetensors (sharded with "
            "an index above --max-shard-size), tokenizer files with the chat template, and a processor "
            "whose image preprocessing reproduces the one trained with: ours (resize with pad), or for a "
            "checkpoint imported from Hugging Face its own template and image processor files, as imported."
        ),
    )
    parser.add_argument("ckpt_dir", metavar="CKPT_DIR", help="checkpoint directory")
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="new output directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    lora = parser.add_mutually_exclusive_group()
    lora.add_argument("--merge-lora", dest="lora", action="store_const", const="merge",
                      help="fold LoRA adapters into the base weights")
    lora.add_argument("--lora-adapter", dest="lora", action="store_const", const="adapter",
                      help="write the base weights plus a PEFT-style adapter directory (lora_adapter/)")
    parser.set_defaults(lora="none")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of the written weights (default float32)")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="largest safetensors file before sharding, e.g. 2GB or 500MiB (default 5GB)")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the checkpoint's)")
    parser.set_defaults(func=_export)


def _import(args: argparse.Namespace) -> int:
    from cxrtrek_jax.hf import errors as hf_errors
    from cxrtrek_jax.hf import importer as hf_import

    if args.max_images < 1:
        raise CLIError(f"--max-images must be >= 1, got {args.max_images}")
    overrides = {field: getattr(args, f"fmt_{field}") for field, _, _ in _FORMAT_FIELDS}
    try:
        result = hf_import.import_hf_checkpoint(args.hf_dir, args.out, max_images=args.max_images,
                                                dtype=args.dtype, chat_format=overrides)
    except (hf_import.HFImportError, hf_errors.HFConfigError, hf_errors.HFCheckpointError) as err:
        raise CLIError(str(err)) from None
    cfg = result.config
    print(f"imported {args.hf_dir}: vision {cfg.vision.depth} layers x {cfg.vision.width}, text "
          f"{cfg.text.num_layers} layers x {cfg.text.embed_dim}, vocab {cfg.vocab_size}")
    print(f"chat format (from {result.chat_format_source}): {hf_import.format_summary(result.chat_format)}")
    print(f"checkpoint written to {result.directory} (tokenizer in {result.tokenizer_dir})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from cxrtrek_jax.decoding.model_loading import CheckpointConfigError, CheckpointMismatchError
    from cxrtrek_jax.hf import errors as hf_errors
    from cxrtrek_jax.hf import exporter as hf_export

    try:
        result = hf_export.export_checkpoint(
            args.ckpt_dir, args.out, lora=args.lora, dtype=args.dtype,
            max_shard_bytes=hf_export.parse_size(args.max_shard_size), step=args.step,
            tokenizer_dir=args.tokenizer)
    except (hf_errors.ExportError, hf_errors.HFConfigError, hf_errors.HFCheckpointError,
            CheckpointConfigError, CheckpointMismatchError, FileNotFoundError) as err:
        raise CLIError(str(err)) from None
    print(f"exported {args.ckpt_dir} to {result.directory}: {', '.join(result.files)}")
    if result.lora_modules:
        how = "merged into" if args.lora == "merge" else "written as an adapter for"
        print(f"LoRA {how} {len(result.lora_modules)} modules")
    return 0
