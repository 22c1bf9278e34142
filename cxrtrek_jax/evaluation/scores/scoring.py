"""Scoring a stream of prediction records into the CXRTrek metrics dictionary.

`score_predictions` reads the records once and works in two passes over a
temporary spill file; no text is held in memory, only per-study sums, the
CIDEr-D document frequencies and one small (context, study, turn) key per
turn for duplicate detection:

1. Each record is validated and scored on its own (closed-ended parsing,
   detection IoU, BLEU statistics, ROUGE-L, CheXpert labels of reports);
   reference n-grams are counted for CIDEr-D; closed-ended outcomes are
   recorded per study and stage. The record and its statistics are spilled.
2. The spill is read back in chunks: CIDEr-D (needs the finished document
   frequencies) and METEOR (one JVM call per chunk) complete the open-ended
   scores; every item's statistics are added, per study, to the groups it
   belongs to: overall, its stage, task type, qtype and (stage, qtype), and, for
   closed-ended items, "with/without an earlier error" of its stage.

Metrics are computed per context mode from the summed statistics, with
study-bootstrap percentile intervals (`bootstrap`). Detection groups also report
AP per class and mAP at IoU 0.4 and 0.5 (`detection_ap`, as the external VinDr scoring:
classes are the boxes' labels, every predicted box scored alike), from the parsed boxes of
their items; each detection item keeps its boxes until the end (a few numbers per turn). Items whose *reference*
cannot be scored (unparseable closed-ended reference, malformed reference
boxes, empty reference text) are left out of every metric, counted by
reason and listed (first few) under "problems"; nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cxrtrek_jax.evaluation.metrics import answer_parsing
from cxrtrek_jax.evaluation.metrics.answer_parsing import judge_closed_answer
from cxrtrek_jax.evaluation.metrics.bootstrap import StudyStats, bootstrap_weights, percentile_interval
from data_pipeline.reports.chexpert_labeller import ReportLabeller, default_labeller
from cxrtrek_jax.evaluation.metrics.clinical_efficacy import CE_STAT_NAMES, ce_item_statistics
from cxrtrek_jax.evaluation.metrics.detection_ap import (
    DETECTION_IOUS, ClassDetections, detections_by_class, mean_average_precision, weighted_ap,
)
from cxrtrek_jax.evaluation.metrics.detection_metrics import label_class, score_detection
from cxrtrek_jax.evaluation.metrics.error_propagation import StageOutcomes, compare_contexts
from cxrtrek_jax.evaluation.metrics.families import HEADLINE_METRICS, MetricFamily, build_families
from cxrtrek_jax.evaluation.metrics.nlg_metrics import (
    BLEU_MAX_ORDER,
    BLEU_STAT_NAMES,
    CiderD,
    MeteorScorer,
    MeteorUnavailable,
    bleu_from_statistics,
    bleu_statistics,
    meteor_unavailable_reason,
    nlg_tokens,
    rouge_l,
)
from cxrtrek_jax.contexts import CONTEXT_MODES
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord, PredictionWriter
from data_pipeline.schema.boxes import Box, BoxParseError, parse_boxes
from data_pipeline.schema.stages import QType, Stage, parse_qtype

__all__ = ["METRICS_FORMAT", "ScoringConfig", "score_predictions"]

METRICS_FORMAT = "cxrtrek-metrics/1"
_REPORT_STAGE = int(Stage.REPORT)


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """How predictions are scored.

    bootstrap_resamples: study-bootstrap replicates per metric (0 = no intervals).
    seed: seed of the replicate weights (same seed, same intervals).
    confidence: coverage of the percentile intervals.
    iou_threshold: IoU at or above which a detection pair counts as a hit.
    uncertain_as_positive: map uncertain CheXpert mentions to positive for CE.
    meteor: compute METEOR when Java is available (it costs a ~20 s JVM start).
    meteor_chunk: items per METEOR call in the second pass.
    max_problem_examples: how many excluded items are listed by name.
    """

    bootstrap_resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95
    iou_threshold: float = 0.5
    uncertain_as_positive: bool = True
    meteor: bool = True
    meteor_chunk: int = 256
    max_problem_examples: int = 20

    def __post_init__(self) -> None:
        if self.bootstrap_resamples < 0:
            raise ValueError(f"bootstrap_resamples must be >= 0, got {self.bootstrap_resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.meteor_chunk < 1:
            raise ValueError(f"meteor_chunk must be >= 1, got {self.meteor_chunk}")


class _Excluded(Exception):
    """The item's reference cannot be scored; the message is the reason."""


def _closed_scores(record: PredictionRecord, qtype: QType, families) -> tuple[dict, dict, bool]:
    judged = judge_closed_answer(record.prediction, record.reference, record.question, qtype)
    if judged.correct is None:
        raise _Excluded("reference answer cannot be parsed as a closed-ended answer")
    correct, predicted, reference = judged.correct, judged.prediction, judged.reference
    stats = {"closed": families["closed"].vector({"correct": correct, "unparseable": not predicted.ok})}
    scores: dict[str, Any] = {
        "correct": correct,
        "parsed_as": predicted.method,
        "predicted_value": sorted(predicted.value) if predicted.ok else None,
        "reference_value": sorted(reference.value),
    }
    if qtype.kind == "multi-choice":
        chosen = predicted.value or frozenset()
        counts = {
            "tp": len(chosen & reference.value),
            "fp": len(chosen - reference.value),
            "fn": len(reference.value - chosen),
        }
        stats["multi_choice"] = families["multi_choice"].vector(counts)
        scores.update(counts)
    return stats, scores, correct


def _detection_scores(record: PredictionRecord, families, iou_threshold: float) -> tuple[dict, dict]:
    try:
        detection = score_detection(record.reference, record.prediction, iou_threshold)
    except BoxParseError as err:
        raise _Excluded(f"reference boxes unusable: {err}") from None
    stats = {
        "detection": families["detection"].vector(
            {
                "pairs": detection.num_pairs,
                "iou_sum": detection.iou_sum,
                "hits": detection.hits,
                "unparseable": detection.unparseable,
            }
        )
    }
    scores = {
        "mean_iou": detection.mean_iou,
        "hits": detection.hits,
        "pairs": detection.num_pairs,
        "unparseable": detection.unparseable,
    }
    return stats, scores


def _boxes_by_class(record: PredictionRecord) -> dict[str, tuple[list[Box], list[Box]]]:
    """label class -> (reference boxes, predicted boxes) of a detection item whose reference parses;
    a malformed prediction has no boxes."""
    try:
        predicted = parse_boxes(record.prediction)
    except BoxParseError:
        predicted = ()
    out: dict[str, tuple[list[Box], list[Box]]] = {}
    for side, boxes in enumerate((parse_boxes(record.reference), predicted)):
        for box in boxes:
            out.setdefault(label_class(box.label), ([], []))[side].append(box)
    return out


def _open_scores(record: PredictionRecord, families, labeller: ReportLabeller, uncertain_as_positive: bool):
    hypothesis, reference = nlg_tokens(record.prediction), nlg_tokens(record.reference)
    if not reference:
        raise _Excluded("reference answer has no words")
    bleu = bleu_statistics(hypothesis, reference)
    rouge = rouge_l(hypothesis, reference)
    nlg = dict(zip(BLEU_STAT_NAMES, bleu)) | {"rouge_l": rouge, "meteor": 0.0, "cider": 0.0}
    stats = {"nlg": families["nlg"].vector(nlg)}
    scores: dict[str, Any] = {f"bleu_{k}": float(bleu_from_statistics(bleu, k)) for k in range(1, BLEU_MAX_ORDER + 1)}
    scores["rouge_l"] = rouge
    if record.stage == _REPORT_STAGE:
        ce, ref_positive, pred_positive = ce_item_statistics(
            labeller, record.reference, record.prediction, uncertain_as_positive
        )
        stats["clinical_efficacy"] = families["clinical_efficacy"].vector(dict(zip(CE_STAT_NAMES, ce)))
        scores["ce_reference_positive"] = ref_positive
        scores["ce_predicted_positive"] = pred_positive
    return stats, scores, reference


def _group_keys(record: PredictionRecord) -> list[tuple[str, str]]:
    return [
        ("overall", ""),
        ("stage", str(record.stage)),
        ("task_type", record.task_type),
        ("qtype", record.qtype),
        ("stage_qtype", f"{record.stage}/{record.qtype}"),
    ]


class _Generation:
    """Decoding statistics of one context mode."""

    def __init__(self) -> None:
        self.turns = 0
        self.tokens = [0, 0]  # sum, count
        self.latency = [0.0, 0]
        self.stop_reasons: Counter = Counter()

    def add(self, record: PredictionRecord) -> None:
        self.turns += 1
        if record.num_generated_tokens is not None:
            self.tokens[0] += record.num_generated_tokens
            self.tokens[1] += 1
        if record.latency_s is not None:
            self.latency[0] += record.latency_s
            self.latency[1] += 1
        if record.stop_reason is not None:
            self.stop_reasons[record.stop_reason] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "turns": self.turns,
            "turns_with_token_counts": self.tokens[1],
            "mean_generated_tokens": self.tokens[0] / self.tokens[1] if self.tokens[1] else None,
            "turns_with_latency": self.latency[1],
            "mean_latency_s": self.latency[0] / self.latency[1] if self.latency[1] else None,
            "total_latency_s": self.latency[0] if self.latency[1] else None,
            "stop_reasons": dict(sorted(self.stop_reasons.items())),
        }


class _Scorer:
    """State of one `score_predictions` run."""

    def __init__(self, config: ScoringConfig, meteor: MeteorScorer | None, meteor_note: str):
        self.config = config
        self.meteor = meteor
        self.meteor_note = meteor_note
        self.families: dict[str, MetricFamily] = build_families(with_meteor=meteor is not None)
        self.labeller = default_labeller()
        self.studies: dict[str, int] = {}
        self.seen: set[tuple[str, int, int]] = set()
        self.cider: dict[str, CiderD] = {}
        self.outcomes = StageOutcomes()
        self.groups: dict[str, dict[tuple, dict[str, StudyStats]]] = {}
        self.group_items: dict[str, Counter] = {}
        self.generation: dict[str, _Generation] = {}
        # context -> group key -> (study, label class -> (reference, predicted boxes)) of its detection items
        self.detections: dict[str, dict[tuple, list[tuple[int, dict]]]] = {}
        self.problems: Counter = Counter()
        self.problem_examples: list[dict] = []
        self.records = 0

    # -- pass 1 --------------------------------------------------------------------------------

    def first_pass(self, record: PredictionRecord) -> dict:
        self.records += 1
        study = self.studies.setdefault(record.study_id, len(self.studies))
        key = (record.context, study, record.turn_index)
        if key in self.seen:
            raise ValueError(
                f"duplicate prediction for study {record.study_id!r} turn {record.turn_index} "
                f"context {record.context!r} (record {self.records})"
            )
        self.seen.add(key)
        entry = {"record": record.to_dict(), "study": study, "stats": {}}
        try:
            stats, scores = self._score_item(record, study)
        except _Excluded as reason:
            self._add_problem(record, str(reason))
            entry["record"]["scores"] = {"excluded": str(reason)}
            return entry
        entry["stats"] = {name: vector.tolist() for name, vector in stats.items()}
        entry["record"]["scores"] = scores
        return entry

    def _score_item(self, record: PredictionRecord, study: int) -> tuple[dict, dict]:
        if not record.reference.strip():
            raise _Excluded("no reference answer")
        qtype = parse_qtype(record.qtype)
        if qtype.is_closed:
            stats, scores, correct = _closed_scores(record, qtype, self.families)
            self.outcomes.add(record.context, study, record.stage, correct)
            return stats, scores
        if qtype.kind == "detection":
            return _detection_scores(record, self.families, self.config.iou_threshold)
        stats, scores, reference = _open_scores(
            record, self.families, self.labeller, self.config.uncertain_as_positive
        )
        self.cider.setdefault(record.context, CiderD()).add_reference(reference)
        return stats, scores

    def _add_problem(self, record: PredictionRecord, reason: str) -> None:
        self.problems[reason] += 1
        if len(self.problem_examples) < self.config.max_problem_examples:
            self.problem_examples.append(
                {
                    "study_id": record.study_id,
                    "turn_index": record.turn_index,
                    "context": record.context,
                    "reason": reason,
                }
            )

    # -- pass 2 --------------------------------------------------------------------------------

    def second_pass(self, chunk: list[dict]) -> Iterator[PredictionRecord]:
        open_items = [e for e in chunk if "nlg" in e["stats"]]
        pairs = [(nlg_tokens(e["record"]["prediction"]), nlg_tokens(e["record"]["reference"])) for e in open_items]
        meteor_scores = self.meteor.score(*zip(*pairs)) if self.meteor is not None and pairs else []
        nlg = self.families["nlg"]
        for i, (entry, (hypothesis, reference)) in enumerate(zip(open_items, pairs)):
            vector = entry["stats"]["nlg"]
            cider = self.cider[entry["record"]["context"]].score(hypothesis, reference)
            vector[nlg.stat_names.index("cider")] = cider
            entry["record"]["scores"]["cider"] = cider
            if meteor_scores:
                vector[nlg.stat_names.index("meteor")] = meteor_scores[i]
                entry["record"]["scores"]["meteor"] = meteor_scores[i]
        for entry in chunk:
            record = PredictionRecord.from_dict(entry["record"])
            self._accumulate(record, entry["study"], entry["stats"])
            yield record

    def _accumulate(self, record: PredictionRecord, study: int, stats: dict[str, list[float]]) -> None:
        context = record.context
        self.generation.setdefault(context, _Generation()).add(record)
        if not stats:
            return
        keys = _group_keys(record)
        if "closed" in stats:
            earlier = self.outcomes.had_error_before(context, study, record.stage)
            keys.append(("after_error", str(record.stage), "with" if earlier else "without"))
        groups = self.groups.setdefault(context, {})
        items = self.group_items.setdefault(context, Counter())
        if "detection" in stats:
            boxes = (study, _boxes_by_class(record))
            for key in keys:
                self.detections.setdefault(context, {}).setdefault(key, []).append(boxes)
        for key in keys:
            families = ("closed",) if key[0] == "after_error" else tuple(stats)
            items[key] += 1
            for name in families:
                groups.setdefault(key, {}).setdefault(name, StudyStats(self.families[name].width))
                groups[key][name].add(study, np.asarray(stats[name]))

    # -- results -------------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        values, replicates = self._values(), self._replicates()
        contexts = [c for c in CONTEXT_MODES if c in self.generation]
        per_context = {c: self._context_section(c, values[c], replicates.get(c, {})) for c in contexts}
        return {
            "format": METRICS_FORMAT,
            "settings": self._settings(),
            "counts": {
                "records": self.records,
                "studies": len(self.studies),
                "records_by_context": {c: self.generation[c].turns for c in contexts},
                "excluded_items": sum(self.problems.values()),
            },
            "contexts": per_context,
            "error_propagation": self._error_propagation(contexts, values, replicates),
            "problems": {
                "excluded_by_reason": dict(sorted(self.problems.items())),
                "examples": self.problem_examples,
            },
        }

    def _values(self) -> dict[str, dict[tuple, dict[str, float | None]]]:
        out: dict[str, dict[tuple, dict[str, float | None]]] = {c: {} for c in self.generation}
        for context, groups in self.groups.items():
            for key, by_family in groups.items():
                metrics: dict[str, float | None] = {}
                for name in self.families:
                    if name in by_family:
                        computed = self.families[name].metrics(by_family[name].total())
                        metrics.update({m: _number(v) for m, v in computed.items()})
                out[context][key] = metrics
        return out

    def _replicates(self) -> dict[str, dict[tuple, dict[str, np.ndarray]]]:
        if self.config.bootstrap_resamples == 0 or not self.studies:
            return {}
        chunks: dict[str, dict[tuple, dict[str, list[np.ndarray]]]] = {}
        for weights in bootstrap_weights(len(self.studies), self.config.bootstrap_resamples, self.config.seed):
            for context, groups in self.groups.items():
                for key, by_family in groups.items():
                    target = chunks.setdefault(context, {}).setdefault(key, {})
                    for name in self.families:
                        if name in by_family:
                            computed = self.families[name].metrics(by_family[name].resampled(weights))
                            for metric, reps in computed.items():
                                target.setdefault(metric, []).append(reps)
        return {
            c: {k: {m: np.concatenate(parts) for m, parts in g.items()} for k, g in groups.items()}
            for c, groups in chunks.items()
        }

    def _metric_entries(self, context: str, key: tuple, values: dict, replicates: dict) -> dict[str, Any]:
        by_family = self.groups[context][key]
        studies = set()
        metrics: dict[str, Any] = {}
        for name, family in self.families.items():
            if name not in by_family:
                continue
            stats = by_family[name]
            studies.update(stats.studies.tolist())
            n = int(stats.total()[0])
            for metric in family.metrics(stats.total()):
                interval = None
                if metric in replicates.get(key, {}):
                    interval = percentile_interval(replicates[key][metric], self.config.confidence)
                metrics[metric] = {
                    "value": values[key][metric],
                    "ci": None if interval is None or values[key][metric] is None else list(interval),
                    "n": n,
                }
        metrics.update(self._map_entries(context, key))
        return {"n_items": self.group_items[context][key], "n_studies": len(studies), "metrics": metrics}

    def _map_entries(self, context: str, key: tuple) -> dict[str, Any]:
        """"ap@T[class]" and "map@T" entries (T in `DETECTION_IOUS`) of the group's detection items,
        with intervals from the same study-bootstrap replicates as every other metric."""
        items = self.detections.get(context, {}).get(key)
        if not items:
            return {}
        owners = np.array([study for study, _ in items])
        entries: dict[str, Any] = {}
        for threshold in DETECTION_IOUS:
            by_class = detections_by_class([boxes for _, boxes in items], threshold)
            names = list(by_class)
            point = np.array([weighted_ap(by_class[n]) for n in names])
            replicates = self._ap_replicates([by_class[n] for n in names], owners)
            columns = {f"ap@{threshold}[{n}]": (point[i], replicates[:, i]) for i, n in enumerate(names)}
            columns[f"map@{threshold}"] = (_nanmean(point), np.array([_nanmean(row) for row in replicates]))
            for metric, (value, reps) in columns.items():
                interval = percentile_interval(reps, self.config.confidence) if len(reps) else None
                entries[metric] = {"value": _number(value),
                                   "ci": None if interval is None or math.isnan(value) else list(interval),
                                   "n": len(items)}
        return entries

    def _ap_replicates(self, classes: list[ClassDetections], owners: np.ndarray) -> np.ndarray:
        """float[R, C]: each class's AP in each study-bootstrap replicate (R = 0 without resampling)."""
        if self.config.bootstrap_resamples == 0:
            return np.zeros((0, len(classes)))
        rows = []
        for chunk in bootstrap_weights(len(self.studies), self.config.bootstrap_resamples, self.config.seed):
            for weights in chunk:
                rows.append([weighted_ap(d, weights[owners]) for d in classes])
        return np.array(rows, np.float64).reshape(-1, len(classes))

    def _context_section(self, context: str, values: dict, replicates: dict) -> dict[str, Any]:
        groups = self.groups.get(context, {})

        def section(kind: str) -> dict[str, Any]:
            keys = sorted((k for k in groups if k[0] == kind), key=lambda k: _sort_key(kind, k[1]))
            return {k[1]: self._metric_entries(context, k, values, replicates) for k in keys}

        overall = ("overall", "")
        return {
            "overall": self._metric_entries(context, overall, values, replicates) if overall in groups else None,
            "by_stage": section("stage"),
            "by_task_type": section("task_type"),
            "by_qtype": section("qtype"),
            "by_stage_qtype": section("stage_qtype"),
            "generation": self.generation[context].summary(),
        }

    def _error_propagation(self, contexts: list[str], values: dict, replicates: dict) -> dict[str, Any]:
        first_errors = {}
        for context in contexts:
            groups = self.groups.get(context, {})
            later = {}
            for stage in range(2, 9):
                entry = {}
                for flag, name in (("with", "with_earlier_error"), ("without", "without_earlier_error")):
                    key = ("after_error", str(stage), flag)
                    if key in groups:
                        entry[name] = self._metric_entries(context, key, values[context], replicates.get(context, {}))[
                            "metrics"
                        ]["accuracy"]
                if entry:
                    later[str(stage)] = entry
            first_errors[context] = {
                "first_error_stage": self.outcomes.first_error_distribution(context),
                "later_stage_accuracy": later,
            }
        return {"context_comparison": self._comparisons(contexts, values, replicates), "first_errors": first_errors}

    def _comparisons(self, contexts: list[str], values: dict, replicates: dict) -> dict[str, Any]:
        if len(contexts) < 2:
            return {}
        keys = [("overall", "")] + sorted(
            {k for c in contexts for k in self.groups.get(c, {}) if k[0] == "stage"}, key=lambda k: int(k[1])
        )
        out: dict[str, Any] = {}
        for key in keys:
            present = [c for c in contexts if key in values[c]]
            group_values = {c: {m: values[c][key].get(m) for m in HEADLINE_METRICS if m in values[c][key]}
                            for c in present}
            group_reps = {c: replicates.get(c, {}).get(key, {}) for c in present}
            compared = compare_contexts(group_values, group_reps, self.config.confidence)
            if compared:
                out["overall" if key[0] == "overall" else f"stage_{key[1]}"] = compared
        return out

    def _settings(self) -> dict[str, Any]:
        config = self.config
        return {
            "bootstrap": {
                "resamples": config.bootstrap_resamples,
                "seed": config.seed,
                "confidence": config.confidence,
                "unit": "study (cluster bootstrap; all turns of a drawn study are resampled together)",
                "interval": "percentile",
                "paired_across_contexts": True,
            },
            "closed_ended": {
                "parsing": "option key, option text, paraphrase (token F1), or leading yes/no; see answer_parsing",
                "fuzzy_min_f1": answer_parsing.FUZZY_MIN_F1,
                "fuzzy_min_margin": answer_parsing.FUZZY_MIN_MARGIN,
                "unparseable_predictions": "counted as wrong and reported as closed_unparseable_rate",
            },
            "detection": {
                "iou_threshold": config.iou_threshold,
                "matching": "by label, then by IoU; unmatched reference and predicted boxes count as IoU 0",
            },
            "nlg": {
                "tokens": "lowercased words and numbers, punctuation dropped",
                "bleu": "corpus BLEU-1..4, closest reference length, no smoothing",
                "rouge_l": "COCO-caption ROUGE-L (beta 1.2), mean over items",
                "meteor": self.meteor_note,
                "cider": "CIDEr-D (COCO-caption definition), document frequencies per context mode, mean over items",
            },
            "clinical_efficacy": {
                "items": f"stage {_REPORT_STAGE} open-ended answers",
                "labeller": "rule-based CheXpert-style labeller (cxrtrek_jax/evaluation/labeller_rules)",
                "uncertain_as": "positive" if config.uncertain_as_positive else "negative",
                "macro_f1": "mean over observations with tp+fp+fn > 0",
            },
        }


def _nanmean(values: np.ndarray) -> float:
    """The mean of the defined values (`mean_average_precision` over classes); NaN when none is."""
    return mean_average_precision(dict(enumerate(np.asarray(values, np.float64).tolist())))


def _number(value: np.ndarray | float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _sort_key(kind: str, name: str) -> tuple:
    if kind == "stage":
        return (int(name), "")
    if kind == "stage_qtype":
        stage, qtype = name.split("/", 1)
        return (int(stage), qtype)
    return (0, name)


def _chunks(path: Path, size: int) -> Iterator[list[dict]]:
    with path.open("r", encoding="utf-8") as f:
        chunk = []
        for line in f:
            chunk.append(json.loads(line))
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _open_meteor(config: ScoringConfig, meteor: MeteorScorer | None) -> tuple[MeteorScorer | None, str, bool]:
    """The METEOR scorer to use, the note for the metrics, and whether this run owns it."""
    if not config.meteor:
        return None, "not computed: disabled in the scoring configuration", False
    if meteor is not None:
        return meteor, f"METEOR 1.5 segment scores, mean over items ({meteor.describe()})", False
    reason = meteor_unavailable_reason()
    if reason is not None:
        return None, f"unavailable: {reason}", False
    try:
        scorer = MeteorScorer()
    except (MeteorUnavailable, OSError) as err:
        return None, f"unavailable: {err}", False
    return scorer, f"METEOR 1.5 segment scores, mean over items ({scorer.describe()})", True


def score_predictions(
    records: Iterable[PredictionRecord],
    config: ScoringConfig = ScoringConfig(),
    *,
    scored_path: str | Path | None = None,
    progress: bool = False,
    meteor: MeteorScorer | None = None,
) -> dict[str, Any]:
    """Score prediction records (any iterable; read once) into the metrics dictionary.

    scored_path: where to write the records again with their per-turn
        `scores` filled in (JSONL, same order), or None.
    progress: show tqdm progress bars on stderr.
    meteor: a running MeteorScorer to reuse (else one is started when
        `config.meteor` and Java allow; its absence is stated in the output).
    Raises ValueError for an empty stream or a duplicated (context, study, turn).
    """
    from tqdm import tqdm

    meteor, note, owned = _open_meteor(config, meteor)
    scorer = _Scorer(config, meteor, note)
    try:
        with tempfile.TemporaryDirectory(prefix="cxrtrek_scoring_") as tmp:
            spill = Path(tmp) / "spill.jsonl"
            with spill.open("w", encoding="utf-8") as f:
                for record in tqdm(records, desc="scoring (pass 1)", unit="turn", disable=not progress):
                    f.write(json.dumps(scorer.first_pass(record), allow_nan=False) + "\n")
            if scorer.records == 0:
                raise ValueError("no prediction records to score")
            writer = PredictionWriter(scored_path) if scored_path is not None else contextlib.nullcontext()
            bar = tqdm(total=scorer.records, desc="scoring (pass 2)", unit="turn", disable=not progress)
            with writer, bar:
                for chunk in _chunks(spill, config.meteor_chunk):
                    for record in scorer.second_pass(chunk):
                        if scored_path is not None:
                            writer.write(record)
                    bar.update(len(chunk))
    finally:
        if owned:
            meteor.close()
    return scorer.results()
