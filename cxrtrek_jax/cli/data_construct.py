"""`cxrtrek data construct --source NAME ... --out DIR`: CXRTrek staged QA from your own reports.

Reads a report source, links each study to its patient's prior and next study, reads every report
(sections, findings with presence/absence/uncertainty, location, severity, change, relations,
recommendations, technique) and writes the eight stages of QA in the released CXRTrek JSON format,
in shards (DIR/cxrtrek-00000.json, ...) with DIR/construct_summary.json. The sources:

  --source mimic-cxr     --root MIMIC_CXR_JPG_DIR [--reports-root MIMIC_CXR_REPORTS_DIR]
  --source chexpert-plus --csv df_chexpert_plus_240401.csv --image-root DIR
  --source openi         --reports ecgen-radiology/ --image-root DIR
  --source plain         --input studies.jsonl --image-root DIR

Then: `cxrtrek data validate DIR/cxrtrek-00000.json --image-root ROOT`, `cxrtrek data build-tfds
--json DIR/cxrtrek-*.json --image-root ROOT --out TFDS_DIR`, and train, eval, report as usual
(ROOT: the source's image root; for MIMIC-CXR the --root folder).
"""

from __future__ import annotations

import argparse

from cxrtrek_jax.cli import CLIError

# The reader inputs, named as their flags are (the reader table says which a source needs).
_INPUTS = ("root", "reports_root", "csv", "reports", "input", "image_root")


def register(subparsers: argparse._SubParsersAction) -> None:
    from data_pipeline.construct.source_readers import SOURCE_READERS

    parser = subparsers.add_parser(
        "construct",
        help="build CXRTrek staged QA data from your own reports and radiographs",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", required=True, choices=sorted(SOURCE_READERS), help="the source's layout")
    parser.add_argument("--root", metavar="DIR", help="mimic-cxr: the MIMIC-CXR-JPG folder (tables + files/)")
    parser.add_argument("--reports-root", metavar="DIR", help="mimic-cxr: the reports' folder (default: --root)")
    parser.add_argument("--csv", metavar="FILE", help="chexpert-plus: the report table (df_chexpert_plus_*.csv)")
    parser.add_argument("--reports", metavar="DIR", help="openi: the folder of report XMLs")
    parser.add_argument("--input", metavar="FILE", help="plain: the JSON Lines export, one study a line")
    parser.add_argument("--image-root", metavar="DIR", help="the folder the source's image paths live under")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must hold no shards yet)")
    parser.add_argument("--boxes", metavar="FILE",
                        help="VinDr-CXR-style box CSV (image_id, class_name, x_min, y_min, x_max, y_max) for "
                             "stage-3 detection questions")
    parser.add_argument("--processes", type=int, default=1, metavar="N", help="worker processes (default 1)")
    parser.add_argument("--shard-size", type=int, default=10_000, metavar="N", help="studies per JSON shard")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="drop unreadable source rows (listed in the summary) instead of stopping")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="wording seed (default 0)")
    parser.add_argument("--llm", metavar="HF_DIR",
                        help="a local Hugging Face causal LM that rewrites wording (checked against the "
                             "report's facts; the rule text is kept where a rewrite fails)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_pipeline.construct.construct_run import ConstructConfig, construct
    from data_pipeline.construct.source_study import SourceError
    from data_pipeline.construct.study_assembly import ConstructError

    inputs = {name: getattr(args, name) for name in _INPUTS if getattr(args, name) is not None}
    try:
        config = ConstructConfig(source=args.source, inputs=inputs, out_dir=args.out, boxes=args.boxes,
                                 processes=args.processes, shard_size=args.shard_size,
                                 skip_invalid=args.skip_invalid, seed=args.seed, llm=args.llm)
    except ValueError as e:
        raise CLIError(str(e)) from None
    try:
        summary = construct(config, progress=not args.no_progress)
    except (SourceError, ConstructError, ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    print(summary.format())
    print(f"wrote {args.out}: " + ", ".join(summary.shards))
    return 0
