"""The ablation study: each ablation a named difference from the `grounded` recipe at the demo's
scale, trained per seed with its shared work done once, and evaluated in every context mode.

    python -m experiments.ablation_study run [--seeds 0,1,2] [--only NAME ...] [--force]
        [--preset tiny] [--steps N] [--alignment-steps N] [--studies N] [--eval-studies N]
    python -m experiments.ablation_study report        (experiments.ablation_answers)

`ABLATION_TABLE` names each ablation, the question of the study it answers and its dotted config
overrides on `grounded` (`ablation_config` applies them on top of the demo's scale, `StudyScale`).
Layout under `--root` (default runs/ablations):

    shared/phantom-KEY/        the phantom set, its TFDS build and tokenizer (KEY: its recipe's hash)
    shared/alignment-KEY/      one alignment phase (KEY: the hash of that phase's config tree)
    seedS/NAME/                the chains (started from the shared alignment), eval/, finished.json

Shared work is keyed by the config that produced it (`shared_output`): two ablations whose
alignment phases have the same config tree (grounded, no_context, shuffled_stages, report_only;
lora_r8 and no_prior, whose overrides apply to the chains only) train it once per seed; a changed
config (another seed, blanked images, a frozen tower, other steps) is another key and is computed.
A run whose finished.json records the same config is skipped; `--force` redoes it (not the shared
work, which is redone only when its config changes or its directory under shared/ is deleted).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrtrek_jax.contexts import CONTEXT_MODES
from cxrtrek_jax.output_stamps import is_current, normalised, write_stamp
from cxrtrek_jax.train.config import ExperimentConfig
from cxrtrek_jax.train.registry import DemoSettings, grounded
from experiments.ablation_table import ABLATION_TABLE, BY_NAME, RECIPE, Ablation, ablation_names

__all__ = ["Ablation", "ABLATION_TABLE", "RECIPE", "StudyScale", "ablation_config", "ablation_names",
           "config_key", "shared_output", "alignment_tree", "shared_alignment", "run_ablation", "run_study",
           "main", "STUDY_ROOT", "EVAL_CONTEXTS", "FINISHED_FILE"]

STUDY_ROOT = Path("runs") / "ablations"
EVAL_CONTEXTS = CONTEXT_MODES  # own, teacher, none, swapped (own with another study's images)
FINISHED_FILE = "finished.json"
SHARED_STAMP = "shared_inputs.json"
@dataclasses.dataclass(frozen=True)
class StudyScale:
    """The study's scale: the demo's (`DemoSettings`) unless set. eval_studies: test studies
    evaluated per run and context; None in steps/alignment_steps keeps the demo's / recipe's."""

    preset: str = "tiny"
    studies: int = DemoSettings.studies
    steps: int = DemoSettings.steps
    alignment_steps: int | None = None
    eval_studies: int = 80
    extra: tuple[tuple[str, Any], ...] = ()  # more overrides on every run (the smoke's tiny sizes)


def config_key(tree: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of `tree` as a stamp holds it (`normalised`, sorted keys)."""
    return hashlib.sha256(json.dumps(normalised(tree), sort_keys=True).encode()).hexdigest()[:16]


def _phantom_tree(cfg: ExperimentConfig) -> dict[str, Any]:
    d = cfg.data
    return {"studies": d.phantom_studies, "seed": d.phantom_seed, "size": d.phantom_size,
            "splits": d.phantom_splits, "turns": list(d.phantom_turns)}


def _recipe_at_scale(scale: StudyScale, seed: int, root: Path) -> ExperimentConfig:
    """`grounded` at the demo's settings with `scale` and `seed`, its phantom set under
    root/shared/phantom-KEY (KEY: the phantom recipe's hash; the set is never seeded by `seed`)
    unless `scale.extra` names a data.path."""
    settings = DemoSettings(recipe=RECIPE, studies=scale.studies, steps=scale.steps, seed=seed,
                            alignment_steps=scale.alignment_steps)
    recipe = grounded(scale.preset)
    cfg = recipe.override(settings.overrides(recipe)).override(
        {"eval.max_studies": scale.eval_studies, "eval.contexts": EVAL_CONTEXTS, **dict(scale.extra)})
    if "data.path" in dict(scale.extra) or cfg.data.kind != "phantom":
        return cfg  # a data set given by the caller
    path = root / "shared" / f"phantom-{config_key(_phantom_tree(cfg))}"
    return cfg.override({"data.path": str(path)})


def ablation_config(name: str, scale: StudyScale = StudyScale(), seed: int = 0,
                    root: Path = STUDY_ROOT) -> ExperimentConfig:
    """The experiment of ablation `name`: grounded at `scale` and `seed` with its overrides.
    ValueError for an unknown name."""
    if name not in BY_NAME:
        raise ValueError(f"unknown ablation {name!r}; known: {', '.join(BY_NAME)}")
    ablation = BY_NAME[name]
    cfg = _recipe_at_scale(scale, seed, Path(root)).override(ablation.override_dict())
    return dataclasses.replace(cfg, name=name, description=ablation.question)


def shared_output(root: Path, what: str, tree: Mapping[str, Any], compute: Callable[[Path], None]) -> Path:
    """root/WHAT-KEY (KEY = `config_key(tree)`): `compute(dir)` is called unless the directory's
    stamp records exactly `tree` (then it is reused). The stamp is written after `compute`
    returns, so an interrupted computation is redone (a training phase resumes)."""
    out = Path(root) / f"{what}-{config_key(tree)}"
    stamp = out / SHARED_STAMP
    if is_current(stamp, {"config": tree}):
        print(f"{what}: reusing {out} (same config)", flush=True)
        return out
    out.mkdir(parents=True, exist_ok=True)
    compute(out)
    write_stamp(stamp, {"config": tree})
    return out


def alignment_tree(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config tree the alignment phase of `cfg` is made from (its name and checkpoint
    directory, which say where it is rather than what, and the evaluation settings, which the
    phase does not read, left out)."""
    from cxrtrek_jax.train.run import alignment_phase

    tree = alignment_phase(cfg).to_dict()
    tree.pop("name"), tree.pop("description"), tree.pop("eval")
    tree["checkpoint"].pop("directory")
    return tree


def _alignment_source(name: str, scale: StudyScale, seed: int, root: Path) -> ExperimentConfig:
    """The experiment whose alignment phase ablation `name` starts from: its own, or for a
    chains-only ablation grounded's."""
    return ablation_config(RECIPE if BY_NAME[name].chains_only else name, scale, seed, root)


def _train_alignment(cfg: ExperimentConfig, out: Path) -> None:
    from cxrtrek_jax.train.run import alignment_phase, train_experiment

    result = train_experiment(alignment_phase(cfg), out)
    if result.stop_reason != "completed":
        raise RuntimeError(f"{out}: the alignment phase stopped at step {result.final_step} ({result.stop_reason})")


def shared_alignment(name: str, scale: StudyScale, seed: int, root: Path,
                     train: Callable[[ExperimentConfig, Path], None] = _train_alignment) -> Path:
    """The alignment-phase directory ablation `name` starts from (trained by `train(cfg, dir)`
    unless one with the same config is there: `shared_output`)."""
    source = _alignment_source(name, scale, seed, root)
    return shared_output(Path(root) / "shared", "alignment", alignment_tree(source),
                         lambda out: train(source, out))


def _chains(cfg: ExperimentConfig, alignment_dir: Path) -> ExperimentConfig:
    return dataclasses.replace(cfg, alignment=None, train=dataclasses.replace(
        cfg.train, init_from=str(alignment_dir / "checkpoints")))


def run_ablation(name: str, scale: StudyScale, seed: int, root: Path = STUDY_ROOT, *, force: bool = False,
                 progress: bool = True, bootstrap_resamples: int = 200) -> dict[str, Any]:
    """Train (chains from the shared alignment phase) and evaluate ablation `name` for `seed`
    into root/seedS/NAME; skipped when its finished.json records the same config."""
    from experiments.ablations import _eval_data, _machine
    from cxrtrek_jax.evaluation import EvalData, ScoringConfig, evaluate_checkpoint
    from cxrtrek_jax.train.run import prepare_data, train_experiment

    root = Path(root)
    cfg = ablation_config(name, scale, seed, root)
    run_dir = root / f"seed{seed}" / name
    finished = run_dir / FINISHED_FILE
    inputs = {"experiment": cfg.to_dict()}
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if finished.exists():
        record = json.loads(finished.read_text())
        if normalised(record["inputs"]) == normalised(inputs):
            print(f"seed {seed} {name}: finished; skipped (FORCE=1 redoes it)", flush=True)
            return record
        print(f"seed {seed} {name}: finished with another config; training afresh", flush=True)
        shutil.rmtree(run_dir)
    began = time.time()
    alignment_dir = shared_alignment(name, scale, seed, root)
    aligned = time.time()
    chains = _chains(cfg, alignment_dir)
    result = train_experiment(chains, run_dir, progress=progress)
    if result.stop_reason != "completed":
        raise RuntimeError(f"seed {seed} {name}: training stopped at step {result.final_step} ({result.stop_reason})")
    trained = time.time()
    data = prepare_data(cfg)
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    eval_data, turn_filter = _eval_data(cfg, data, eval_dir)
    evaluate_checkpoint(run_dir / "checkpoints", eval_data, eval_dir, contexts=EVAL_CONTEXTS,
                        max_new_tokens=cfg.eval.max_new_tokens,
                        baseline=EvalData(data.json_files[0], split=cfg.data.train_split, image_root=data.image_root),
                        scoring=ScoringConfig(bootstrap_resamples=bootstrap_resamples, meteor=False),
                        identity={"experiment": name, "seed": seed, "turn_filter": turn_filter}, progress=progress)
    record = {"ablation": name, "seed": seed, "question": BY_NAME[name].question,
              "main_context": BY_NAME[name].main_context, "alignment_dir": str(alignment_dir),
              "final_step": result.final_step, "alignment_seconds": round(aligned - began, 1),
              "train_seconds": round(trained - aligned, 1), "eval_seconds": round(time.time() - trained, 1),
              "machine": _machine(), "inputs": normalised(inputs)}
    write_stamp(finished, record)
    print(f"seed {seed} {name}: alignment {record['alignment_seconds']:.0f} s, chains {record['train_seconds']:.0f} s, "
          f"evaluation {record['eval_seconds']:.0f} s -> {run_dir}", flush=True)
    return record


def run_study(seeds: Sequence[int], names: Sequence[str], scale: StudyScale, root: Path = STUDY_ROOT, *,
              force: bool = False, progress: bool = True, bootstrap_resamples: int = 200) -> list[dict[str, Any]]:
    """Every ablation of `names` for every seed (finished ones skipped unless `force`)."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown ablation(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return [run_ablation(name, scale, seed, root, force=force, progress=progress,
                         bootstrap_resamples=bootstrap_resamples) for seed in seeds for name in names]


def _int_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.ablation_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train + evaluate every ablation for each seed, then report")
    run.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated seeds (default 0)")
    run.add_argument("--only", nargs="*", default=None, help="these ablations (default: all)")
    run.add_argument("--force", action="store_true", help="redo finished runs")
    run.add_argument("--preset", default=StudyScale.preset)
    run.add_argument("--studies", type=int, default=StudyScale.studies, help="phantom studies")
    run.add_argument("--steps", type=int, default=StudyScale.steps, help="chain steps")
    run.add_argument("--alignment-steps", type=int, default=None, help="alignment steps (default: the recipe's)")
    run.add_argument("--eval-studies", type=int, default=StudyScale.eval_studies)
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="more overrides on every run")
    run.add_argument("--root", type=Path, default=STUDY_ROOT)
    run.add_argument("--out", type=Path, default=Path("runs"), help="where ablations.md/.png/.json go")
    run.add_argument("--no-progress", action="store_true")
    report = commands.add_parser("report", help="runs/ablations.md, .png, .json from the finished runs")
    report.add_argument("--root", type=Path, default=STUDY_ROOT)
    report.add_argument("--out", type=Path, default=Path("runs"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from experiments.ablation_answers import write_study_report

    args = _parser().parse_args(argv)
    if args.command == "run":
        from absl import flags
        from cxrtrek_jax.cli.train_cmd import parse_overrides

        if not flags.FLAGS.is_parsed():
            flags.FLAGS(sys.argv[:1])  # Grain workers read absl flags
        scale = StudyScale(preset=args.preset, studies=args.studies, steps=args.steps,
                           alignment_steps=args.alignment_steps, eval_studies=args.eval_studies,
                           extra=tuple(parse_overrides(args.sets).items()))
        try:
            run_study(args.seeds, args.only or ablation_names(), scale, args.root, force=args.force,
                      progress=not args.no_progress)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    paths = write_study_report(args.root, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
