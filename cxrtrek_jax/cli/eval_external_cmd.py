"""`cxrtrek eval-external`: a checkpoint on a public chest X-ray set, scored as its community scores it.

    cxrtrek eval-external --set chexpert --root /data/CheXpert-v1.0-small --checkpoint runs/x/checkpoints

Sets (`--set`) and what `--root` holds (docs/external_evaluation.md for each layout and split):
  iu-xray    R2Gen's annotation.json + images/, or indiana_reports.csv + indiana_projections.csv, or
             the Open-i XMLs (ecgen-radiology/): report generation, BLEU / ROUGE-L / METEOR / CIDEr /
             clinical efficacy
  mimic-cxr  MIMIC-CXR-JPG (metadata, split CSV, files/) and its reports (--reports-root): the same
  chexpert   valid.csv (--file test.csv) + images: per-observation AUROC and F1
  vindr-cxr  annotations/annotations_test.csv + test/*.dicom: mAP at IoU 0.4 and 0.5
  vqa-rad    testset.json + images/: closed accuracy, open recall and exact match
  slake      test.json + imgs/: the same, on its English chest X-ray questions

Prints the counts of rows used and skipped, then one table with 95 % bootstrap intervals and the
blind baseline (CheXbert, RadGraph and GREEN: "not available offline"; BERTScore with
--bertscore-model DIR, an encoder on disk); writes predictions.jsonl and external.json into --out (default
<checkpoint>/../external/<set>).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrtrek_jax.cli import CLIError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from data_pipeline.external.chexpert import UNCERTAIN_POLICIES
    from data_pipeline.external.external_sets import SET_NAMES

    parser = subparsers.add_parser("eval-external", help="evaluate a checkpoint on a public set (IU X-Ray, "
                                   "MIMIC-CXR, CheXpert, VinDr-CXR, VQA-RAD, SLAKE)",
                                   description=__doc__.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", required=True, choices=SET_NAMES, help="the public set")
    parser.add_argument("--root", required=True, metavar="DIR", help="the set's folder as downloaded")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint dir")
    parser.add_argument("--out", metavar="DIR", help="output dir (default <checkpoint>/../external/<set>)")
    parser.add_argument("--file", help="chexpert: label table (default valid.csv); vqa-rad / slake: question file "
                                       "(default testset.json / test.json)")
    parser.add_argument("--train-file", help="vqa-rad / slake: training file the majority baseline is fitted on "
                                             "(trainset.json / train.json; default: the scored items)")
    parser.add_argument("--uncertain", default="ignore", choices=UNCERTAIN_POLICIES,
                        help="chexpert: uncertain (-1) labels (default ignore)")
    parser.add_argument("--reports-root", metavar="DIR", help="mimic-cxr: the reports' folder (default --root)")
    parser.add_argument("--max-groups", type=int, help="only the first N studies / images")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer budget in tokens (default 128)")
    parser.add_argument("--batch-size", type=int, default=4, help="studies / images asked together (default 4)")
    parser.add_argument("--bootstrap-resamples", type=int, default=1000, help="bootstrap replicates (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--no-meteor", action="store_true", help="report sets: skip METEOR (needs java)")
    parser.add_argument("--bertscore-model", metavar="DIR",
                        help="report sets: a Hugging Face encoder directory on disk to score BERTScore F1 with "
                             "(e.g. roberta-large; nothing is downloaded)")
    parser.add_argument("--bertscore-layer", type=int, help="its hidden layer (default the last; roberta-large: 17)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrtrek_jax.evaluation.metrics.nlg_metrics import MeteorUnavailable
    from cxrtrek_jax.evaluation.runs.external_eval import evaluate_external

    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "external" / args.set
    try:
        result = evaluate_external(args.set, args.root, args.checkpoint, out, file=args.file,
                                   uncertain=args.uncertain, reports_root=args.reports_root,
                                   train_file=args.train_file, max_groups=args.max_groups,
                                   max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                   resamples=args.bootstrap_resamples, seed=args.seed, meteor=not args.no_meteor,
                                   bertscore_model=args.bertscore_model, bertscore_layer=args.bertscore_layer,
                                   progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:  # SourceError is a ValueError naming file, row and field
        raise CLIError(str(err)) from None
    except MeteorUnavailable as err:
        raise CLIError(f"{err}; rerun with --no-meteor to score without METEOR") from None
    print(f"wrote {', '.join(str(p) for p in result.written)}")
    return 0
