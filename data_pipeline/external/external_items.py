"""What an external evaluation set is once read: items to ask, and what was left out and why.

An `ExternalItem` is one question with its reference; items of one `group` (a study or an image)
share their images and are resampled together by the bootstrap. Readers raise `SourceError`
(file, row, field, reason) for a malformed row and count every row they leave out on purpose
(not a chest image, an uncertain label, no findings text, ...) in `ExternalSet.skipped`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from data_pipeline.construct.box_annotations import PixelBox

__all__ = ["TASKS", "REPORT", "PRESENCE", "DETECTION", "VQA", "ExternalItem", "ExternalSet"]

REPORT, PRESENCE, DETECTION, VQA = "report", "presence", "detection", "vqa"
TASKS = (REPORT, PRESENCE, DETECTION, VQA)


@dataclasses.dataclass(frozen=True)
class ExternalItem:
    """One question of an external set.

    item_id: unique in the set; group: the study or image it belongs to (items of a group share
    `images`); images: absolute paths, frontal view first; question: the set's own question (VQA),
    "" when the task's question is the model's (report, presence, detection); reference: the
    reference answer (report text, VQA answer, "Yes"/"No" for presence, "" for detection);
    answer_type: VQA "closed" / "open", else ""; label: the observation (presence) or finding
    class (detection); boxes: the reference boxes of a detection item, in pixels of its image.
    """

    item_id: str
    group: str
    images: tuple[str, ...]
    reference: str
    question: str = ""
    answer_type: str = ""
    label: str = ""
    boxes: tuple[PixelBox, ...] = ()


@dataclasses.dataclass(frozen=True)
class ExternalSet:
    """A read set: its name, task (`TASKS`), the split read and how it is fixed, its items in
    order, the source rows used and the rows left out by reason, where it was read from, and the
    messages of the first rows a shared reader refused (`refused`, said on the console)."""

    name: str
    task: str
    split: str
    items: tuple[ExternalItem, ...]
    used: int
    skipped: Counter
    source: str
    refused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")

    def counts_line(self) -> str:
        """"name: N items from U rows used; S skipped (reason: n, ...)" for the console."""
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
        line = f"{self.name} ({self.split}): {len(self.items)} items from {self.used} rows used; {skipped} skipped"
        line += f" ({reasons})" if reasons else ""
        return "\n".join([line, *(f"  refused: {message}" for message in self.refused)])
