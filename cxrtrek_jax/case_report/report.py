"""`write_case_report`: predictions + studies + images -> one self-contained HTML file.

Images: each study's `images` are resolved under `image_root` with
`data_pipeline.files.image_paths.resolve_image_path` and loaded with
`data_pipeline.files.images.load_image`; or, when the studies come as the
`StudyRecord`s of an opened data set (`data_pipeline.files.datasets`, a JSON file
or a TFDS dir), loaded from the record (`StudyRecord.load_image`), with no image
root. The leading `current_image_count(study)`
images are the current study's views, the rest the prior (or later) study's.
Detection boxes (model and reference, every detection turn of the shown
context) are drawn on the first image, the current study's first view: the
view the detection questions of CXRTrek are asked about.

An image that cannot be resolved or loaded is an error naming the study, the
image index, the path and the reason; with `allow_missing` it becomes a
warning on the page and an "image not available" panel instead.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cxrtrek_jax.case_report.cases import StudyCase, select_cases
from cxrtrek_jax.case_report.errors import CaseReportError
from cxrtrek_jax.case_report.image_overlay import OverlayBox, load_page_image, page_image
from cxrtrek_jax.case_report.render import ImagePanel, render_case_report
from cxrtrek_jax.case_report.report_turns import ReportTurn
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from data_pipeline.files.atomic_write import write_text_atomically
from data_pipeline.files.image_paths import ImagePathError, resolve_image_path
from data_pipeline.files.images import ImageLoadError
from data_pipeline.files.sources import StudyRecord
from data_pipeline.schema.records import Study
from data_pipeline.text.sequences import current_image_count

__all__ = ["CaseReportResult", "detection_overlay_boxes", "study_image_panels", "write_case_report"]

DEFAULT_MAX_IMAGE_SIDE = 512


@dataclasses.dataclass(frozen=True)
class CaseReportResult:
    """What `write_case_report` wrote: the file, the studies shown, the context
    shown and the warnings listed on the page."""

    path: Path
    study_ids: tuple[str, ...]
    context: str
    warnings: tuple[str, ...]


def detection_overlay_boxes(turns: Iterable[ReportTurn]) -> tuple[OverlayBox, ...]:
    """Every parsed model and reference box of the detection turns, in turn order."""
    boxes: list[OverlayBox] = []
    for turn in turns:
        index = turn.record.turn_index
        for kind, parsed in (("model", turn.model_boxes), ("reference", turn.reference_boxes)):
            if parsed is not None:
                boxes.extend(OverlayBox(box, kind, index) for box in parsed.boxes)
    return tuple(boxes)


def _captions(study: Study) -> list[str]:
    current = current_image_count(study)
    if study.has_prior and not study.has_later:
        other = "prior"
    elif study.has_later and not study.has_prior:
        other = "later"
    else:
        other = "other-study"
    return [
        f"current view {i + 1}" if i < current else f"{other} view {i - current + 1}"
        for i in range(study.num_images)
    ]


def study_image_panels(
    study: Study,
    turns: Sequence[ReportTurn],
    image_root: str | os.PathLike | None,
    *,
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
    allow_missing: bool = False,
    record: StudyRecord | None = None,
) -> tuple[tuple[ImagePanel, ...], tuple[str, ...]]:
    """(the study's image panels, warnings); boxes go on the first panel. The images are
    `record`'s when given (the study with its images), else the study's paths under `image_root`."""
    boxes = detection_overlay_boxes(turns)
    panels: list[ImagePanel] = []
    warnings: list[str] = []
    for index, (path, caption) in enumerate(zip(study.images, _captions(study))):
        panel_boxes = boxes if index == 0 else ()
        try:
            if record is not None:
                image = page_image(record.load_image(index), max_image_side)
            else:
                image = load_page_image(resolve_image_path(path, image_root), max_image_side)
        except (ImagePathError, ImageLoadError) as err:
            message = f"study {study.key!r} image {index} ({path}): {err}"
            if not allow_missing:
                raise CaseReportError(message) from None
            warnings.append(message)
            panels.append(ImagePanel(caption, path, None, str(err), panel_boxes))
            continue
        panels.append(ImagePanel(caption, path, image, "", panel_boxes))
    if boxes and not study.images:
        warnings.append(f"study {study.key!r} has detection boxes but no image to draw them on")
    return tuple(panels), tuple(warnings)


def _panels_of(
    cases: Sequence[StudyCase], image_root: str | os.PathLike | None, max_image_side: int, allow_missing: bool
) -> tuple[dict[str, tuple[ImagePanel, ...]], list[str]]:
    panels: dict[str, tuple[ImagePanel, ...]] = {}
    warnings: list[str] = []
    for case in cases:
        if case.study is None:
            continue
        if case.record is None and image_root is None:
            raise CaseReportError(f"study {case.study_id!r} came without its images and no image root was given")
        panels[case.study_id], study_warnings = study_image_panels(
            case.study, case.turns, image_root, max_image_side=max_image_side, allow_missing=allow_missing,
            record=case.record,
        )
        warnings.extend(study_warnings)
    return panels, warnings


def write_case_report(
    predictions: Iterable[PredictionRecord],
    studies: Iterable[Study | StudyRecord],
    image_root: str | os.PathLike | None,
    out_path: str | os.PathLike,
    *,
    context: str | None = None,
    study_ids: Sequence[str] | None = None,
    max_studies: int | None = None,
    allow_missing: bool = False,
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
    title: str = "CXRTrek case report",
) -> CaseReportResult:
    """Writes the HTML case report of the predicted studies to `out_path`.

    predictions / studies: iterables, each consumed once (streamed; only the
        selected studies are kept). Selection, context choice and checks:
        `cxrtrek_jax.case_report.cases`.
    image_root: the folder the studies' image paths are relative to; None when the
        studies come as `StudyRecord`s (an opened data set's), which carry their images.
    allow_missing: predicted studies absent from the data and images that
        cannot be loaded become warnings listed on the page instead of errors.
    max_image_side: longer side of the page images, in pixels.

    Raises CaseReportError naming the study / turn / image at fault.
    """
    selection = select_cases(
        predictions,
        studies,
        context=context,
        study_ids=study_ids,
        max_studies=max_studies,
        allow_missing=allow_missing,
    )
    panels, image_warnings = _panels_of(selection.cases, image_root, max_image_side, allow_missing)
    warnings = (*selection.warnings, *image_warnings)
    page = render_case_report(selection, panels, title=title, warnings=warnings)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, page, encoding="utf-8")
    return CaseReportResult(
        path=out,
        study_ids=tuple(case.study_id for case in selection.cases),
        context=selection.context,
        warnings=warnings,
    )


def write_evaluation_report(eval_dir: str | os.PathLike, data, *, max_studies: int,
                            name: str = "report.html") -> Path:
    """`eval_dir`/report.html over the first `max_studies` studies of an evaluation directory
    written by `evaluation.evaluate_checkpoint` from `data` (an `evaluation.EvalData`, a JSON file
    or a TFDS dir: the studies and images of its split, `EvalData.records`)."""
    from cxrtrek_jax.evaluation.runs.evaluate import PREDICTIONS_FILE
    from cxrtrek_jax.evaluation.scores.predictions import read_predictions

    eval_dir = Path(eval_dir)
    result = write_case_report(read_predictions(eval_dir / PREDICTIONS_FILE), data.records(), None,
                               eval_dir / name, max_studies=max_studies, allow_missing=False)
    return result.path
