"""`make demo`: the main job end to end on a generated phantom CXRTrek set.

    python -m experiments.demo --out demo_out [--preset tiny] [--experiment grounded] [--seed N] [--steps N]
    python -m experiments.demo --out demo_out --checks-only [EVAL_DIR]   # step 5 alone, on a finished evaluation

It trains the registry's `demo` experiment (`cxrtrek_jax.train.registry.demo`: the `grounded`
recipe at the demo's scale, `DemoSettings`, which the flags below set); `cxrtrek train
--experiment demo --preset tiny --set data.path=OUT/phantom --workdir OUT/run` trains the same
model. Steps (each reruns only when what it is made from changed: the phantom recipe, the
experiment config, the checkpoint, as `cxrtrek_jax.output_stamps` records; an interrupted
training resumes):
1. phantom studies (train/validation/test) and their validation report;
2. TFDS build + a byte-level BPE tokenizer + training (`cxrtrek train`'s trainer; resumes) of the
   `grounded` recipe on the `tiny` model: an alignment phase of one row per study (its stage-1/2/3
   turns), then the staged chains (`--experiment`, `--preset`, `--alignment-steps` choose others);
3. evaluation on the held-out test split in the `own`, `teacher`, `none` and `swapped` (own,
   with another study's images) context modes
   (predictions.jsonl, metrics.json/.md, stages.png, report.html);
   with a blind majority-answer baseline fitted on the training split beside the model;
4. export to a Hugging Face LLaVA directory and a check that PyTorch answers the first question
   of a few test studies with the same tokens as the JAX chain;
5. the learning checks (written to learning_check.json), a summary table and where everything
   is. A check is met when the model, in the `own` context, beats the blind baseline by its margin
   AND answers better with its own images than with another study's, beyond resampling noise (the
   paired study-bootstrap interval of own - swapped lies above 0): a margin that survives swapped
   images shows nothing was read from the image. Every check prints its verdict and reason. Below
   the checks, stage-3 detection per finding (`detection_findings`): own, swapped and baseline mean
   IoU with the paired own - swapped and own - baseline intervals (in learning_check.json too).
   `--checks-only` reruns this step alone on an evaluation directory (default OUT/eval), training
   and evaluating nothing.
   The exit status is 1 when PyTorch and JAX answers differ; with `--strict`, 2 when a learning
   check is not met (without it, unmet checks are printed as NOT MET: they measure the model, not
   the code).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from cxrtrek_jax.contexts import CONTEXT_MODES
from cxrtrek_jax.evaluation.scores.answer_baselines import BASELINE_NAME
from cxrtrek_jax.output_stamps import is_current, write_stamp
from cxrtrek_jax.train.registry import DemoSettings

__all__ = ["main", "LEARNING_CHECKS", "learning_checks", "checks_report"]

# (name, metrics section, group, metric, required margin over the baseline): the demo must show
# learning, judged in the `own` context (the model's own answers as the chain's context, as in
# `cxrtrek infer`), against the majority-answer baseline scored on the same turns.
LEARNING_CHECKS = (
    ("stage-1 view questions, accuracy", "by_task_type", "View_Information", "accuracy", 0.15),
    ("stage-2 finding yes/no questions, accuracy", "by_stage_qtype", "2/yes_no", "accuracy", 0.15),
    ("stage-3 detection, mean IoU", "by_stage_qtype", "3/detection", "mean_iou", 0.0),
    ("stage-3 closed questions, accuracy", "by_stage", "3", "accuracy", 0.0),
    ("stage-3 attribute captions, BLEU-1", "by_task_type", "Attributes_Description", "bleu_1", 0.0),
    ("stage-3 attribute captions, ROUGE-L", "by_task_type", "Attributes_Description", "rouge_l", 0.0),
    ("stage-8 report label F1 (CE micro)", "by_stage", "8", "ce_micro_f1", 0.0),
)
# Stage 3's groups: detection turns are stage-3 `detection` turns; closed accuracy is by_stage "3"'s
# (its closed turns only: attribute choices, and the released files' few stage-3 finding questions);
# attribute captions are the `Attributes_Description` turns BLEU and ROUGE score (its open turns).
CHECK_CONTEXT = "own"
# The checks' questions are also answered with every study's images swapped for another study's:
# a model that reads its radiographs loses accuracy there.
EVAL_CONTEXTS = CONTEXT_MODES  # own, teacher, none and swapped
# What a demo step's output was made from (run/STAMP_FILE, hf_export.STAMP_FILE beside the
# export; `cxrtrek_jax.output_stamps`): a step reruns only when it changed.
STAMP_FILE = "demo_inputs.json"
# `val_image_gain` (nats per unit of loss weight: per answer token, per answer, or per sqrt-weighted
# token, as `loss_weighting` says) below this reads as "within noise: the images are not read". Set
# from the measured spread: runs that did not read their images (view and findings at their
# swapped-image accuracy; docs/notes/2026-12-grounding.md, experiments/RESULTS.md) ended at gains
# of -0.004 to +0.007 (largest |gain| 0.007 over eleven runs), runs that read them at +0.076 to
# +0.30; 0.02 is about three times the largest gain of a model that did not read.
IGNORES_IMAGES_BELOW = 0.02
# The paired own - swapped interval of each learning check (study bootstrap).
CHECK_RESAMPLES = 1000
CHECK_CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class DemoOutputs:
    """Where the demo writes, under `root` (`--out`)."""

    root: Path

    @property
    def phantom(self) -> Path:
        return self.root / "phantom"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def checkpoints(self) -> Path:
        return self.run / "checkpoints"

    @property
    def evaluation(self) -> Path:
        return self.root / "eval"

    @property
    def export(self) -> Path:
        return self.root / "hf_export"

    @property
    def pytorch_check(self) -> Path:
        return self.root / "pytorch_check.json"

    @property
    def learning_check(self) -> Path:
        return self.root / "learning_check.json"


def main(argv: list[str] | None = None) -> int:
    """The demo's steps in order (module docstring); 1 when the data or the PyTorch check fails."""
    args = _parser().parse_args(argv)
    outputs = DemoOutputs(Path(args.out).resolve())
    outputs.root.mkdir(parents=True, exist_ok=True)
    if args.checks_only is not None:
        evaluation = Path(args.checks_only) if args.checks_only else outputs.evaluation
        metrics = json.loads((evaluation / "metrics.json").read_text())
        print(f"learning checks of {evaluation} (nothing trained or evaluated)")
        report = checks_report(metrics, evaluation)
        _print_checks(report, outputs)
        met = _met_line(report)
        return 2 if args.strict and not met else 0
    _init_runtime()
    cfg = _experiment(args, outputs.root)
    began_all = time.time()

    t = _step(f"1. phantom CXRTrek set: {args.studies} studies -> {outputs.phantom}")
    data = _phantom(cfg)
    data_json = Path(data.json_files[0])
    if not _validate(data_json):
        print(f"error: {data_json} has validation errors (above); stopping", file=sys.stderr)
        return 1
    _done(t, f"TFDS data set in {data.tfds_dir}")

    phases = (f"{cfg.alignment.num_steps} alignment steps, then " if cfg.alignment is not None else "")
    t = _step(f"2. train CXRTrekNet-{args.preset} ({args.experiment}: {phases}{args.steps} chain steps) "
              f"-> {outputs.run}")
    _done(t, _train(cfg, outputs.run))

    t = _step(f"3. evaluate {args.eval_studies} held-out studies in {'/'.join(EVAL_CONTEXTS)} contexts "
              f"-> {outputs.evaluation}")
    result = _evaluate(outputs.checkpoints, data_json, outputs.evaluation, args.eval_studies)
    _done(t, "metrics.md, stages.png, report.html" + (" (already evaluated from this checkpoint and data)"
                                                      if result.reused else ""))

    t = _step(f"4. export to Hugging Face LLaVA -> {outputs.export}, and check PyTorch reproduces the JAX answers")
    what = _export(outputs.checkpoints, outputs.export)
    rows = _checked_pytorch_answers(outputs, data_json, args.check_studies)
    _done(t, f"{what}; {sum(r['identical'] for r in rows)}/{len(rows)} answers token-identical")

    met = _summary(cfg, result.metrics, outputs, data, began_all)
    if not all(r["identical"] for r in rows):
        return 1
    return 2 if args.strict and not met else 0


def _parser() -> argparse.ArgumentParser:
    default = DemoSettings()
    parser = argparse.ArgumentParser(prog="python -m experiments.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--preset", default=os.environ.get("PRESET", "tiny"))
    parser.add_argument("--experiment", default=default.recipe,
                        help="the named experiment (recipe) to train at the demo's scale")
    parser.add_argument("--seed", type=int, default=default.seed,
                        help="training seed: initialisation, data order and augmentation (the phantom set, "
                             "and so the held-out studies, stay the same)")
    parser.add_argument("--studies", type=int, default=default.studies, help="phantom studies (80/10/10 split)")
    parser.add_argument("--steps", type=int, default=default.steps, help="training steps of the staged chains")
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--turns", type=int_tuple, default=default.turns, help="min,max QA turns per phantom study")
    parser.add_argument("--buckets", type=int_tuple, default=default.length_buckets,
                        help="padded sequence lengths in tokens")
    parser.add_argument("--learning-rate", type=float, default=default.learning_rate,
                        help="the chains' peak learning rate (the experiment's per-tower rates stay)")
    parser.add_argument("--alignment-steps", type=int, default=default.alignment_steps,
                        help="steps of the experiment's alignment phase before the chains (default: the "
                             "experiment's own)")
    parser.add_argument("--eval-studies", type=int, default=80, help="test studies evaluated")
    parser.add_argument("--check-studies", type=int, default=3,
                        help="test studies whose first answer PyTorch must reproduce")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="experiment config override on top of the demo's (e.g. mesh.tensor=2)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 2 when a learning check is not met")
    parser.add_argument("--checks-only", nargs="?", const="", default=None, metavar="EVAL_DIR",
                        help="only step 5, the learning checks, on a finished evaluation directory (default "
                             "OUT/eval); writes OUT/learning_check.json")
    return parser


def int_tuple(text: str) -> tuple[int, ...]:
    """'512,768,1024' -> (512, 768, 1024) (argparse reports a ValueError as an invalid value)."""
    return tuple(int(part) for part in text.split(","))


def _init_runtime() -> None:
    """absl flags parsed (Grain's workers read them) and warnings-only logging."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])
    import logging

    logging.basicConfig(level=logging.WARNING)


def _experiment(args: argparse.Namespace, out: Path):
    """The registry's `demo` experiment at the flags' settings, its phantom set in out/phantom,
    with the `--set` overrides on top."""
    from cxrtrek_jax.cli.train_cmd import parse_overrides
    from cxrtrek_jax.train.registry import demo

    settings = DemoSettings(
        recipe=args.experiment, data_path=str(out / "phantom"), studies=args.studies, turns=args.turns,
        length_buckets=args.buckets, batch_size=args.batch_size, learning_rate=args.learning_rate,
        steps=args.steps, seed=args.seed, alignment_steps=args.alignment_steps)
    try:
        cfg = demo(args.preset, settings)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return cfg.override(parse_overrides(args.set))


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.time()


def _done(began: float, what: str) -> None:
    print(f"    {what} ({time.time() - began:.0f} s)", flush=True)


def _phantom(cfg):
    """The phantom set of `cfg` and its TFDS build (`DataPaths`), made unless already there."""
    from cxrtrek_jax.train.run import prepare_data

    return prepare_data(cfg)


def _validate(data_json: Path) -> bool:
    """Print the validation report of the phantom JSON; False when it has errors."""
    from cxrtrek_jax.cli.data_validate import format_report
    from data_pipeline.files.validation import validate_file

    report = validate_file(data_json, image_root=data_json.parent)
    print(format_report(report, str(data_json), images_checked=True))
    return not report.errors


def _train(cfg, run: Path) -> str:
    """Train `cfg` into `run`, from scratch when `run` was made from another experiment config,
    resumed when interrupted, skipped when already finished with the same config. Returns the
    final step and what happened."""
    from cxrtrek_jax.train.run import train_experiment

    stamp, inputs = run / STAMP_FILE, {"experiment": cfg.to_dict()}
    if run.exists() and not is_current(stamp, inputs):
        print(f"    {run} was trained from another config: training afresh", flush=True)
        shutil.rmtree(run)
    finished = _newest_step(run / "checkpoints")
    if finished is not None and finished >= cfg.train.num_steps:
        return f"step {finished} (already trained with this config)"
    run.mkdir(parents=True, exist_ok=True)
    write_stamp(stamp, inputs)
    result = train_experiment(cfg, run)
    loss = result.last_metrics.get("loss", float("nan"))
    return f"step {result.final_step} ({result.stop_reason}, loss {loss:.3f})"


def _newest_step(checkpoints: Path) -> int | None:
    """The newest step saved in `checkpoints` (None when there is none)."""
    from cxrtrek_jax.train import CheckpointConfig, Checkpointer

    if not checkpoints.is_dir():
        return None
    checkpointer = Checkpointer(CheckpointConfig(directory=str(checkpoints)))
    steps = checkpointer.steps()
    checkpointer.close()
    return max(steps) if steps else None


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


def _export(ckpt: Path, export: Path) -> str:
    """Export the newest checkpoint to `export` unless it already holds that checkpoint's export."""
    from cxrtrek_jax.evaluation.runs.model_eval import checkpoint_identity
    from cxrtrek_jax.hf import export_checkpoint

    stamp, inputs = export.with_name(f"{export.name}.{STAMP_FILE}"), checkpoint_identity(ckpt)
    if is_current(stamp, inputs, requires=(export / "config.json",)):
        return "already exported from this checkpoint"
    if export.exists():
        shutil.rmtree(export)
    result = export_checkpoint(ckpt, export)
    write_stamp(stamp, inputs)
    return f"{len(result.files)} files"


def _checked_pytorch_answers(outputs: DemoOutputs, data_json: Path, count: int) -> list[dict]:
    """`_pytorch_check` of `count` test studies, written to pytorch_check.json and printed."""
    rows = _pytorch_check(outputs.export, outputs.checkpoints, data_json, count=count, new_tokens=16)
    outputs.pytorch_check.write_text(json.dumps(rows, indent=2))
    for row in rows:
        print(f"    {row['study_id']}: {'identical' if row['identical'] else 'DIFFERENT'}  "
              f"JAX: {row['jax']!r}  PyTorch: {row['pytorch']!r}")
    return rows


def _pytorch_check(export_dir: Path, ckpt: Path, data_json: Path, count: int, new_tokens: int) -> list[dict]:
    """Greedy answers to the first question of `count` test studies: JAX chain vs exported PyTorch."""
    import functools

    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from cxrtrek_jax.decoding import ChainStudy, DecodeSpec, StepwiseDecoder, fixed_plan, run_chain, study_turns
    from cxrtrek_jax.decoding.model_loading import image_processing_of, load_checkpoint_model
    from cxrtrek_jax.hf import load_torch_model
    from cxrtrek_jax.evaluation.runs.model_eval import EvalData, iter_eval_studies
    from data_pipeline.text.sequences import system_prompt_of
    from data_pipeline.text.tokenizer import load_tokenizer

    loaded = load_checkpoint_model(ckpt)
    tokenizer = load_tokenizer(loaded.tokenizer_dir)
    cfg = loaded.config
    budget = new_tokens + 1  # generate's max_new_tokens answer tokens, then our end-of-turn
    decoder = StepwiseDecoder(loaded.graphdef, cfg, DecodeSpec.for_model(
        cfg, tokenizer, cache_length=cfg.text.max_positions, max_answer_tokens=budget))
    processor = AutoProcessor.from_pretrained(str(export_dir))
    hf_model = load_torch_model(export_dir)  # the class of its family: LLaVA or Gemma 3
    rows = []
    for study, images in iter_eval_studies(EvalData(data_json, split="test", max_studies=count),
                                           cfg.vision.image_size, processing=image_processing_of(loaded.tokenizer_dir)):
        first = study_turns(study)[0]
        n_images = first.image_input_count
        chain = ChainStudy(study.key, images[:n_images], system_prompt_of(study),
                           functools.partial(fixed_plan, [first]))
        (ours,) = run_chain(decoder, loaded.state, tokenizer, [chain], context="none",
                            max_new_tokens=budget)
        ours_ids = list(ours[0].answer_tokens)
        messages = _hf_messages(tokenizer, system_prompt_of(study), first.question, n_images)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        paths = [data_json.parent / p for p in study.images[:n_images]]
        # As the processor's own apply_chat_template(tokenize=True): no second bos after a template's.
        inputs = processor(text=text, images=[Image.open(p) for p in paths], return_tensors="pt",
                           add_special_tokens=not text.startswith(tokenizer.format.bos))
        with torch.no_grad():
            generated = hf_model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False,
                                          suppress_tokens=[tokenizer.image_id])
        theirs = [t for t in generated[0, inputs["input_ids"].shape[1]:].tolist()
                  if t not in (tokenizer.end_of_turn_id, tokenizer.eos_id)]
        rows.append({"study_id": study.key, "question": first.question, "jax": tokenizer.decode(ours_ids),
                     "pytorch": tokenizer.decode(theirs), "identical": theirs == ours_ids})
    return rows


def _hf_messages(tokenizer, system: str, question: str, n_images: int) -> list[dict]:
    """The first question as Hugging Face messages: strings with image placeholders for our own chat
    format, or what a checkpoint's own template takes (an imported LLaVA / Gemma 3: content lists)."""
    from data_pipeline.text.checkpoint_template import hf_messages
    from data_pipeline.text.sequences import place_placeholders

    if tokenizer.template is None:
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]
    template, image = tokenizer.template, tokenizer.format.image
    asked = [{"role": "system", "content": system},
             {"role": "user", "content": place_placeholders(question, n_images, image)}]
    return hf_messages(asked, template.content_style, template.image_marker, placeholder=image)


def _summary(cfg, metrics: dict, outputs: DemoOutputs, data, began_all: float) -> bool:
    """Step 5: the learning checks (written to learning_check.json), the summary tables, the
    image reliance, where everything is, and how many checks were met. True when all were."""
    report = checks_report(metrics, outputs.evaluation)
    print(f"\n=== summary ({metrics['counts']['studies']} held-out phantom studies; baseline = majority answer "
          "of the training split, constant normal report at stage 8; tables in eval/metrics.md)")
    print(_overall_table(metrics))
    _print_checks(report, outputs)
    gain = _last_image_gain(outputs.run / "metrics.jsonl")
    if gain is not None:
        print(_image_reliance_line(gain, cfg.data.pipeline.sequence.loss_weighting))
    for name, path in _where_everything_is(outputs, data):
        print(f"  {name:48s} {path}")
    print(f"total {time.time() - began_all:.0f} s")
    return _met_line(report)


def checks_report(metrics: dict, evaluation: Path) -> dict:
    """What learning_check.json holds for an evaluation directory: the learning checks
    (`learning_checks` of `metrics`, its metrics.json, and its scored predictions) and stage-3
    detection per finding (`detection_findings.detection_by_finding`: the own context against
    swapped images and against the baseline's predictions on the same turns)."""
    from cxrtrek_jax.evaluation.runs.evaluate import BASELINE_PREDICTIONS_FILE, SCORED_PREDICTIONS_FILE
    from cxrtrek_jax.evaluation.scores.detection_findings import detection_by_finding
    from cxrtrek_jax.evaluation.scores.predictions import read_predictions

    scored = list(read_predictions(evaluation / SCORED_PREDICTIONS_FILE))
    checks = learning_checks(metrics, scored)
    baseline = evaluation / BASELINE_PREDICTIONS_FILE
    others = {"swapped": [r for r in scored if r.context == "swapped"],
              "baseline": list(read_predictions(baseline)) if baseline.exists() else []}
    findings, unusable = detection_by_finding([r for r in scored if r.context == CHECK_CONTEXT], others,
                                              resamples=CHECK_RESAMPLES, confidence=CHECK_CONFIDENCE)
    return {"checks": checks, "met": sum(c["met"] for c in checks), "of": len(checks),
            "detection_by_finding": findings, "detection_turns_unreadable_reference": unusable}


def _print_checks(report: dict, outputs: DemoOutputs) -> None:
    """Writes learning_check.json and prints the checks and the per-finding detection table."""
    outputs.learning_check.write_text(json.dumps(report, indent=2))
    print("\n  learning checks: the trained model against the blind baseline on the same turns, and with its own "
          "images against another study's (own - swapped: paired study-bootstrap 95% interval)")
    print(_checks_table(report["checks"]))
    print(f"\n  stage-3 detection by finding (the box labels' finding; {CHECK_CONTEXT} context; mean IoU over box "
          "pairs; own - swapped and own - baseline: paired study-bootstrap 95% intervals)")
    print(_findings_table(report["detection_by_finding"]))
    if report["detection_turns_unreadable_reference"]:
        print(f"  ({report['detection_turns_unreadable_reference']} detection turns left out: reference without a "
              "readable box)")


def _met_line(report: dict) -> bool:
    """Prints how many learning checks were met; True when all were."""
    met, of = report["met"], report["of"]
    print(f"learning checks met: {met} of {of}" + ("" if met == of else
          " (each verdict says why, above; experiments/RESULTS.md has the runs behind the recipe)"))
    return met == of


def _image_reliance_line(gain: float, loss_weighting: str) -> str:
    """The summary's line on the last validation's `val_image_gain`, in the loss's unit."""
    if gain <= 0:
        reading = "not above 0: the model does not read its images"
    elif gain < IGNORES_IMAGES_BELOW:
        reading = (f"below {IGNORES_IMAGES_BELOW}, within the gains of runs that did not read their images: "
                   "not shown to read them")
    else:
        reading = (f"above {IGNORES_IMAGES_BELOW}, about three times the largest gain of a run that did not read: "
                   "the model reads its images")
    unit = {"answer": "answer", "sqrt": "answer token, weighted 1/sqrt(answer length)"}.get(
        loss_weighting, "answer token")
    return (f"\n  image reliance (last validation): loss with the images swapped between studies minus loss with "
            f"their own images = {gain:+.4f} nats per {unit} ({reading})")


def _where_everything_is(outputs: DemoOutputs, data) -> list[tuple[str, Path | str]]:
    """(what, where) of every output, for the summary."""
    return [("phantom data", Path(data.json_files[0])), ("TFDS data set", data.tfds_dir),
            ("run (config, metrics, checkpoints, tensorboard)", outputs.run),
            ("evaluation", outputs.evaluation / "metrics.md"), ("case report", outputs.evaluation / "report.html"),
            ("Hugging Face export", outputs.export), ("PyTorch check", outputs.pytorch_check),
            ("learning checks", outputs.learning_check)]


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


def _check_turns(kind: str, group: str):
    """Whether a prediction record belongs to a metrics group (`kind` as in metrics.json)."""
    if kind == "by_task_type":
        return lambda record: record.task_type == group
    if kind == "by_stage_qtype":
        return lambda record: f"{record.stage}/{record.qtype}" == group
    if kind == "by_stage":
        return lambda record: str(record.stage) == group
    raise ValueError(f"unknown metrics section {kind!r}")


def learning_checks(metrics: dict, scored: list, context: str = CHECK_CONTEXT) -> list[dict]:
    """One row per LEARNING_CHECKS entry: model (in `context`), swapped-image and baseline values,
    the margin, the paired own - swapped difference and its interval (from the scored prediction
    records `scored`), and the verdict with its reason. "items" is the metrics group's size, "turns"
    the `context` turns its metric is computed over (the closed ones for accuracy, the captions
    for BLEU)."""
    from cxrtrek_jax.evaluation.scores.paired_differences import paired_difference

    model = metrics["contexts"][context]
    baseline = metrics["baselines"][BASELINE_NAME]
    own = [r for r in scored if r.context == context]
    swapped_records = [r for r in scored if r.context == "swapped"]
    rows = []
    for name, kind, group, metric, margin in LEARNING_CHECKS:
        ours, n = _metric_value(model, kind, group, metric)
        theirs, _ = _metric_value(baseline, kind, group, metric)
        # A zero margin means "beat" (strictly above); otherwise the margin itself suffices
        # (1e-9 absorbs float noise such as 0.70 - 0.55 < 0.15).
        beats = ours is not None and theirs is not None and (ours - theirs > 0 if margin == 0 else
                                                             ours - theirs >= margin - 1e-9)
        paired = paired_difference(own, swapped_records, metric, _check_turns(kind, group),
                                   resamples=CHECK_RESAMPLES, confidence=CHECK_CONFIDENCE)
        scored_turns = paired_difference(own, own, metric, _check_turns(kind, group), resamples=0).turns
        reads = paired.above_zero
        rows.append({"check": name, "context": context, "items": n, "turns": scored_turns,
                     "model": ours, "baseline": theirs,
                     "required_margin": margin, "beats_baseline": beats,
                     "swapped_images": paired.b if paired.turns else None,
                     "own_minus_swapped": paired.difference, "own_minus_swapped_ci": paired.ci,
                     "reads_images": reads, "met": beats and reads, "verdict": _verdict(beats, reads, paired)})
    return rows


def _verdict(beats: bool, reads: bool, paired) -> str:
    """A check's verdict and why (every reason that holds)."""
    if beats and reads:
        return "met"
    reasons = [] if beats else ["below the baseline's margin"]
    if not paired.turns:
        reasons.append("not evaluated with swapped images")
    elif not reads:
        reasons.append("no better with its own images than with another study's")
    return "NOT MET: " + "; ".join(reasons)


def _checks_table(rows: list[dict]) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    def interval(ci):
        return "-" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"

    lines = [f"  {'check (' + CHECK_CONTEXT + ' context)':44s} {'turns':>5s} {'model':>6s} {'swapped':>7s} "
             f"{'own-swapped':>24s} {'baseline':>8s} {'margin':>7s} {'needed':>7s}  verdict"]
    for r in rows:
        margin = None if r["model"] is None or r["baseline"] is None else r["model"] - r["baseline"]
        needed = f"> {r['required_margin']:.2f}" if r["required_margin"] == 0 else f">= {r['required_margin']:.2f}"
        own_swapped = f"{fmt(r['own_minus_swapped'])} {interval(r['own_minus_swapped_ci'])}"
        lines.append(f"  {r['check']:44s} {r['turns']:5d} {fmt(r['model']):>6s} {fmt(r['swapped_images']):>7s} "
                     f"{own_swapped:>24s} {fmt(r['baseline']):>8s} {fmt(margin):>7s} {needed:>7s}  {r['verdict']}")
    return "\n".join(lines)


def _findings_table(rows: list[dict]) -> str:
    """One line per finding of `detection_by_finding`'s rows."""
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    def paired(row, side):
        ci = row[f"own_minus_{side}_ci"]
        return f"{fmt(row[f'own_minus_{side}'])} " + ("-" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]")

    lines = [f"  {'finding':18s} {'turns':>5s} {'own':>6s} {'swapped':>7s} {'baseline':>8s} "
             f"{'own-swapped':>24s} {'own-baseline':>24s}"]
    for r in rows:
        lines.append(f"  {r['finding']:18s} {r['turns']:5d} {fmt(r['own']):>6s} {fmt(r['swapped']):>7s} "
                     f"{fmt(r['baseline']):>8s} {paired(r, 'swapped'):>24s} {paired(r, 'baseline'):>24s}")
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
    from cxrtrek_jax.cli import host_malloc

    # As `cxrtrek train` on CPU: XLA's per-step temporary buffer reused, not faulted back in (before
    # JAX starts a device; importing it is early enough).
    if host_malloc.jax_runs_on_cpu() and host_malloc.keep_freed_memory():
        print("CPU run: glibc malloc keeps freed memory (cxrtrek_jax.cli.host_malloc)", flush=True)
    sys.exit(main())
