"""`evaluate_checkpoint`: decode a checkpoint over a data split, score it beside the blind
baseline and write the evaluation directory. `cxrtrek eval --checkpoint`, the ablations and the
demo all call it.

    result = evaluate_checkpoint("runs/x/checkpoints", EvalData("cxrtrek.json", split="test"),
                                 "runs/x/eval", contexts=("own", "teacher", "none"),
                                 baseline=EvalData("cxrtrek.json", split="train"))
    result.metrics["contexts"]["own"]["overall"]

What it writes into `out_dir` (and returns in `EvaluationResult.written`):
  predictions.jsonl            every turn's answer in every context mode (`decode_predictions`)
  baseline_predictions.jsonl   the majority-answer baseline fitted on `baseline`, same turns
  predictions.scored.jsonl     the records with their per-turn scores
  metrics.json / metrics.md / stages.png   scores per context, stage, task and qtype, with the
                               baseline under "baselines" and an identity (checkpoint, data,
                               settings, per-stage decode coverage, skipped turns, hashes)
The case report of an evaluation directory is `case_report.write_evaluation_report`.
  inputs.json                  what the evaluation was made from (`evaluation_inputs`), so a
                               caller can tell whether an existing directory is still current

The baseline is fitted before anything is decoded, so a wrong split fails fast. Turns that need
more image slots than the model has, and turns that do not fit the cache, are counted in the
identity and said on the console.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtrek_jax import output_stamps
from cxrtrek_jax.contexts import CONTEXT_MODES
from cxrtrek_jax.evaluation.runs.model_eval import (
    DecodeCoverage,
    EvalData,
    checkpoint_identity,
    decode_predictions,
)
from cxrtrek_jax.evaluation.scores.scoring import ScoringConfig

if TYPE_CHECKING:
    from jax.sharding import Mesh

__all__ = [
    "PREDICTIONS_FILE", "BASELINE_PREDICTIONS_FILE", "SCORED_PREDICTIONS_FILE",
    "INPUTS_FILE", "EvaluationResult", "evaluate_checkpoint", "evaluation_inputs", "is_current",
]

PREDICTIONS_FILE = "predictions.jsonl"
BASELINE_PREDICTIONS_FILE = "baseline_predictions.jsonl"
SCORED_PREDICTIONS_FILE = "predictions.scored.jsonl"
INPUTS_FILE = "inputs.json"


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """metrics: what metrics.json holds under its scores (contexts, baselines, counts, ...);
    identity: what identifies the evaluation; written: every file written, in order; reused:
    the directory was already current and was read back (`reuse_current`)."""

    out_dir: Path
    metrics: dict[str, Any]
    identity: dict[str, Any]
    written: tuple[Path, ...]
    reused: bool = False


def evaluation_inputs(checkpoint: str | Path, data: EvalData, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What an evaluation is made from: the checkpoint's identity (newest step, metadata hash),
    the data's (path, split, file hash) and the settings. Equal inputs give equal outputs."""
    return _inputs({**checkpoint_identity(checkpoint), **data.identity()}, data, settings)


def _inputs(source: Mapping[str, Any], data: EvalData, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`evaluation_inputs` from the already computed checkpoint + data identity `source`."""
    return output_stamps.normalised({**source, "max_studies": data.max_studies, "settings": dict(settings)})


def is_current(out_dir: str | Path, inputs: Mapping[str, Any]) -> bool:
    """Whether `out_dir` holds a finished evaluation (metrics.json) made from exactly `inputs`
    (its INPUTS_FILE stamp, `cxrtrek_jax.output_stamps`)."""
    out = Path(out_dir)
    return output_stamps.is_current(out / INPUTS_FILE, inputs, requires=(out / "metrics.json",))


def _read_back(out: Path) -> EvaluationResult:
    """The EvaluationResult of a finished evaluation directory."""
    document = json.loads((out / "metrics.json").read_text())
    identity = document.pop("identity")
    written = tuple(p for p in (out / name for name in (
        PREDICTIONS_FILE, SCORED_PREDICTIONS_FILE, BASELINE_PREDICTIONS_FILE, "metrics.json", "metrics.md",
        "stages.png")) if p.exists())
    return EvaluationResult(out, document, identity, written, reused=True)


def _agreed(flag: bool) -> bool:
    """Process 0's `flag`, on every process (one gather when there are several processes)."""
    from cxrtrek_jax.train.process_gather import gather_ints

    return bool(gather_ints([int(flag)])[0, 0])


def _check_settings(checkpoint: Path, contexts: Sequence[str], max_new_tokens: int, batch_size: int) -> None:
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint}: no such directory")
    unknown = [c for c in contexts if c not in CONTEXT_MODES]
    if unknown or not contexts:
        raise ValueError(f"context modes must be among {', '.join(CONTEXT_MODES)}, got {list(contexts)}")
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _decode(checkpoint: Path, data: EvalData, out: Path, *, contexts, order, max_new_tokens, batch_size,
            on_study, mesh, writes: bool) -> dict[str, Any]:
    """Decode into out/predictions.jsonl (only when `writes`: the other processes of a run on a
    mesh spanning processes decode in lockstep and write nothing); print the coverage; return the
    identity part it adds."""
    from cxrtrek_jax.decoding.placement import describe_mesh
    from cxrtrek_jax.evaluation.scores.predictions import PredictionWriter

    skipped: dict[str, int] = {}
    coverage = DecodeCoverage()
    records = decode_predictions(checkpoint, data, contexts=contexts, order=order, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, on_study=on_study, skipped=skipped, mesh=mesh)
    if not writes:
        for _ in records:
            pass
        return {}
    with PredictionWriter(out / PREDICTIONS_FILE) as writer:
        for record in records:
            writer.write(record)
            coverage.add(record)
    if skipped:
        print(f"note: {sum(skipped.values())} turn(s) of {len(skipped)} study(ies) need more images than the "
              "model's image slots and were not asked (listed in metrics.json identity)", flush=True)
    print(coverage.format(), flush=True)
    return {"contexts": list(contexts), "turns_skipped_image_limit": skipped,
            "stage_coverage": coverage.to_json(), "decode_mesh": describe_mesh(mesh)}


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: EvalData,
    out_dir: str | Path,
    *,
    contexts: Sequence[str] = ("own", "teacher", "none"),
    order: str = "given",
    max_new_tokens: int = 96,
    batch_size: int = 4,
    baseline: EvalData | None = None,
    scoring: ScoringConfig = ScoringConfig(),
    identity: Mapping[str, Any] | None = None,
    on_study: Callable[[str, str], None] | None = None,
    progress: bool = True,
    reuse_current: bool = False,
    mesh: Mesh | None = None,
) -> EvaluationResult:
    """Decode `checkpoint` over `data` in `contexts`, score it (and the majority baseline fitted
    on `baseline`, None = no baseline) and write `out_dir` (module docstring).

    mesh: decode on this mesh (`decode_predictions`; recorded in the identity as "decode_mesh", not
    in the inputs: the predictions are those of one device). On a mesh spanning processes every
    process calls this with the same arguments; process 0 alone writes `out_dir` and scores (it
    decides reuse_current for all); the others decode their share and return an `EvaluationResult`
    with no metrics and nothing written.

    identity: extra entries for metrics.json's identity; on_study(context, study_key) is called
    as each study is decoded. reuse_current: when `out_dir` already holds an evaluation made
    from the same inputs (`is_current`: same checkpoint step and metadata, data file, split and
    settings), read it back instead of decoding again. Raises FileNotFoundError (checkpoint, data, tokenizer), ValueError
    (settings, empty split, malformed records) and `nlg_metrics.MeteorUnavailable`."""
    from cxrtrek_jax.evaluation.scores.answer_baselines import (
        BASELINE_NAME,
        MajorityAnswerBaseline,
        score_baseline,
        write_baseline_predictions,
    )
    from cxrtrek_jax.decoding.placement import writes_outputs
    from cxrtrek_jax.evaluation.runs.model_eval import iter_split_studies
    from cxrtrek_jax.evaluation.scores.outputs import file_sha256, write_metrics
    from cxrtrek_jax.evaluation.scores.predictions import read_predictions
    from cxrtrek_jax.evaluation.scores.scoring import score_predictions

    checkpoint, out = Path(checkpoint), Path(out_dir)
    _check_settings(checkpoint, contexts, max_new_tokens, batch_size)
    settings = {"contexts": list(contexts), "order": order, "max_new_tokens": max_new_tokens,
                "baseline_split": None if baseline is None else baseline.split,
                "scoring": dataclasses.asdict(scoring)}
    source = {**checkpoint_identity(checkpoint), **data.identity()}  # hashes the data file once
    inputs = _inputs(source, data, settings)
    writes = writes_outputs()
    if reuse_current and _agreed(writes and is_current(out, inputs)):
        return _read_back(out) if writes else EvaluationResult(out, {}, source, (), reused=True)
    fitted = None
    if baseline is not None:
        try:
            fitted = MajorityAnswerBaseline.fit(iter_split_studies(baseline))
        except ValueError as err:
            raise ValueError(f"baseline split {baseline.split!r}: {err}") from None
    if writes:
        out.mkdir(parents=True, exist_ok=True)
        (out / INPUTS_FILE).unlink(missing_ok=True)  # a directory left half-written is never current
    ids = {**source,
           **_decode(checkpoint, data, out, contexts=contexts, order=order, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, on_study=on_study, mesh=mesh, writes=writes)}
    if not writes:
        return EvaluationResult(out, {}, ids, ())
    predictions = out / PREDICTIONS_FILE
    ids.update(predictions=str(predictions), predictions_sha256=file_sha256(predictions))
    metrics = score_predictions(read_predictions(predictions), scoring,
                                scored_path=out / SCORED_PREDICTIONS_FILE, progress=progress)
    written = [predictions, out / SCORED_PREDICTIONS_FILE]
    if fitted is not None:
        path = out / BASELINE_PREDICTIONS_FILE
        fit = write_baseline_predictions(fitted, predictions, path)
        metrics["baselines"] = {BASELINE_NAME: score_baseline(path, scoring)}
        ids["baseline"] = {"predictions": str(path), "fitted_on": {"split": baseline.split, **fit}}
        written.append(path)
    ids.update(identity or {})
    written.extend(write_metrics(out, metrics, ids).values())
    output_stamps.write_stamp(out / INPUTS_FILE, inputs)
    return EvaluationResult(out, metrics, ids, tuple(written))
