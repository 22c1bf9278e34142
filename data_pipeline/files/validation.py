"""Validation of CXRTrek JSON data: every problem, with sample index, study id and field.

`StudyValidator` checks raw elements one at a time (so it can stream a file
of any size and span several files) and accumulates the counts; `validate_file`
and `validate_elements` wrap it. Nothing stops at the first problem.

Errors:
  - structural problems (`cxrtrek_json.parse_element`): wrong JSON types,
    missing keys, a stage that is not an integer, ...;
  - empty study id, duplicate study id (names the earlier sample);
  - the number of `<image>` placeholders over all questions != number of images;
  - `image_input_count` that decreases, that differs from the number of
    placeholders up to and including its turn, or exceeds the image count;
  - stage outside 1..8; unknown qtype; empty question or answer;
  - malformed box markup (detection qtype, or any answer carrying markup);
  - relative and absolute image lists of different lengths;
  - a chat message whose role is not system/user/assistant;
  - with an image root: image files that do not resolve to an existing file.
Warnings:
  - a task type not listed for its stage in `STAGE_TASK_TYPES`;
  - a detection answer without any box; a study with no turns or no images;
  - `messages` that do not match the system prompt + question/answer turns.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any

from data_pipeline.schema.boxes import BoxParseError, has_box_markup, parse_boxes
from data_pipeline.files.cxrtrek_json import (
    CXRTrekFormatError,
    derive_messages,
    find_cxrtrek_data,
    iter_elements,
    parse_element,
    record_key,
)
from data_pipeline.schema.records import IMAGE_PLACEHOLDER, Study
from data_pipeline.schema.stages import STAGE_NUMBERS, is_known_task_type, parse_qtype

__all__ = ["Problem", "SampleCheck", "ValidationReport", "StudyValidator", "validate_elements", "validate_file"]

_ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of one sample.

    index: 0-based position of the sample in its file.
    study_id: the sample's study identity (`records.study_key`: "source/pat_id/study_id"),
        "" when it has no study id.
    field: dotted JSON path inside the element ("" = the element itself).
    """

    index: int
    study_id: str
    field: str
    message: str

    def __str__(self) -> str:
        study = f" (study {self.study_id})" if self.study_id else ""
        return f"sample {self.index}{study} {self.field or 'sample'}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SampleCheck:
    """The outcome for one element: its Study when structurally sound, and its problems."""

    study: Study | None
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return self.study is not None and not self.errors


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Counts and problems of a validated data set.

    per_stage / per_task_type / per_qtype: QA pairs per raw value (as a string,
        so an invalid stage like "abc" is counted, not dropped).
    images_per_study: number of images -> number of studies.
    """

    studies: int
    qa_pairs: int
    per_stage: Mapping[str, int]
    per_task_type: Mapping[str, int]
    per_qtype: Mapping[str, int]
    images_per_study: Mapping[int, int]
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "studies": self.studies,
            "qa_pairs": self.qa_pairs,
            "per_stage": dict(self.per_stage),
            "per_task_type": dict(self.per_task_type),
            "per_qtype": dict(self.per_qtype),
            "images_per_study": {str(k): v for k, v in self.images_per_study.items()},
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numeric_first(key: str) -> tuple[int, int, str]:
    """Sort key: integer strings by value, then everything else alphabetically."""
    digits = key.lstrip("-").isdigit()
    return (0 if digits else 1, int(key) if digits else 0, key)


def _stage_key(value: Any) -> str:
    return str(value) if _is_int(value) or isinstance(value, str) else repr(value)


class _Collector:
    """Problems of one sample."""

    def __init__(self, index: int, study_id: str):
        self.index, self.study_id = index, study_id
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, field: str, message: str) -> None:
        self.errors.append(Problem(self.index, self.study_id, field, message))

    def warn(self, field: str, message: str) -> None:
        self.warnings.append(Problem(self.index, self.study_id, field, message))


class StudyValidator:
    """Checks elements one at a time and accumulates counts and problems.

    image_root: when given, every relative image path must resolve (via
        `data_pipeline.files.image_paths.resolve_image_path`) to an existing file.
    Study identities (source, pat_id, study_id) are tracked across all `check` calls, so one
    validator spans several files when duplicates across them matter.
    """

    def __init__(self, image_root: str | os.PathLike | None = None):
        self._image_root = image_root
        self._first_seen: dict[str, tuple[str | None, int]] = {}  # study key -> (file, index)
        self._studies = 0
        self._qa_pairs = 0
        self._per_stage: collections.Counter[str] = collections.Counter()
        self._per_task_type: collections.Counter[str] = collections.Counter()
        self._per_qtype: collections.Counter[str] = collections.Counter()
        self._images_per_study: collections.Counter[int] = collections.Counter()
        self._errors: list[Problem] = []
        self._warnings: list[Problem] = []

    def check(self, element: Any, index: int, *, source: str | None = None) -> SampleCheck:
        """All problems of one raw element (any of the three forms).

        source: names the element's file in duplicate-id messages across files.
        """
        study, issues = parse_element(element)
        prefix, record = find_cxrtrek_data(element)
        out = _Collector(index, record_key(record) or "")
        for issue in issues:
            out.error(issue.field, issue.message)
        self._studies += 1
        if record is not None:
            absolute = element.get("image") if isinstance(element, Mapping) and "data_dict" in element else None
            self._check_record(record, prefix, out, source, absolute if isinstance(absolute, list) else None)
            if isinstance(element, Mapping) and "data_dict" in element:
                self._check_element_images(element, record, out)
        if study is not None and study.messages is not None:
            _check_messages(study, out)
        self._errors.extend(out.errors)
        self._warnings.extend(out.warnings)
        return SampleCheck(study, tuple(out.errors), tuple(out.warnings))

    def report(self) -> ValidationReport:
        return ValidationReport(
            studies=self._studies,
            qa_pairs=self._qa_pairs,
            per_stage=dict(sorted(self._per_stage.items(), key=lambda kv: _numeric_first(kv[0]))),
            per_task_type=dict(sorted(self._per_task_type.items())),
            per_qtype=dict(sorted(self._per_qtype.items())),
            images_per_study=dict(sorted(self._images_per_study.items())),
            errors=tuple(self._errors),
            warnings=tuple(self._warnings),
        )

    def add_file_error(self, index: int, message: str) -> None:
        """Records a problem of the file itself (e.g. broken JSON) found at sample `index`."""
        self._errors.append(Problem(index, "", "(file)", message))

    # ------------------------------------------------------------------ checks

    def _check_record(self, record: Mapping[str, Any], prefix: str, out: _Collector, source: str | None,
                      absolute: list[Any] | None = None) -> None:
        """absolute: the element's top-level image list; the study's images when its relative
        `cxrtrek_data.image` list is empty (`image_paths.choose_image_list`)."""
        study_id = record.get("study_id")
        if isinstance(study_id, str) and not study_id.strip():
            out.error(prefix + "study_id", "empty study id")
        elif out.study_id:
            first_source, first = self._first_seen.setdefault(out.study_id, (source, out.index))
            if (first_source, first) != (source, out.index):
                where = f"sample {first}" if first_source == source else f"{first_source} sample {first}"
                out.error(prefix + "study_id",
                          f"duplicate study {out.study_id!r} (source/pat_id/study_id; first seen at {where})")
        images = record.get("image")
        if isinstance(images, list) and not images and absolute:
            images = None  # read from the absolute list, placed under the image root when built
            n_images = len(absolute)
            self._images_per_study[n_images] += 1
        else:
            n_images = len(images) if isinstance(images, list) else None
        if images is not None and n_images is not None:
            self._images_per_study[n_images] += 1
            if n_images == 0:
                out.warn(prefix + "image", "study has no images")
            if self._image_root is not None:
                self._check_image_files(images, prefix + "image", out)
        content = record.get("content")
        if isinstance(content, list):
            if not content:
                out.warn(prefix + "content", "study has no question-answer turns")
            self._check_items(content, prefix + "content", n_images, out)

    def _check_items(self, content: list[Any], field: str, n_images: int | None, out: _Collector) -> None:
        placeholders = 0  # cumulative, while every question so far is a string
        placeholders_known = True
        previous: tuple[int, int] | None = None  # (index, image_input_count)
        for i, item in enumerate(content):
            if not isinstance(item, Mapping):
                continue  # reported as a structural problem
            self._count_item(item)
            where = f"{field}[{i}]"
            question = item.get("question")
            if isinstance(question, str):
                placeholders += question.count(IMAGE_PLACEHOLDER)
                if not question.strip():
                    out.error(where + ".question", "empty question")
            else:
                placeholders_known = False
            answer = item.get("answer")
            if isinstance(answer, str) and not answer.strip():
                out.error(where + ".answer", "empty answer")
            stage_ok = self._check_stage(item, where, out)
            qtype = item.get("qtype")
            if isinstance(qtype, str):
                try:
                    parse_qtype(qtype)
                except ValueError as e:
                    out.error(where + ".qtype", str(e))
            task_type = item.get("task_type")
            if stage_ok and isinstance(task_type, str) and not is_known_task_type(item["stage"], task_type):
                out.warn(where + ".task_type", f"task type {task_type!r} is not listed for stage {item['stage']}")
            if isinstance(answer, str):
                _check_boxes(answer, qtype, where + ".answer", out)
            count = item.get("image_input_count")
            if _is_int(count):
                if previous is not None and count < previous[1]:
                    out.error(
                        where + ".image_input_count",
                        f"decreases to {count} from {previous[1]} at turn {previous[0]}; it must never decrease",
                    )
                if placeholders_known and count != placeholders:
                    out.error(
                        where + ".image_input_count",
                        f"is {count} but the questions up to this turn introduce {placeholders} image(s)",
                    )
                if n_images is not None and count > n_images:
                    out.error(where + ".image_input_count", f"is {count}, more than the study's {n_images} image(s)")
                previous = (i, count)
        if placeholders_known and n_images is not None and placeholders != n_images:
            out.error(
                field,
                f"the questions hold {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but the study has {n_images} image(s)",
            )

    def _count_item(self, item: Mapping[str, Any]) -> None:
        self._qa_pairs += 1
        self._per_stage[_stage_key(item.get("stage"))] += 1
        self._per_task_type[str(item.get("task_type"))] += 1
        self._per_qtype[str(item.get("qtype"))] += 1

    @staticmethod
    def _check_stage(item: Mapping[str, Any], where: str, out: _Collector) -> bool:
        stage = item.get("stage")
        if not _is_int(stage):
            return False  # reported as a structural problem
        if stage not in STAGE_NUMBERS:
            out.error(where + ".stage", f"stage must be in {STAGE_NUMBERS[0]}..{STAGE_NUMBERS[-1]}, got {stage}")
            return False
        return True

    def _check_image_files(self, images: list[Any], field: str, out: _Collector) -> None:
        from data_pipeline.files.image_paths import ImagePathError, resolve_image_path

        for k, path in enumerate(images):
            if not isinstance(path, str):
                continue  # reported as a structural problem
            try:
                resolve_image_path(path, self._image_root, require_exists=True)
            except ImagePathError as e:
                out.error(f"{field}[{k}]", str(e))

    @staticmethod
    def _check_element_images(element: Mapping[str, Any], record: Mapping[str, Any], out: _Collector) -> None:
        absolute, relative = element.get("image"), record.get("image")
        if isinstance(absolute, list) and isinstance(relative, list) and relative and len(absolute) != len(relative):
            out.error(
                "image",
                f"{len(absolute)} absolute image path(s) but {len(relative)} relative ones in cxrtrek_data.image",
            )


def _check_boxes(answer: str, qtype: Any, field: str, out: _Collector) -> None:
    if qtype != "detection" and not has_box_markup(answer):
        return
    try:
        boxes = parse_boxes(answer)
    except BoxParseError as e:
        out.error(field, f"malformed box: {e}")
        return
    if qtype == "detection" and not boxes:
        out.warn(field, "detection answer carries no <|box|>")


def _check_messages(study: Study, out: _Collector) -> None:
    messages = study.messages or ()
    for k, message in enumerate(messages):
        if message.role not in _ROLES:
            out.error(f"messages[{k}].role", f"role {message.role!r} is not one of {', '.join(_ROLES)}")
    system = messages[0].content if messages and messages[0].role == "system" else None
    expected = derive_messages(study.items, system)
    actual = [(m.role, m.content) for m in messages]
    wanted = [(m.role, m.content) for m in expected]
    if actual == wanted:
        return
    differing = [k for k in range(min(len(actual), len(wanted))) if actual[k] != wanted[k]]
    if differing:
        first = differing[0]
        detail = f"messages[{first}] differs from the turn it should repeat ({len(differing)} message(s) differ)"
    else:
        detail = f"{len(actual)} messages but the turns give {len(wanted)}"
    out.warn("messages", f"messages do not repeat the content turns: {detail}")


def validate_elements(elements: Iterable[Any], *, image_root: str | os.PathLike | None = None) -> ValidationReport:
    """Validates raw elements (index = position in the iterable)."""
    validator = StudyValidator(image_root)
    for index, element in enumerate(elements):
        validator.check(element, index)
    return validator.report()


def validate_file(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> ValidationReport:
    """Validates a CXRTrek JSON file, streamed.

    A file that is not a JSON list (or breaks off) is reported as a "(file)"
    error at the sample index where reading stopped; the samples before it are
    still validated. OSError when the file cannot be opened.
    """
    validator = StudyValidator(image_root)
    index = 0
    try:
        for element in iter_elements(path):
            validator.check(element, index)
            index += 1
    except CXRTrekFormatError as e:
        validator.add_file_error(index, str(e))
    return validator.report()
