"""A study's eight stages assembled into one released-format CXRTrek `Study`.

    timeline entry + report facts (its own, its prior's, its next study's) + boxes
        -> stage 1..8 items, in stage order
        -> images introduced: the current study's views (`<image>` per view) in the first
           question, the prior study's views in the first stage-5 question ("Reference X-ray:
           <image> ."); `image_input_count` counts the images shown so far
        -> Study(pat_id/study_id: the source's own ids, source: the source's name,
           ref_study_id/pos_study_id: the prior's and next study's ids, images: current views then
           the prior's, messages derived from the turns, split kept in `cxrtrek_data.split`).

`data_pipeline.files.validation` accepts the result with zero errors. Same input, same bytes:
every choice of wording is seeded by the study's identity.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

from data_pipeline.construct.box_annotations import PixelBox
from data_pipeline.construct.report_facts import ReportFacts
from data_pipeline.construct.source_study import TimelineStudy
from data_pipeline.construct.stage1_quality_view import stage1_items
from data_pipeline.construct.stage2_findings import stage2_items
from data_pipeline.construct.stage3_attributes import boxes_on_scale, stage3_items
from data_pipeline.construct.stage4_relationships import stage4_items
from data_pipeline.construct.stage5_comparison import stage5_items
from data_pipeline.construct.stage6_future_trend import stage6_items
from data_pipeline.construct.stage7_advice import stage7_items
from data_pipeline.construct.stage8_report import stage8_items
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.stage_items import StageResult
from data_pipeline.construct.stage_questions import (
    CURRENT_INTRODUCTIONS, PRIOR_INTRODUCTIONS, introduce_images, wording_for,
)
from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT, derive_abs_images, derive_messages
from data_pipeline.files.images import load_image
from data_pipeline.schema.records import QAItem, Study, freeze

__all__ = ["STAGE_GENERATORS", "ConstructedStudy", "ConstructError", "stage_input_for", "assemble_study"]

# The eight generators, in stage order: StageInput -> StageResult.
STAGE_GENERATORS = (stage1_items, stage2_items, stage3_items, stage4_items, stage5_items, stage6_items,
                    stage7_items, stage8_items)
# The wording stream that places the image introductions (stages use 1..8).
_INTRODUCTION_STREAM = 0


class ConstructError(ValueError):
    """A study no item could be made from; the message names the study and why."""


@dataclasses.dataclass(frozen=True)
class ConstructedStudy:
    """The assembled study and what its stages left out and why (one line each)."""

    study: Study
    skipped: tuple[str, ...] = ()


def stage_input_for(timeline: TimelineStudy, read: Callable[[str], ReportFacts],
                    pixel_boxes: Mapping[str, tuple[PixelBox, ...]] | None = None,
                    image_root: str | os.PathLike | None = None, seed: int = 0) -> StageInput:
    """The `StageInput` of a timeline entry: its reports read with `read` (`read_report`), and the
    boxes of its images (by `SourceImage.image_id`) put on the 0-100 scale with each image's size,
    read from `image_root` (needed only when some image has boxes); `seed` the wording seed."""
    boxes = {}
    for image in timeline.study.images:
        found = (pixel_boxes or {}).get(image.image_id, ()) if image.image_id else ()
        if not found:
            continue
        if image_root is None:
            raise ConstructError(f"{timeline.study.origin or timeline.study.study_id}: image {image.path} has boxes; "
                                 "its size is read from the image, so an image root is needed")
        height, width = load_image(os.path.join(os.fspath(image_root), image.path)).shape[:2]
        boxes[image.path] = boxes_on_scale(image.path, found, width, height)
    return StageInput(
        timeline=timeline,
        facts=read(timeline.study.report),
        prior_facts=read(timeline.prior.report) if timeline.prior is not None else None,
        next_facts=read(timeline.next.report) if timeline.next is not None else None,
        boxes=boxes,
        seed=seed,
    )


def _with_images(data: StageInput, items: list[QAItem]) -> tuple[QAItem, ...]:
    """Items with the current views introduced in the first question and the prior's views in the
    first stage-5 question; `image_input_count` cumulative."""
    wording = wording_for(data.key, _INTRODUCTION_STREAM, data.seed)
    current = len(data.images)
    prior = len(data.timeline.prior.images) if data.timeline.prior is not None else 0
    first_comparison = next((k for k, item in enumerate(items) if item.stage == 5), None)
    if prior and first_comparison is None:
        raise ConstructError(f"study {data.key!r}: it has a prior study but no stage-5 question to show its images")
    shown, out = 0, []
    for k, item in enumerate(items):
        question = item.question
        if k == 0 and current:
            question, shown = introduce_images(wording, question, current, CURRENT_INTRODUCTIONS), shown + current
        if k == first_comparison and prior:
            question, shown = introduce_images(wording, question, prior, PRIOR_INTRODUCTIONS), shown + prior
        out.append(dataclasses.replace(item, question=question, image_input_count=shown))
    return tuple(out)


def assemble_study(data: StageInput, *, image_root: str | os.PathLike | None = None,
                   system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> ConstructedStudy:
    """The released-format study of `data` (messages derived; absolute image paths too when
    `image_root` is given). ConstructError when no stage yields an item."""
    result = StageResult()
    for generate in STAGE_GENERATORS:
        result = result + generate(data)
    if not result.items:
        raise ConstructError(f"study {data.key!r}: no question could be made ({'; '.join(result.skipped)})")
    items = _with_images(data, list(result.items))
    timeline = data.timeline
    source = timeline.study
    images = tuple(image.path for image in source.images)
    if timeline.prior is not None:
        images += tuple(image.path for image in timeline.prior.images)
    study = Study(
        study_id=source.study_id,
        pat_id=source.patient_id,
        source=source.source,
        ref_study_id=timeline.prior.study_id if timeline.prior is not None else "",
        pos_study_id=timeline.next.study_id if timeline.next is not None else "",
        images=images,
        abs_images=derive_abs_images(images, image_root) if image_root is not None else None,
        items=items,
        messages=derive_messages(items, system_prompt),
        cxrtrek_extras=freeze({"split": source.split} if source.split else {}),
    )
    return ConstructedStudy(study, result.skipped)
