"""What the stage generators read for one study: its timeline entry, the facts of its report (and of
its prior's and next study's reports) and the boxes drawn on its images."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

from data_pipeline.construct.report_facts import ReportFacts
from data_pipeline.construct.source_study import SourceImage, TimelineStudy
from data_pipeline.construct.stage_questions import Wording, wording_for
from data_pipeline.schema.boxes import Box
from data_pipeline.schema.records import study_key

__all__ = ["StageInput"]


@dataclasses.dataclass(frozen=True)
class StageInput:
    """One study's input to the eight stage generators.

    timeline: the study, its prior and its next study (the source's records).
    facts: what the study's report says; prior_facts / next_facts: the prior's and the next
        study's reports, None when there is no such study.
    boxes: image path (as in `SourceImage.path`) -> labelled boxes on that image, on the 0-100
        scale (`Box.label` is the class name as annotated); only images of this study count.
    seed: the wording seed; with the study's identity it seeds every choice of wording (the same
        input and seed give the same items, byte for byte).
    """

    timeline: TimelineStudy
    facts: ReportFacts
    prior_facts: ReportFacts | None = None
    next_facts: ReportFacts | None = None
    boxes: Mapping[str, tuple[Box, ...]] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    seed: int = 0

    def __post_init__(self) -> None:
        for name, study, facts in (("prior", self.timeline.prior, self.prior_facts),
                                   ("next", self.timeline.next, self.next_facts)):
            if (study is None) != (facts is None):
                raise ValueError(f"study {self.key!r}: the {name} study and its report facts go together "
                                 f"(study {'absent' if study is None else 'given'}, facts "
                                 f"{'absent' if facts is None else 'given'})")
        unknown = sorted(set(self.boxes) - {image.path for image in self.images})
        if unknown:
            raise ValueError(f"study {self.key!r}: boxes for image(s) not in the study: {', '.join(unknown)}")

    @property
    def key(self) -> str:
        """The study's identity, "source/patient_id/study_id"."""
        study = self.timeline.study
        return study_key(study.source, study.patient_id, study.study_id)

    @property
    def images(self) -> tuple[SourceImage, ...]:
        return self.timeline.study.images

    def wording(self, stage: int) -> Wording:
        """The seeded wording of `stage` for this study (same study, same words)."""
        return wording_for(self.key, stage, self.seed)
