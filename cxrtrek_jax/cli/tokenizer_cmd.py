"""`cxrtrek tokenizer train`: train the byte-level BPE tokenizer on CXRTrek JSON files, offline."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from cxrtrek_jax.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train the CXRTrek tokenizer")
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    train = sub.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on the questions, answers and system prompts",
        description=(
            "Train a byte-level BPE tokenizer (offline, deterministic) on the system prompt, questions "
            "and answers of CXRTrek JSON files and save it in the Hugging Face format with the chat "
            "template (tokenizer.json, tokenizer_config.json, special_tokens_map.json, "
            "cxrtrek_chat_format.json)."
        ),
    )
    train.add_argument("--data", nargs="+", required=True, metavar="CXRTREK_JSON", help="CXRTrek JSON file(s)")
    train.add_argument("--vocab-size", type=int, required=True, help="most ids in the vocabulary, all included")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--min-frequency", type=int, default=2, help="least count of a pair to merge (default 2)")
    train.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --out")
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from data_pipeline.files.cxrtrek_json import CXRTrekFormatError, iter_studies
    from data_pipeline.text.tokenizer import TOKENIZER_FILE, train_tokenizer, training_texts

    out = Path(args.out)
    if (out / TOKENIZER_FILE).exists() and not args.overwrite:
        raise CLIError(f"{out} already holds a tokenizer; pass --overwrite to replace it")
    for path in args.data:
        if not Path(path).is_file():
            raise CLIError(f"data file {path} does not exist")
    counter = {"studies": 0}

    def studies():
        for path in args.data:
            for study in iter_studies(path):
                counter["studies"] += 1
                yield study

    try:
        tokenizer = train_tokenizer(
            training_texts(studies()), args.vocab_size, min_frequency=args.min_frequency
        )
    except (CXRTrekFormatError, ValueError, OSError) as err:
        raise CLIError(str(err)) from None
    if counter["studies"] == 0:
        raise CLIError(f"no studies in {', '.join(args.data)}")
    tokenizer.save(out)
    fmt = tokenizer.format
    ids = ", ".join(
        f"{name}={tokenizer.backend.token_to_id(text)}"
        for name, text in itertools.chain(
            fmt.single_token_fields().items(),
            ((f"{role}_prefix", fmt.prefix(role)) for role in ("system", "user", "assistant")),
        )
    )
    print(f"trained on {counter['studies']} studies from {len(args.data)} file(s)")
    print(f"vocabulary: {tokenizer.vocab_size} ids (requested at most {args.vocab_size}); {ids}")
    print(f"saved to {out}")
    return 0
