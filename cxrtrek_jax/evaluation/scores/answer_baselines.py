"""Blind answer baselines: what a model that never looks at the images would score.

`MajorityAnswerBaseline.fit(train_studies)` learns, from the references of a
training split alone, the answer most often right for each question group (for detection, the
box answer closest on average). The
evaluation fits it on `EvalData(data, split=...).records()`: the same data
arguments as the model's evaluation and the one split rule
(`data_pipeline.files.split_rule`), so a JSON file and the TFDS dir built from it
give the baseline the same training studies:

* yes/no questions without listed options: "Yes." or "No.", whichever the
  references of the group say more often;
* questions that list options (single- and multi-choice, yes/no with listed
  options): per option *text*, how often it is right when it is offered. A
  single-choice question gets its offered option most often right; a
  multi-choice question every offered option right more often than not (or,
  when none is, the one most often right). Shuffled or re-lettered options
  therefore do not hide the majority answer;
* other open-ended questions (captions): the group's most frequent reference;
* detection questions (qtype "detection"): the group's best constant box answer: among the first
  `box_sample` training references of the group, the one with the highest mean IoU
  (`detection_metrics.score_detection`'s `mean_iou`, each of those references in turn the truth)
  against them, a medoid (`best_constant_box`). The most frequent reference text is no constant box
  worth the name: box answers rarely repeat exactly, so it is one of many one-off answers (fitted
  on the first 2,400 of the demo phantom's 3,000 studies, scored on its last 300, 433 detection
  turns: mean IoU 0.019 with it, 0.371 with the medoid per question wording). `box_sample` 150, the
  default: there the medoid of the first 25 / 50 / 100 / 150 / 300 references per wording scores
  0.332 / 0.334 / 0.346 / 0.371 / 0.371, and finding it costs `box_sample`**2 box matchings per
  group used (about 0.3 s per group at 150 on one core, once per group);
* stage-8 reports: a constant normal report (`NORMAL_FINDINGS`,
  `NORMAL_IMPRESSION`), the classic "normal report" baseline of report
  generation, whatever the training references say.

Groups go from coarse to fine: (stage, qtype), (stage, task type, qtype), the exact question (its
lower-cased words without image placeholders and option texts; used once seen at least `min_count`
times in training; captions use the two coarser groups only, detection questions all three, the
finest group with a sample answering). For closed questions, each finer group's rates (how often an
answer is right when it can be given) are smoothed toward its coarser group's: `prior_strength` pseudo-turns at the coarser rates are added to
the finer group's counts. A handful of sightings of one wording is noise, and a baseline that follows
it falls below a constant answer (the demo's view questions: 0.42 per wording, unsmoothed, against
0.54 for "AP" every time); with the smoothing a wording's own majority is used only when its turns
outweigh the pseudo-turns. The strength, 50, was chosen on the demo phantom's validation split (300
studies, 2,228 closed single-answer turns, fitted on its 2,400 training studies): accuracy 0.575
unsmoothed, 0.585 at 20, 0.589 at 50, 0.588 at 100, 0.566 with the (stage, task type, qtype)
majorities alone; view questions 0.532 / 0.556 / 0.599 / 0.584 / 0.596. As a consequence, on its training turns the baseline is never below the
best constant answer of a group it refines: where a finer group's answer differs from the coarser
one's, it was right more often on that group's turns (tested). Counting is bounded (`max_keys` per
table, least frequent entries evicted first; the detection samples at most `max_keys` references in
all, the least seen groups evicted first), so fitting on the full CXRTrek training split (~11M
turns) keeps a few MB; below the bound the counts are exact.

`baseline_records(model_records, baseline)` answers the very turns a model
was evaluated on (each (study, turn) once, context "none"), so the two score
on identical questions with the same scorer.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any

from cxrtrek_jax.evaluation.metrics.answer_parsing import ChoiceOption, parse_closed_answer, parse_options
from cxrtrek_jax.evaluation.metrics.detection_metrics import DetectionScore, match_boxes
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from data_pipeline.schema.boxes import Box, BoxParseError, parse_boxes
from data_pipeline.schema.records import IMAGE_PLACEHOLDER, Study
from data_pipeline.schema.stages import Stage, parse_qtype

__all__ = [
    "BASELINE_NAME",
    "NORMAL_FINDINGS",
    "NORMAL_IMPRESSION",
    "normal_report",
    "best_constant_box",
    "MajorityAnswerBaseline",
    "baseline_records",
    "write_baseline_predictions",
    "score_baseline",
]

# The key of this baseline under a metrics dictionary's "baselines".
BASELINE_NAME = "majority"
NORMAL_FINDINGS = (
    "The lungs are clear. There is no pleural effusion or pneumothorax. "
    "The heart size is normal. No acute osseous abnormality."
)
NORMAL_IMPRESSION = "No acute cardiopulmonary process."
_REPORT_STAGE = int(Stage.REPORT)
_WORD = re.compile(r"[a-z0-9]+")


def normal_report(task_type: str) -> str:
    """The constant normal report for a stage-8 task type: findings only
    ("...[Findings]"), impression only ("...[Impression]") or both sections."""
    if task_type.endswith("[Findings]"):
        return NORMAL_FINDINGS
    if task_type.endswith("[Impression]"):
        return NORMAL_IMPRESSION
    return f"FINDINGS: {NORMAL_FINDINGS} IMPRESSION: {NORMAL_IMPRESSION}"


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def _question_key(question: str, options: tuple[ChoiceOption, ...]) -> tuple[str, ...]:
    """The question's lower-cased words, without image placeholders, option keys and option words."""
    option_words = {w for o in options for w in _words(o.text)} | {o.key.lower() for o in options if o.key}
    text = question.replace(IMAGE_PLACEHOLDER, " ")
    return tuple(w for w in _words(text) if w not in option_words)


class _BoundedCounts:
    """key -> Counter of values, at most `max_keys` keys and `max_keys` values per key.

    Over the bound, the least frequent half is evicted (so rare keys and values
    may be forgotten; frequent ones are kept with exact counts while below the
    bound, and their ranking is what the baseline needs)."""

    def __init__(self, max_keys: int):
        self.max_keys = max_keys
        self.tables: dict[Hashable, Counter] = {}
        self.totals: Counter = Counter()

    def add(self, key: Hashable, values: Iterable[Hashable]) -> None:
        table = self.tables.setdefault(key, Counter())
        table.update(values)
        self.totals[key] += 1
        if len(table) > self.max_keys:
            self.tables[key] = Counter(dict(table.most_common(self.max_keys // 2)))
        if len(self.tables) > self.max_keys:
            for stale, _ in self.totals.most_common()[self.max_keys // 2:]:
                del self.tables[stale], self.totals[stale]

    def get(self, key: Hashable, min_count: int = 1) -> tuple[Counter, int] | None:
        """(value counts, times the key was seen), or None when seen fewer than `min_count` times."""
        if self.totals.get(key, 0) < max(min_count, 1):
            return None
        return self.tables[key], self.totals[key]


class _BoundedSamples:
    """key -> the first `per_key` values seen, at most `max_values` values in all.

    Over the bound, the least seen keys (ties: the last added) are evicted until at most half of
    `max_values` values remain; keys seen often keep their samples."""

    def __init__(self, max_values: int, per_key: int):
        self.max_values, self.per_key = max_values, per_key
        self.samples: dict[Hashable, list] = {}
        self.totals: Counter = Counter()
        self.stored = 0

    def add(self, key: Hashable, value: Hashable) -> None:
        sample = self.samples.setdefault(key, [])
        self.totals[key] += 1
        if len(sample) < self.per_key:
            sample.append(value)
            self.stored += 1
        if self.stored > self.max_values:
            for stale, _ in reversed(self.totals.most_common()):
                if self.stored <= self.max_values // 2:
                    break
                self.stored -= len(self.samples.pop(stale))
                del self.totals[stale]

    def get(self, key: Hashable, min_count: int = 1) -> list | None:
        """The key's sample, or None when the key was seen fewer than `min_count` times."""
        if self.totals.get(key, 0) < max(min_count, 1):
            return None
        return self.samples[key]


def _mean_iou(reference: tuple[Box, ...], candidate: tuple[Box, ...]) -> float:
    """`score_detection(reference, candidate).mean_iou` of parsed answers."""
    return DetectionScore(pairs=match_boxes(reference, candidate), hits=0, unparseable=not candidate).mean_iou


def best_constant_box(references: list[str]) -> str:
    """The reference whose mean IoU against all of `references` (each in turn the truth, itself
    included) is highest; ties go to the first. Every reference must parse with a box. O(n**2)."""
    boxes = [parse_boxes(r) for r in references]
    scores = [sum(_mean_iou(truth, candidate) for truth in boxes) for candidate in boxes]
    return references[max(range(len(references)), key=lambda i: (scores[i], -i))]


def _has_box(reference: str) -> bool:
    try:
        return bool(parse_boxes(reference))
    except BoxParseError:
        return False


def _majority(counts: Counter) -> Hashable:
    """Most frequent value; ties go to the smallest value (stable across runs)."""
    best = max(counts.values())
    return min((v for v, c in counts.items() if c == best), key=repr)


@dataclasses.dataclass
class MajorityAnswerBaseline:
    """Majority answers per question group, fitted on training references (see the module docstring).

    min_count: fits of an exact question needed before its own counts are used.
    prior_strength: pseudo-turns of the coarser group's rates added to a finer group's counts.
    max_keys: bound of every count table (see `_BoundedCounts`) and of the detection references
        kept in all (`_BoundedSamples`).
    box_sample: training references kept per detection group (the first seen; at most `max_keys`):
        the candidates and the truths of its best constant box (module docstring).
    """

    min_count: int = 5
    prior_strength: float = 50.0
    max_keys: int = 20_000
    box_sample: int = 150
    studies_seen: int = 0
    turns_seen: int = 0
    turns_unusable: int = 0

    def __post_init__(self) -> None:
        if self.min_count < 1 or self.max_keys < 2 or self.prior_strength < 0 or self.box_sample < 1:
            raise ValueError(f"min_count must be >= 1, max_keys >= 2, prior_strength >= 0 and box_sample >= 1, "
                             f"got {self.min_count}, {self.max_keys}, {self.prior_strength}, {self.box_sample}")
        self._closed = _BoundedCounts(self.max_keys)  # group -> counts of "yes"/"no" or option texts offered/right
        self._offered = _BoundedCounts(self.max_keys)
        self._open = _BoundedCounts(self.max_keys)  # group -> counts of reference texts
        self._boxes = _BoundedSamples(self.max_keys, min(self.box_sample, self.max_keys))  # group -> first boxes
        self._constant_boxes: dict[Hashable, str] = {}  # group -> its best constant box, once asked

    # -- fitting -------------------------------------------------------------------------------

    @classmethod
    def fit(cls, studies: Iterable[Study], **kwargs) -> MajorityAnswerBaseline:
        """Count the references of `studies` (a training split). Raises ValueError when none has a turn."""
        baseline = cls(**kwargs)
        for study in studies:
            baseline.studies_seen += 1
            for item in study.items:
                baseline.add(item.stage, item.task_type, item.qtype, item.question, item.answer)
        if baseline.turns_seen == 0:
            raise ValueError("majority baseline: the training studies hold no question to learn from")
        return baseline

    def _groups(self, stage: int, task_type: str, qtype: str, key: tuple[str, ...]) -> list[tuple]:
        return [("question", stage, task_type, qtype, key), ("task", stage, task_type, qtype), ("stage", stage, qtype)]

    def add(self, stage: int, task_type: str, qtype: str, question: str, reference: str) -> None:
        """Count one training turn (its reference is the right answer; a detection reference
        without a readable box is counted in `turns_unusable`)."""
        self.turns_seen += 1
        kind = parse_qtype(qtype)
        if kind.kind == "detection" and stage != _REPORT_STAGE:
            if not _has_box(reference):
                self.turns_unusable += 1
                return
            self._constant_boxes.clear()
            for group in self._groups(stage, task_type, qtype, _question_key(question, ())):
                self._boxes.add(group, reference.strip())
            return
        if not kind.is_closed:
            if stage != _REPORT_STAGE:
                for group in self._groups(stage, task_type, qtype, ())[1:]:
                    self._open.add(group, [reference.strip()])
            return
        options = parse_options(question)
        parsed = parse_closed_answer(reference, question, kind)
        values = _right_values(parsed.value, options)
        if values is None:
            self.turns_unusable += 1
            return
        offered = [_words(o.text) for o in options]
        for group in self._groups(stage, task_type, qtype, _question_key(question, options)):
            self._closed.add(group, values)
            if options:
                self._offered.add(group, offered)

    # -- answering -----------------------------------------------------------------------------

    def answer(self, stage: int, task_type: str, qtype: str, question: str) -> str:
        """The baseline's answer to a question ("" when the groups never saw its kind)."""
        kind = parse_qtype(qtype)
        if stage == _REPORT_STAGE and not kind.is_closed:
            return normal_report(task_type)
        if kind.kind == "detection":
            return self._constant_box(self._groups(stage, task_type, qtype, _question_key(question, ())))
        if not kind.is_closed:
            for group in self._groups(stage, task_type, qtype, ())[1:]:
                found = self._open.get(group)
                if found:
                    return str(_majority(found[0]))
            return ""
        options = parse_options(question)
        groups = self._groups(stage, task_type, qtype, _question_key(question, options))
        values = _answer_values(options)
        rates: dict | None = None
        for level, group in reversed(list(enumerate(groups))):  # coarse to fine
            found = self._closed.get(group, self.min_count if level == 0 else 1)
            if found is not None:
                own = _group_rates(found, self._offered.get(group), values)
                rates = own if rates is None else _smoothed(own, rates, self.prior_strength)
        if rates is None or not any(right for right, _ in rates.values()):
            return ""
        return _render(options, _choose(rates, options, multi=kind.kind == "multi-choice"))

    def _constant_box(self, groups: list[tuple]) -> str:
        """The best constant box of the finest group with a sample (the exact question once seen
        `min_count` times); "" when none was seen."""
        for level, group in enumerate(groups):
            sample = self._boxes.get(group, self.min_count if level == 0 else 1)
            if sample:
                if group not in self._constant_boxes:
                    self._constant_boxes[group] = best_constant_box(sample)
                return self._constant_boxes[group]
        return ""


def _right_values(value: frozenset[str] | None, options: tuple[ChoiceOption, ...]) -> list | None:
    """The right answer as countable values: ["yes"]/["no"], or the words of each right option."""
    if value is None:
        return None
    if not options:
        return sorted(value) if value <= {"yes", "no"} else None
    indices = [int(v.split(":", 1)[1]) for v in value if v.startswith("opt:")]
    if len(indices) != len(value):
        return None
    return [_words(options[i].text) for i in sorted(indices)]


def _answer_values(options: tuple[ChoiceOption, ...]) -> list:
    """The countable values a reply can take: "yes"/"no", or each option's words."""
    return ["yes", "no"] if not options else [_words(o.text) for o in options]


def _group_rates(found: tuple[Counter, int], offered: tuple[Counter, int] | None, values: list
                 ) -> dict[Hashable, tuple[float, float]]:
    """value -> (times right, times it could be given) in one group: every turn for yes/no, the
    turns that offered the option for option texts."""
    right, turns = found
    offered_counts = offered[0] if offered else None
    return {v: (float(right.get(v, 0)), float(turns if offered_counts is None else offered_counts.get(v, 0)))
            for v in values}


def _smoothed(own: dict, coarser: dict, strength: float) -> dict:
    """`own` counts plus `strength` pseudo-turns at the coarser group's rates (module docstring)."""
    out = {}
    for value, (right, possible) in own.items():
        c_right, c_possible = coarser[value]
        prior = c_right / c_possible if c_possible else 0.0
        out[value] = (right + strength * prior, possible + strength)
    return out


def _choose(rates: dict, options: tuple[ChoiceOption, ...], multi: bool) -> list:
    """The reply from smoothed rates: ["yes"]/["no"] without options (a tie is "no"), else the
    option indices: the best rate (ties: more often right, then listed first), or for multi-choice
    every option right more often than not (else the best)."""
    def rate(value):
        right, possible = rates[value]
        return right / possible if possible else 0.0

    if not options:
        return ["yes"] if rate("yes") > rate("no") else ["no"]
    values = _answer_values(options)
    ranked = [(rate(v), rates[v][0], -i) for i, v in enumerate(values)]
    if multi:
        chosen = [i for i, r in enumerate(ranked) if r[0] > 0.5]
        if chosen:
            return chosen
    return [max(range(len(options)), key=lambda i: ranked[i])]


def _render(options: tuple[ChoiceOption, ...], chosen: list) -> str:
    """The reply text: "Yes."/"No.", or the chosen options with their keys."""
    if not options:
        return "Yes." if chosen == ["yes"] else "No."
    return ", ".join(f"{o.key}. {o.text}" if o.key else o.text for o in (options[i] for i in chosen))


def baseline_records(records: Iterable[PredictionRecord], baseline: MajorityAnswerBaseline
                     ) -> Iterator[PredictionRecord]:
    """The baseline's record for every distinct (study, turn) in `records` (first occurrence,
    any context), with context "none": the baseline sees neither images nor earlier turns."""
    seen: set[tuple[str, int]] = set()
    for record in records:
        key = (record.study_id, record.turn_index)
        if key in seen:
            continue
        seen.add(key)
        yield dataclasses.replace(
            record, context="none", scores={}, num_generated_tokens=None, latency_s=None, stop_reason=None,
            prediction=baseline.answer(record.stage, record.task_type, record.qtype, record.question))


def write_baseline_predictions(baseline: MajorityAnswerBaseline, model_predictions: str | Path,
                               out: str | Path) -> dict[str, Any]:
    """The baseline's answers to the turns of a model's predictions file -> `out` (JSONL);
    returns what the baseline was fitted on."""
    from cxrtrek_jax.evaluation.scores.predictions import PredictionWriter, read_predictions

    with PredictionWriter(out) as writer:
        for record in baseline_records(read_predictions(model_predictions), baseline):
            writer.write(record)
    return {"split_studies": baseline.studies_seen, "turns": baseline.turns_seen,
            "turns_unusable": baseline.turns_unusable, "min_count": baseline.min_count}


def score_baseline(predictions: str | Path, config) -> dict[str, Any]:
    """A baseline predictions file scored like a model (`scoring.score_predictions` with
    `config`): its single context section, plus the constant normal report it used."""
    from cxrtrek_jax.evaluation.scores.predictions import read_predictions
    from cxrtrek_jax.evaluation.scores.scoring import score_predictions

    scored = score_predictions(read_predictions(predictions), config)
    (section,) = scored["contexts"].values()
    return {**section, "normal_report": {"findings": NORMAL_FINDINGS, "impression": NORMAL_IMPRESSION}}
