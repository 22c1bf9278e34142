"""The chain-phase recipe chosen on the validation split, not on the test split.

    python -m experiments.recipe_choice --demo-out DEMO_OUT [--out runs/recipe_choice] [--variants a,b]

The `grounded` recipe's chain phase was first chosen by the demo's stage-2 accuracy on its test
studies (experiments/RESULTS.md marks those figures). This script makes the choice again on the
phantom set's *validation* split, before the test split is looked at: every variant trains only the
chain phase, from the same finished alignment phase (DEMO_OUT/run/alignment, which `make demo`
leaves; the variants differ only after it), and is evaluated on the first `--eval-studies`
validation studies in the `own` and `swapped` contexts, against the majority baseline fitted on the
training split. The demo's learning checks (`experiments.demo.learning_checks`) are computed there.

The rule, fixed before the runs:
1. a variant qualifies when it meets all three learning checks on validation (margin over the
   baseline, and better with its own images than with another study's) and its BLEU-1 over all open
   answers is at least the blind baseline's (its text answers have not collapsed);
2. among qualifying variants, the highest stage-2 accuracy (own context) wins; variants within
   `TIE_BAND` of it count as tied, and among tied ones the one that drops least of the reference
   text wins (`VARIANTS` is in that order: full answers, then the cut only where stage 3 carries
   what it removes, then the unconditional cut).

The alignment phase's parts are checked the same way, one removed at a time (`ALIGNMENT_VARIANTS`:
each trains its own alignment phase from scratch, then the chosen chain phase): a part stays unless the
recipe without it also meets the three checks with a stage-2 accuracy at least the chosen recipe's (then
the simpler recipe would do as well, and the part is not justified by these data). `--variants` names
any of both kinds; `choose` applies to the chain-phase ones, `keeps_part` to the alignment ones.

Writes OUT/NAME/ (the run and its validation evaluation) and OUT/recipe_choice.{json,md}: each
variant's checks, stage-2 and report figures, and the choice with its reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

__all__ = ["VARIANTS", "ALIGNMENT_VARIANTS", "TIE_BAND", "Variant", "choose", "keeps_part", "main"]

# Stage-2 accuracy (own context, validation) within this of the best counts as a tie: one standard
# error of an accuracy near 0.75 over the ~280 stage-2 yes/no turns of 80 studies is about 0.026.
TIE_BAND = 0.026


@dataclasses.dataclass(frozen=True)
class Variant:
    """A chain-phase variant: dotted-key overrides on the demo experiment."""

    name: str
    description: str
    overrides: tuple[tuple[str, object], ...]
    alignment: bool = False  # the overrides change the alignment phase: it is trained afresh


_SEQ = "data.pipeline.sequence"
# In order of how much of the reference text they keep (the tie-break of the rule).
VARIANTS = (
    Variant("sqrt_full", "square-root weighting, full answers",
            ((f"{_SEQ}.loss_weighting", "sqrt"), (f"{_SEQ}.closed_answers", "full"),
             (f"{_SEQ}.decisive_stages", None))),
    Variant("token_full", "a loss per token, full answers (the recipe before the square root)",
            ((f"{_SEQ}.loss_weighting", "token"), (f"{_SEQ}.closed_answers", "full"),
             (f"{_SEQ}.decisive_stages", None))),
    Variant("sqrt_cut_if_carried", "square-root weighting, stage 2 cut only where stage 3 carries what it removes",
            ((f"{_SEQ}.loss_weighting", "sqrt"), (f"{_SEQ}.closed_answers", "decisive_if_carried"),
             (f"{_SEQ}.decisive_stages", (2,)))),
    Variant("sqrt_cut", "square-root weighting, stage 2 cut to Yes./No. (shipped until this choice)",
            ((f"{_SEQ}.loss_weighting", "sqrt"), (f"{_SEQ}.closed_answers", "decisive"),
             (f"{_SEQ}.decisive_stages", (2,)))),
)
# The alignment phase's parts, each removed from the chosen recipe (chains: a loss per token, full answers).
ALIGNMENT_VARIANTS = (
    Variant("no_image_labels", "the chosen recipe without the alignment phase's image-label loss",
            (("alignment.image_label_weight", 0.0),), alignment=True),
    Variant("alignment_full_answers", "the chosen recipe with the alignment phase's stage-2 answers in full (no cut)",
            (("alignment.closed_answers", "full"), ("alignment.decisive_stages", None)), alignment=True),
)
_BY_NAME = {v.name: v for v in VARIANTS + ALIGNMENT_VARIANTS}


def _config(variant: Variant, demo_out: Path, seed: int):
    from cxrtrek_jax.train.registry import DemoSettings, demo

    cfg = demo("tiny", DemoSettings(data_path=str(demo_out / "phantom"), seed=seed))
    return cfg.override(dict(variant.overrides))


def _train(variant: Variant, demo_out: Path, run: Path, seed: int) -> None:
    """The variant's chain phase in `run`, from a copy of the demo's finished alignment phase."""
    from cxrtrek_jax.train.run import train_experiment

    cfg = _config(variant, demo_out, seed)
    if (run / "checkpoints").is_dir() and any(p.name.isdigit() for p in (run / "checkpoints").iterdir()):
        print(f"    {run} already holds a trained chain phase: kept", flush=True)
        return
    run.mkdir(parents=True, exist_ok=True)
    if not variant.alignment and not (run / "alignment").exists():
        shutil.copytree(demo_out / "run" / "alignment", run / "alignment")
    train_experiment(cfg, run)


def _evaluate(run: Path, demo_out: Path, studies: int) -> dict:
    from cxrtrek_jax.evaluation import EvalData, ScoringConfig, evaluate_checkpoint

    data_json = demo_out / "phantom" / "cxrtrek.json"
    result = evaluate_checkpoint(
        run / "checkpoints", EvalData(data_json, split="validation", max_studies=studies), run / "eval_validation",
        contexts=("own", "swapped"), max_new_tokens=64, baseline=EvalData(data_json, split="train"),
        scoring=ScoringConfig(bootstrap_resamples=200, meteor=False), reuse_current=True)
    return result.metrics


def _summary(variant: Variant, metrics: dict, scored: list) -> dict:
    from experiments.demo import learning_checks

    checks = learning_checks(metrics, scored)
    own, baseline = metrics["contexts"]["own"], metrics["baselines"]["majority"]

    def value(section, kind, group, metric):
        entry = section[kind].get(group) or {"metrics": {}}
        return (entry["metrics"].get(metric) or {}).get("value")

    open_bleu = own["overall"]["metrics"].get("bleu_1", {}).get("value")  # over every open answer
    baseline_bleu = baseline["overall"]["metrics"].get("bleu_1", {}).get("value")
    return {
        "variant": variant.name, "description": variant.description,
        "checks": checks, "checks_met": sum(c["met"] for c in checks),
        "stage2_own": value(own, "by_stage_qtype", "2/yes_no", "accuracy"),
        "stage2_baseline": value(baseline, "by_stage_qtype", "2/yes_no", "accuracy"),
        "stage8_ce_micro_f1": value(own, "by_stage", "8", "ce_micro_f1"),
        "stage8_bleu_1": value(own, "by_stage", "8", "bleu_1"),
        "open_bleu_1": open_bleu, "baseline_open_bleu_1": baseline_bleu,
    }


def choose(rows: list[dict]) -> tuple[str | None, str]:
    """The variant the rule (module docstring) picks from `rows` (in `VARIANTS` order), and why."""
    qualifying = [r for r in rows if r["checks_met"] == len(r["checks"])
                  and r["open_bleu_1"] is not None and r["baseline_open_bleu_1"] is not None
                  and r["open_bleu_1"] >= r["baseline_open_bleu_1"]]
    if not qualifying:
        return None, "no variant met all three checks with its text answers at least the baseline's BLEU-1"
    best = max(r["stage2_own"] for r in qualifying)
    tied = [r for r in qualifying if r["stage2_own"] >= best - TIE_BAND]
    order = [v.name for v in VARIANTS]
    chosen = min(tied, key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order))
    return chosen["variant"], (
        f"{len(qualifying)} of {len(rows)} variants qualify; best stage-2 accuracy {best:.3f}; within "
        f"{TIE_BAND} of it: {', '.join(r['variant'] for r in tied)}; of those, {chosen['variant']} keeps the "
        "most of the reference text")


def keeps_part(removed: dict, chosen: dict) -> tuple[bool, str]:
    """Whether an alignment part stays, from the row of the recipe without it and the chosen recipe's
    row (module docstring), and why."""
    if removed["checks_met"] < len(removed["checks"]):
        return True, f"without it {removed['checks_met']} of {len(removed['checks'])} checks are met"
    if removed["stage2_own"] < chosen["stage2_own"]:
        return True, f"without it stage 2 falls to {removed['stage2_own']:.3f} from {chosen['stage2_own']:.3f}"
    return False, (f"without it all checks are met and stage 2 is {removed['stage2_own']:.3f} "
                   f"(with it {chosen['stage2_own']:.3f}): not justified by these data")


def _markdown(rows: list[dict], chosen: str | None, reason: str, studies: int) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [f"# Chain-phase recipe chosen on the validation split ({studies} studies)", "",
             "| variant | view own / swapped | stage 2 own / swapped / baseline | stage 8 CE F1 own / swapped | "
             "stage-8 BLEU-1 | open BLEU-1 (baseline) | checks met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        view, yes_no, report = r["checks"]
        lines.append(
            f"| {r['variant']} ({r['description']}) | {fmt(view['model'])} / {fmt(view['swapped_images'])} | "
            f"{fmt(yes_no['model'])} / {fmt(yes_no['swapped_images'])} / {fmt(yes_no['baseline'])} | "
            f"{fmt(report['model'])} / {fmt(report['swapped_images'])} | {fmt(r['stage8_bleu_1'])} | "
            f"{fmt(r['open_bleu_1'])} ({fmt(r['baseline_open_bleu_1'])}) | {r['checks_met']} of 3 |")
    lines += ["", f"Chosen: **{chosen}**. {reason}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.recipe_choice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-out", required=True, help="a finished `make demo` output (its run/alignment)")
    parser.add_argument("--out", default="runs/recipe_choice")
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
    parser.add_argument("--eval-studies", type=int, default=80, help="validation studies evaluated")
    parser.add_argument("--seed", type=int, default=0, help="the chain phase's seed (the demo's own)")
    args = parser.parse_args(argv)
    from experiments.demo import _init_runtime

    _init_runtime()
    demo_out, out = Path(args.demo_out).resolve(), Path(args.out).resolve()
    unknown = [n for n in args.variants.split(",") if n not in _BY_NAME]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}", file=sys.stderr)
        return 2
    if not (demo_out / "run" / "alignment" / "checkpoints").is_dir():
        print(f"error: {demo_out}/run/alignment/checkpoints not found: run `make demo` (or "
              f"`python -m experiments.demo --out {demo_out}`) first", file=sys.stderr)
        return 2
    from cxrtrek_jax.evaluation.scores.predictions import read_predictions

    rows = []
    for name in args.variants.split(","):
        variant, run = _BY_NAME[name], out / name
        began = time.time()
        print(f"\n=== {name}: {variant.description} -> {run}", flush=True)
        _train(variant, demo_out, run, args.seed)
        metrics = _evaluate(run, demo_out, args.eval_studies)
        scored = list(read_predictions(run / "eval_validation" / "predictions.scored.jsonl"))
        rows.append(_summary(variant, metrics, scored))
        print(f"    stage 2 {rows[-1]['stage2_own']:.3f}, checks met {rows[-1]['checks_met']} of 3 "
              f"({time.time() - began:.0f} s)", flush=True)
    chain_rows = [r for r in rows if not _BY_NAME[r["variant"]].alignment]
    chosen, reason = choose(chain_rows) if chain_rows else (None, "no chain-phase variant run")
    reference = next((r for r in rows if r["variant"] == "token_full"), None)
    for row in rows:
        if _BY_NAME[row["variant"]].alignment and reference is not None:
            keep, why = keeps_part(row, reference)
            row["part_kept"], row["part_reason"] = keep, why
            reason += f"; {row['variant']}: part {'kept' if keep else 'not justified'} ({why})"
    (out / "recipe_choice.json").write_text(json.dumps({"rows": rows, "chosen": chosen, "reason": reason,
                                                        "tie_band": TIE_BAND}, indent=2))
    (out / "recipe_choice.md").write_text(_markdown(rows, chosen, reason, args.eval_studies))
    print("\n" + _markdown(rows, chosen, reason, args.eval_studies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
