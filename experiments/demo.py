"""`make demo`: the main job end to end on a generated phantom CXRTrek set.

    python -m experiments.demo --out demo_out [--preset tiny] [--experiment grounded] [--seed N] [--steps N]

Steps (each reruns only when what it is made from changed: the phantom recipe, the experiment
config, the checkpoint; an interrupted training resumes):
1. phantom studies (train/validation/test) and their validation report;
2. TFDS build + a byte-level BPE tokenizer + training (`cxrtrek train`'s trainer; resumes) of the
   `grounded` recipe on the `tiny` model: an alignment phase of one row per study (its stage-1/2
   turns), then the staged chains (`--experiment`, `--preset`, `--alignment-steps` choose others);
3. evaluation on the held-out test split in the `own`, `teacher`, `none` and `swapped` (own,
   with another study's images) context modes
   (predictions.jsonl, metrics.json/.md, stages.png, report.html);
   with a blind majority-answer baseline fitted on the training split beside the model;
4. export to a Hugging Face LLaVA directory and a check that PyTorch answers the first question
   of a few test studies with the same tokens as the JAX chain;
5. the learning checks (model vs baseline, written to learning_check.json), a summary
   table and where everything is. The exit status is 1 when PyTorch and JAX answers differ;
   unmet learning checks are printed as NOT MET (they measure the model, not the code).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from cxrtrek_jax.contexts import CONTEXT_MODES
from cxrtrek_jax.evaluation.scores.answer_baselines import BASELINE_NAME

__all__ = ["main", "LEARNING_CHECKS", "learning_checks"]

# (name, metrics section, group, metric, required margin over the baseline): the demo must show
# learning, judged in the `own` context (the model's own answers as the chain's context, as in
# `cxrtrek infer`), against the majority-answer baseline scored on the same turns.
LEARNING_CHECKS = (
    ("stage-1 view questions, accuracy", "by_task_type", "View_Information", "accuracy", 0.15),
    ("stage-2 finding yes/no questions, accuracy", "by_stage_qtype", "2/yes_no", "accuracy", 0.15),
    ("stage-8 report label F1 (CE micro)", "by_stage", "8", "ce_micro_f1", 0.0),
)
CHECK_CONTEXT = "own"
# The checks' questions are also answered with every study's images swapped for another study's:
# a model that reads its radiographs loses accuracy there.
EVAL_CONTEXTS = CONTEXT_MODES  # own, teacher, none and swapped
# What a demo step's output was made from (run/STAMP_FILE, hf_export.STAMP_FILE beside the
# export): a step reruns only when it changed.
STAMP_FILE = "demo_inputs.json"
# |val_image_gain| below this (nats per unit of loss weight: per answer token, per answer, or per
# sqrt-weighted token, as `loss_weighting` says) reads as "the images are ignored".
IGNORES_IMAGES_BELOW = 0.01


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.time()


def _done(began: float, what: str) -> None:
    print(f"    {what} ({time.time() - began:.0f} s)", flush=True)


# The model room the demo's chains need: their longest bucket in positions, and four image slots
# (current frontal and lateral, prior frontal and lateral). A preset with less is widened to it.
DEMO_IMAGE_SLOTS = 4


def _model_room(cfg, buckets: str) -> dict:
    """Overrides widening `cfg.model` to the demo's longest bucket and DEMO_IMAGE_SLOTS images."""
    longest = max(int(b) for b in buckets.split(","))
    room = {}
    if cfg.model.text.max_positions < longest:
        room["model.text.max_positions"] = longest
    if cfg.model.max_images < DEMO_IMAGE_SLOTS:
        room["model.max_images"] = DEMO_IMAGE_SLOTS
    return room


def _experiment(args: argparse.Namespace, out: Path):
    from experiments import get_experiment

    overrides = {
        "data.path": str(out / "phantom"),
        "data.phantom_studies": args.studies,
        "data.phantom_size": 256,
        "data.phantom_turns": args.turns,
        "data.pipeline.length_buckets": args.buckets,
        "data.pipeline.global_batch_size": args.batch_size,
        "tokenizer.vocab_size": 1024,
        "optim.learning_rate": args.learning_rate,
        "optim.warmup_steps": max(args.steps // 10, 1),
        "optim.total_steps": args.steps + 1,
        "train.num_steps": args.steps,
        "train.seed": args.seed,
        "data.pipeline.seed": args.seed,
        "train.log_every": 5,
        # 10 batches: the image-reliance line from 2 batches (~6 studies of one-pair rows) swung
        # between 0.008 and 0.066 nats for the same recipe (experiments/RESULTS.md).
        "train.eval_batches": 10,
        "checkpoint.save_every": max(args.steps // 2, 1),
    }
    from cxrtrek_jax.cli.train_cmd import parse_overrides

    cfg = get_experiment(args.experiment, args.preset)
    if args.alignment_steps is not None:
        if cfg.alignment is None:
            raise SystemExit(f"error: --alignment-steps {args.alignment_steps}: experiment {args.experiment!r} has "
                             "no alignment phase (the `aligned` and `grounded` experiments do)")
        overrides["alignment.num_steps"] = args.alignment_steps
    overrides.update(_model_room(cfg, args.buckets))
    overrides.update(parse_overrides(args.set))
    return cfg.override(overrides)


def _pytorch_check(export_dir: Path, ckpt: Path, data_json: Path, count: int, new_tokens: int) -> list[dict]:
    """Greedy answers to the first question of `count` test studies: JAX chain vs exported PyTorch."""
    import functools

    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from cxrtrek_jax.decoding import ChainStudy, DecodeSpec, StepwiseDecoder, fixed_plan, run_chain, study_turns
    from cxrtrek_jax.decoding.model_loading import load_checkpoint_model
    from cxrtrek_jax.hf import load_torch_model
    from cxrtrek_jax.evaluation.runs.model_eval import EvalData, iter_eval_studies
    from data_pipeline.text.sequences import system_prompt_of
    from data_pipeline.text.tokenizer import load_tokenizer

    loaded = load_checkpoint_model(ckpt)
    tokenizer = load_tokenizer(loaded.tokenizer_dir)
    cfg = loaded.config
    decoder = StepwiseDecoder(loaded.graphdef, cfg, DecodeSpec.for_model(
        cfg, tokenizer, cache_length=cfg.text.max_positions, max_answer_tokens=new_tokens))
    processor = AutoProcessor.from_pretrained(str(export_dir))
    hf_model = load_torch_model(export_dir)  # the class of its family: LLaVA or Gemma 3
    rows = []
    for study, images in iter_eval_studies(EvalData(data_json, split="test", max_studies=count),
                                           cfg.vision.image_size):
        first = study_turns(study)[0]
        n_images = first.image_input_count
        chain = ChainStudy(study.key, images[:n_images], system_prompt_of(study),
                           functools.partial(fixed_plan, [first]))
        (ours,) = run_chain(decoder, loaded.state, tokenizer, [chain], context="none",
                            max_new_tokens=new_tokens)
        ours_ids = list(ours[0].answer_tokens)
        messages = [{"role": "system", "content": system_prompt_of(study)},
                    {"role": "user", "content": first.question}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        paths = [data_json.parent / p for p in study.images[:n_images]]
        inputs = processor(text=text, images=[Image.open(p) for p in paths], return_tensors="pt")
        with torch.no_grad():
            generated = hf_model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False,
                                          suppress_tokens=[tokenizer.image_id])
        theirs = [t for t in generated[0, inputs["input_ids"].shape[1]:].tolist()
                  if t not in (tokenizer.end_of_turn_id, tokenizer.eos_id)]
        rows.append({"study_id": study.key, "question": first.question, "jax": tokenizer.decode(ours_ids),
                     "pytorch": tokenizer.decode(theirs), "identical": theirs == ours_ids})
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--preset", default=os.environ.get("PRESET", "tiny"))
    parser.add_argument("--experiment", default="grounded", help="the named experiment (recipe) to train")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed: initialisation, data order and augmentation (the phantom set, "
                             "and so the held-out studies, stay the same)")
    parser.add_argument("--studies", type=int, default=3000, help="phantom studies (80/10/10 split)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the staged chains")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--turns", default="10,12", help="min,max QA turns per phantom study")
    parser.add_argument("--buckets", default="512,768,1024", help="padded sequence lengths in tokens")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="the chains' peak learning rate (the experiment's per-tower rates stay)")
    parser.add_argument("--alignment-steps", type=int, default=None,
                        help="steps of the experiment's alignment phase before the chains (default: the "
                             "experiment's own; see experiments/RESULTS.md)")
    parser.add_argument("--eval-studies", type=int, default=80, help="test studies evaluated")
    parser.add_argument("--check-studies", type=int, default=3,
                        help="test studies whose first answer PyTorch must reproduce")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="experiment config override on top of the demo's (e.g. mesh.tensor=2)")
    return parser


def _stamp_matches(path: Path, inputs: dict) -> bool:
    """Whether the stamp file `path` records exactly `inputs` (JSON-normalised)."""
    return path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(inputs, default=str))


def _write_stamp(path: Path, inputs: dict) -> None:
    path.write_text(json.dumps(inputs, indent=2, default=str) + "\n")


def _validate(data_json: Path) -> bool:
    """Print the validation report of the phantom JSON; False when it has errors."""
    from cxrtrek_jax.cli.data_validate import format_report
    from data_pipeline.files.validation import validate_file

    report = validate_file(data_json, image_root=data_json.parent)
    print(format_report(report, str(data_json), images_checked=True))
    return not report.errors


def _train(cfg, run: Path):
    """Train `cfg` into `run`, from scratch when `run` was made from another experiment config,
    resumed when interrupted, skipped when already finished with the same config. Returns
    (final step, what happened)."""
    from cxrtrek_jax.train import CheckpointConfig, Checkpointer
    from cxrtrek_jax.train.run import train_experiment

    stamp, inputs = run / STAMP_FILE, {"experiment": cfg.to_dict()}
    if run.exists() and not _stamp_matches(stamp, inputs):
        print(f"    {run} was trained from another config: training afresh", flush=True)
        shutil.rmtree(run)
    checkpoints = run / "checkpoints"
    if checkpoints.is_dir():
        checkpointer = Checkpointer(CheckpointConfig(directory=str(checkpoints)))
        finished = checkpointer.steps()
        checkpointer.close()
        if finished and max(finished) >= cfg.train.num_steps:
            return max(finished), "already trained with this config"
    run.mkdir(parents=True, exist_ok=True)
    _write_stamp(stamp, inputs)
    result = train_experiment(cfg, run)
    loss = result.last_metrics.get("loss", float("nan"))
    return result.final_step, f"{result.stop_reason}, loss {loss:.3f}"


def _export(ckpt: Path, export: Path) -> str:
    """Export the newest checkpoint to `export` unless it already holds that checkpoint's export."""
    from cxrtrek_jax.evaluation.runs.model_eval import checkpoint_identity
    from cxrtrek_jax.hf import export_checkpoint

    stamp, inputs = export.with_name(f"{export.name}.{STAMP_FILE}"), checkpoint_identity(ckpt)
    if _stamp_matches(stamp, inputs):
        return "already exported from this checkpoint"
    if export.exists():
        shutil.rmtree(export)
    result = export_checkpoint(ckpt, export)
    _write_stamp(stamp, inputs)
    return f"{len(result.files)} files"


def _evaluate(ckpt: Path, data_json: Path, evaluation: Path, studies: int):
    """The held-out evaluation (reused when current) and its case report."""
    from cxrtrek_jax.case_report import write_evaluation_report
    from cxrtrek_jax.evaluation import EvalData, ScoringConfig, evaluate_checkpoint

    data = EvalData(data_json, split="test", max_studies=studies)
    result = evaluate_checkpoint(
        ckpt, data, evaluation, contexts=EVAL_CONTEXTS, max_new_tokens=64,
        baseline=EvalData(data_json, split="train"),
        scoring=ScoringConfig(bootstrap_resamples=200, meteor=False), reuse_current=True)
    if not result.reused or not (evaluation / "report.html").exists():
        write_evaluation_report(evaluation, data, max_studies=8)
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])
    import logging

    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = _experiment(args, out)
    began_all = time.time()

    from cxrtrek_jax.train.run import prepare_data

    t = _step(f"1. phantom CXRTrek set: {args.studies} studies -> {out / 'phantom'}")
    data = prepare_data(cfg)
    data_json = Path(data.json_files[0])
    if not _validate(data_json):
        print(f"error: {data_json} has validation errors (above); stopping", file=sys.stderr)
        return 1
    _done(t, f"TFDS data set in {data.tfds_dir}")

    run = out / "run"
    ckpt = run / "checkpoints"
    phases = (f"{cfg.alignment.num_steps} alignment steps, then " if cfg.alignment is not None else "")
    t = _step(f"2. train CXRTrekNet-{args.preset} ({cfg.name}: {phases}{args.steps} chain steps) -> {run}")
    step, what = _train(cfg, run)
    _done(t, f"step {step} ({what})")

    evaluation = out / "eval"
    t = _step(f"3. evaluate {args.eval_studies} held-out studies in {'/'.join(EVAL_CONTEXTS)} contexts -> {evaluation}")
    result = _evaluate(ckpt, data_json, evaluation, args.eval_studies)
    _done(t, "metrics.md, stages.png, report.html" + (" (already evaluated from this checkpoint and data)"
                                                      if result.reused else ""))

    export = out / "hf_export"
    t = _step(f"4. export to Hugging Face LLaVA -> {export}, and check PyTorch reproduces the JAX answers")
    what = _export(ckpt, export)
    rows = _pytorch_check(export, ckpt, data_json, count=args.check_studies, new_tokens=16)
    (out / "pytorch_check.json").write_text(json.dumps(rows, indent=2))
    for row in rows:
        print(f"    {row['study_id']}: {'identical' if row['identical'] else 'DIFFERENT'}  "
              f"JAX: {row['jax']!r}  PyTorch: {row['pytorch']!r}")
    _done(t, f"{what}; {sum(r['identical'] for r in rows)}/{len(rows)} answers token-identical")

    metrics = result.metrics
    checks = learning_checks(metrics)
    (out / "learning_check.json").write_text(json.dumps(checks, indent=2))
    print(f"\n=== summary ({metrics['counts']['studies']} held-out phantom studies; baseline = majority answer "
          "of the training split, constant normal report at stage 8; tables in eval/metrics.md)")
    print(_overall_table(metrics))
    print("\n  learning checks: the trained model against the blind baseline on the same turns "
          "(swapped: the model with another study's images)")
    print(_checks_table(checks))
    gain = _last_image_gain(run / "metrics.jsonl")
    if gain is not None:
        reading = ("about 0: the model ignores its images" if abs(gain) < IGNORES_IMAGES_BELOW
                   else "the model reads its images")
        unit = {"answer": "answer", "sqrt": "answer token, weighted 1/sqrt(answer length)"}.get(
            cfg.data.pipeline.sequence.loss_weighting, "answer token")
        print(f"\n  image reliance (last validation): loss with the images swapped between studies minus loss with "
              f"their own images = {gain:+.4f} nats per {unit} ({reading})")
    for name, path in [("phantom data", data_json), ("TFDS data set", data.tfds_dir), ("run (config, metrics, "
                       "checkpoints, tensorboard)", run), ("evaluation", evaluation / "metrics.md"),
                       ("case report", evaluation / "report.html"), ("Hugging Face export", export),
                       ("PyTorch check", out / "pytorch_check.json"),
                       ("learning checks", out / "learning_check.json")]:
        print(f"  {name:48s} {path}")
    print(f"total {time.time() - began_all:.0f} s")
    met = sum(c["met"] for c in checks)
    print(f"learning checks met: {met} of {len(checks)}" + ("" if met == len(checks) else
          " (see the table above; the README discusses the ones this CPU-scale run does not meet)"))
    return 0 if all(r["identical"] for r in rows) else 1


def _last_image_gain(metrics_jsonl: Path) -> float | None:
    """`val_image_gain` of the run's last validation record (None when there is none)."""
    gain = None
    for line in metrics_jsonl.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "validation" and "val_image_gain" in record:
            gain = record["val_image_gain"]
    return gain


def _metric_value(section: dict, kind: str, group: str, metric: str) -> tuple[float | None, int]:
    entry = section[kind].get(group) or {"metrics": {}}
    value = entry["metrics"].get(metric) or {}
    return value.get("value"), entry.get("n_items", 0)


def learning_checks(metrics: dict, context: str = CHECK_CONTEXT) -> list[dict]:
    """One row per LEARNING_CHECKS entry: model (in `context`) and baseline values, margin, met."""
    model = metrics["contexts"][context]
    baseline = metrics["baselines"][BASELINE_NAME]
    rows = []
    for name, kind, group, metric, margin in LEARNING_CHECKS:
        ours, n = _metric_value(model, kind, group, metric)
        theirs, _ = _metric_value(baseline, kind, group, metric)
        # A zero margin means "beat" (strictly above); otherwise the margin itself suffices
        # (1e-9 absorbs float noise such as 0.70 - 0.55 < 0.15).
        met = ours is not None and theirs is not None and (ours - theirs > 0 if margin == 0 else
                                                           ours - theirs >= margin - 1e-9)
        swapped = (_metric_value(metrics["contexts"]["swapped"], kind, group, metric)[0]
                   if "swapped" in metrics["contexts"] else None)
        rows.append({"check": name, "context": context, "items": n, "model": ours, "baseline": theirs,
                     "required_margin": margin, "met": met, "swapped_images": swapped})
    return rows


def _checks_table(rows: list[dict]) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [f"  {'check (' + CHECK_CONTEXT + ' context)':46s} {'items':>5s} {'model':>7s} {'swapped':>8s} "
             f"{'baseline':>8s} {'margin':>7s} {'needed':>7s}  result"]
    for r in rows:
        margin = None if r["model"] is None or r["baseline"] is None else r["model"] - r["baseline"]
        needed = f"> {r['required_margin']:.2f}" if r["required_margin"] == 0 else f">= {r['required_margin']:.2f}"
        lines.append(f"  {r['check']:46s} {r['items']:5d} {fmt(r['model']):>7s} "
                     f"{fmt(r.get('swapped_images')):>8s} {fmt(r['baseline']):>8s} "
                     f"{fmt(margin):>7s} {needed:>7s}  {'met' if r['met'] else 'NOT MET'}")
    return "\n".join(lines)


def _overall_table(metrics: dict) -> str:
    """metric x context table of the overall metrics (value only)."""
    by_context = {**metrics["contexts"], "baseline": metrics["baselines"][BASELINE_NAME]}
    contexts = list(by_context)
    names = ("accuracy", "multi_option_f1", "mean_iou", "bleu_1", "rouge_l", "cider", "ce_micro_f1")
    lines = [f"  {'metric':18s}" + "".join(f"{c:>10s}" for c in contexts)]
    for name in names:
        cells = []
        for c in contexts:
            value = by_context[c]["overall"]["metrics"].get(name, {})
            cells.append(f"{value['value']:10.3f}" if isinstance(value, dict) and value.get("value") is not None
                         else f"{'-':>10s}")
        lines.append(f"  {name:18s}" + "".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
