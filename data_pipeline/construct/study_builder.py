"""One timeline entry -> one released-format study: its reports read, its stages made and assembled.

`StudyBuilder` is the picklable step `construct` maps over the timeline, in worker processes when
asked: each process reads the box CSV once, keeps the report reader's rules loaded and, with an
LLM (`llm`), loads it once and rewrites the study's wording (`llm_polish`: every rewrite checked
against the three reports' facts, the rule text kept where it fails; `polish_flag` says which).
"""

from __future__ import annotations

import dataclasses
import functools

from data_pipeline.construct.box_annotations import PixelBox, read_box_annotations
from data_pipeline.construct.llm_polish import Rewriter, hf_rewriter, polish_study
from data_pipeline.construct.report_reader import read_report
from data_pipeline.construct.source_study import TimelineStudy
from data_pipeline.construct.study_assembly import ConstructError, assemble_study, stage_input_for
from data_pipeline.files.cxrtrek_json import add_released_fields, element_text
from data_pipeline.schema.records import Study

__all__ = ["BuiltStudy", "StudyBuilder", "StudyCounts"]


@dataclasses.dataclass(frozen=True)
class StudyCounts:
    """What the construction summary counts of one study: its items' stages and qtypes, the findings
    its stage-2 yes/no items answer present (by `target`), and whether it has a prior / next study."""

    stages: tuple[int, ...]
    qtypes: tuple[str, ...]
    present: frozenset[str]
    has_prior: bool
    has_next: bool

    @classmethod
    def of(cls, study: Study) -> StudyCounts:
        present = set()
        for item in study.items:
            target = str(item.extras.get("target", ""))
            if item.stage == 2 and item.qtype == "yes_no" and "_[" in target and item.answer.startswith("Yes"):
                present.add(target.split("_[", 1)[1].rstrip("]"))
        return cls(tuple(i.stage for i in study.items), tuple(i.qtype for i in study.items), frozenset(present),
                   bool(study.ref_study_id), bool(study.pos_study_id))


@dataclasses.dataclass(frozen=True)
class BuiltStudy:
    """One timeline entry's study as the JSON text of its released-format element (`text`, "" when
    none could be made, then `error` says why), its counts, and what its stages left out (one line
    each). The text is made where the study is (a worker process): only a string travels back."""

    text: str = ""
    counts: StudyCounts | None = None
    skipped: tuple[str, ...] = ()
    error: str = ""
    origin: str = ""


# A study's report is read as its own, as the prior of its next study and as the next study of its
# prior; the timeline yields a patient's studies one after another, so a few recent reports suffice.
_read_report_cached = functools.lru_cache(maxsize=16)(read_report)


class StudyBuilder:
    """timeline entry -> `BuiltStudy`; `boxes` (a VinDr-CXR-style CSV) read lazily, once per process.

    image_root: the folder the entries' image paths are relative to (box scaling reads image sizes
        there); seed: the wording seed; llm: a local Hugging Face causal LM directory, or None.
    """

    def __init__(self, image_root: str, boxes: str | None = None, seed: int = 0, llm: str | None = None):
        self.image_root, self.boxes_path, self.seed, self.llm = image_root, boxes, seed, llm
        self._boxes: dict[str, tuple[PixelBox, ...]] | None = None
        self._rewriter: Rewriter | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_boxes": None, "_rewriter": None}

    def _polished(self, study: Study, facts: list) -> Study:
        if self.llm is None:
            return study
        if self._rewriter is None:
            self._rewriter = hf_rewriter(self.llm)
        return polish_study(study, facts, self._rewriter)

    def _pixel_boxes(self) -> dict[str, tuple[PixelBox, ...]]:
        if self._boxes is None:
            self._boxes = read_box_annotations(self.boxes_path) if self.boxes_path else {}
        return self._boxes

    def __call__(self, timeline: TimelineStudy) -> BuiltStudy:
        origin = timeline.study.origin or f"{timeline.study.patient_id}/{timeline.study.study_id}"
        data = stage_input_for(timeline, _read_report_cached, self._pixel_boxes(), self.image_root, self.seed)
        try:
            built = assemble_study(data)
        except ConstructError as e:
            return BuiltStudy(error=str(e), origin=origin)
        facts = [f for f in (data.facts, data.prior_facts, data.next_facts) if f is not None]
        study = add_released_fields(self._polished(built.study, facts), self.image_root)
        return BuiltStudy(element_text(study, "released"), StudyCounts.of(study), built.skipped, origin=origin)
