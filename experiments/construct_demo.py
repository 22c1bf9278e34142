"""`make construct-demo`: CXRTrek data built from free-text reports, end to end, in a few minutes.

    python -m experiments.construct_demo --out construct_demo_out [--studies 200] [--steps 60]

1. the phantom exported as a hospital would (`data_pipeline.phantom.plain_source`): dated studies
   per patient, each with its own free-text report and radiographs, the truth kept aside;
2. `cxrtrek data construct --source plain`: reports read, eight stages of QA written as CXRTrek
   JSON shards, with its summary;
3. what construction made, checked against the truth it never saw: stage-2 presence answers
   (F1 per finding), the view from metadata, stage 5 exactly for studies with a prior and stage 6
   for those with a later study;
4. `data validate`, `data build-tfds`, a short `train` of the tiny model and `eval` of 20 held-out
   studies: the constructed data goes through the product as any CXRTrek data does (a few training
   steps teach the model little: this step shows the path, not a result).
The exit status is 1 when the constructed data misses the truth (an F1 under 0.95, a wrong view or
a stage 5/6 where none belongs) or a command fails.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import time
from pathlib import Path

from cxrtrek_jax.cli import main as cxrtrek

MIN_F1 = 0.95
# The phantom's finding kinds -> the `target` of the constructed stage-2 items that name them.
TARGETS = {"cardiomegaly": ("abnormality_[cardiomegaly]",), "pleural_effusion": ("abnormality_[pleural effusion]",),
           "pneumothorax": ("abnormality_[pneumothorax]",), "consolidation": ("abnormality_[consolidation]",),
           "nodule": ("abnormality_[nodule]", "abnormality_[lung nodule]", "abnormality_[pulmonary nodule]")}


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.time()


def _run(argv: list[str]) -> None:
    if cxrtrek(argv) != 0:
        raise SystemExit(f"cxrtrek {' '.join(argv[:2])} failed")


def _said_present(study) -> set[str]:
    """The phantom kinds whose stage-2 yes/no answers say "Yes" (any device counts as devices)."""
    kinds = set()
    for item in study.items:
        target = str(item.extras.get("target", ""))
        if item.stage == 2 and item.qtype == "yes_no" and item.answer.startswith("Yes"):
            kinds |= {k for k, targets in TARGETS.items() if target in targets}
            kinds |= {"support_devices"} if target.startswith("foreign_body_[") else set()
    return kinds


def check_against_truth(studies: dict, truth: dict) -> tuple[dict[str, float], list[str]]:
    """(F1 per phantom finding, the problems found: views and stage 5/6 presence)."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    problems = []
    for study_id, row in truth.items():
        study, said = studies[study_id], _said_present(studies[study_id])
        for kind in list(TARGETS) + ["support_devices"]:
            counts[kind][("t" if (kind in said) == (kind in row["kinds"]) else "f")
                         + ("p" if kind in said else "n")] += 1
        views = set(row["views"])
        caption = " ".join(i.answer for i in study.items if i.task_type == "View_Information")
        if not all(_view_named(view, caption) for view in views):
            problems.append(f"{study_id}: views {sorted(views)} not in {caption!r}")
        for stage, linked in ((5, row["prior_study_id"]), (6, row["next_study_id"])):
            if bool(study.items_of_stage(stage)) != bool(linked):
                problems.append(f"{study_id}: stage {stage} {'missing' if linked else 'without a study to compare'}")
    f1 = {k: 2 * c["tp"] / max(1, 2 * c["tp"] + c["fp"] + c["fn"]) for k, c in counts.items()}
    return f1, problems


def _view_named(view: str, caption: str) -> bool:
    return {"PA": "Posteroanterior", "AP": "Anteroposterior", "LATERAL": "lateral"}[view].lower() in caption.lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="construct_demo_out", help="output folder (replaced)")
    parser.add_argument("--studies", type=int, default=200, help="phantom studies (each 1-3 dated reports)")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the tiny model")
    args = parser.parse_args(argv)
    from data_pipeline.construct.construct_run import shard_paths
    from data_pipeline.files.cxrtrek_json import read_studies
    from data_pipeline.phantom import PLAIN_TRUTH_FILENAME, PhantomConfig, write_plain_source

    out, began = Path(args.out), time.time()
    shutil.rmtree(out, ignore_errors=True)
    t = _step(f"1. the phantom as a hospital export: {args.studies} phantom studies -> {out}/export")
    studies_jsonl = write_plain_source(out / "export", args.studies, seed=0, config=PhantomConfig(size=64))
    print(f"    {sum(1 for _ in studies_jsonl.open())} dated reports with their radiographs ({time.time() - t:.0f} s)")
    print("    e.g.: " + json.loads(studies_jsonl.open().readline())["report"][:300].replace("\n", " ") + " ...")

    _step(f"2. cxrtrek data construct --source plain -> {out}/constructed")
    image_root = str(out / "export")
    _run(["data", "construct", "--source", "plain", "--input", str(studies_jsonl), "--image-root", image_root,
          "--out", str(out / "constructed"), "--no-progress"])
    shards = [str(p) for p in shard_paths(out / "constructed")]

    _step("3. the constructed QA against the phantom's truth (never read by construction)")
    truth = {r["study_id"]: r for r in map(json.loads, (out / "export" / PLAIN_TRUTH_FILENAME).open())}
    studies = {s.study_id: s for shard in shards for s in read_studies(shard)}
    f1, problems = check_against_truth(studies, truth)
    print("    stage-2 presence F1: " + "  ".join(f"{k} {v:.3f}" for k, v in f1.items()))
    print(f"    views and stage 5/6 presence: {len(truth) - len({p.split(':')[0] for p in problems})} of "
          f"{len(truth)} studies right" + "".join(f"\n      {p}" for p in problems[:10]))

    t = _step("4. validate, build-tfds, train the tiny model, evaluate on held-out patients")
    for shard in shards:
        _run(["data", "validate", shard, "--image-root", image_root])
    tfds = out / "tfds"
    _run(["data", "build-tfds", "--json", *shards, "--image-root", image_root, "--out", str(tfds),
          "--val-fraction", "0.1", "--test-fraction", "0.1"])
    _run(["train", "--experiment", "baseline", "--preset", "tiny", "--workdir", str(out / "run"), "--no-progress",
          "--set", "data.kind=tfds", "--set", f"data.path={tfds}", "--set", f"train.num_steps={args.steps}",
          "--set", f"optim.total_steps={args.steps}", "--set", f"checkpoint.save_every={args.steps}",
          "--set", "train.eval_batches=2", "--set", "model.max_images=4"])
    _run(["eval", "--checkpoint", str(out / "run" / "checkpoints"), "--data", str(tfds), "--split", "test",
          "--context", "own", "--out", str(out / "eval"), "--max-studies", "20", "--max-new-tokens", "16",
          "--no-meteor", "--no-progress"])
    print(f"    ({time.time() - t:.0f} s)")

    failed = [k for k, v in f1.items() if v < MIN_F1] + problems
    print(f"\n=== where: {out}/export (the reports), {out}/constructed (CXRTrek JSON + construct_summary.json), "
          f"{out}/eval (metrics.md, report.html)\ncheck against the truth: "
          f"{'NOT MET: ' + '; '.join(failed[:5]) if failed else 'met'}; total {time.time() - began:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
