"""Phantom studies: truth -> images -> staged QA turns -> `Study` records -> files.

Study `index` of seed `seed` depends only on (seed, index): its generator is
seeded with `SeedSequence([seed, index])`, and split into independent streams
for the ground truth, the pixels and the text, so a data set of N studies is a
prefix of one of N + 1 studies.

Images of a study, in this order (`Study.images`, and `image_roles` in the
truth): the current frontal view, the current lateral view (when present), the
prior study's frontal view (when a prior exists) and the later study's frontal
view (when a later study exists). The current views are introduced by `<image>`
placeholders in the first question, the prior image in the first stage-5
question, the later image in the first stage-6 question. Files are written as
8-bit grayscale PNG under `images/<pat_id>/<study_id>/{frontal,lateral}.png`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping

import numpy as np
from PIL import Image

from data_pipeline.files.cxrtrek_json import add_released_fields, write_studies
from data_pipeline.phantom.anatomy import render_frontal, render_lateral, sample_anatomy
from data_pipeline.phantom.config import PhantomConfig
from data_pipeline.phantom.findings import (
    ExamTruth,
    StudyTruth,
    derive_findings,
    sample_acquisition,
    sample_findings,
)
from data_pipeline.phantom.phrases import chexpert_labels
from data_pipeline.phantom.questions import Turn, build_turns, introduce_images
from data_pipeline.schema.records import QAItem, Study, freeze

__all__ = ["generate_study", "write_phantom_dataset", "study_ids", "DATASET_FILENAME"]

DATASET_FILENAME = "cxrtrek.json"
# Compression level of the PNG files (zlib 1..9); fixed, so output bytes are reproducible.
_PNG_COMPRESS_LEVEL = 1


def _study_rng(seed_or_rng: int | np.random.Generator, index: int) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, bool) or not isinstance(seed_or_rng, (int, np.integer)) or seed_or_rng < 0:
        raise ValueError(f"seed must be a non-negative integer or a numpy Generator, got {seed_or_rng!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed_or_rng), int(index)]))


def study_ids(seed: int | None, index: int) -> dict[str, str]:
    """Patient, study, prior and later ids of study `index` (seed None when the
    caller passed its own generator)."""
    prefix = "phantom" if seed is None else f"phantom{seed}"
    study = f"{prefix}-s{index:06d}"
    return {"pat_id": f"{prefix}-p{index:06d}", "study_id": study, "prior": f"{study}-prior", "later": f"{study}-later"}


def _sample_truth(rng: np.random.Generator, config: PhantomConfig):
    """(anatomy, current exam, has_lateral, prior or None, changes, later or None, changes)."""
    anatomy = sample_anatomy(rng)
    findings = sample_findings(rng, config.prevalences)
    current = ExamTruth(sample_acquisition(rng, config, findings), findings)
    has_lateral = bool(rng.random() < config.prob_lateral)
    prior = later = None
    changes_from_prior: dict[str, str] = {}
    changes_to_later: dict[str, str] = {}
    if rng.random() < config.prob_prior:
        prior_findings, changes_from_prior = derive_findings(findings, rng, config, forward=False)
        prior = ExamTruth(sample_acquisition(rng, config, prior_findings), prior_findings)
    if rng.random() < config.prob_later:
        later_findings, changes_to_later = derive_findings(findings, rng, config, forward=True)
        later = ExamTruth(sample_acquisition(rng, config, later_findings), later_findings)
    return anatomy, current, has_lateral, prior, changes_from_prior, later, changes_to_later


def _assemble_items(
    turns: list[Turn], n_current: int, has_prior: bool, has_later: bool, rng: np.random.Generator
) -> tuple[QAItem, ...]:
    """Turns -> QAItems with `<image>` placeholders and cumulative image counts."""
    pending = {"current": n_current, "prior": int(has_prior), "later": int(has_later)}
    visible = 0
    items = []
    for turn in turns:
        question = turn.question
        which = "current" if pending["current"] else {5: "prior", 6: "later"}.get(turn.stage)
        if which and pending[which]:
            question = introduce_images(question, which, pending[which], rng)
            visible += pending[which]
            pending[which] = 0
        items.append(QAItem(turn.stage, turn.task_type, turn.qtype, visible, question, turn.answer,
                            freeze(turn.extras())))
    missing = [which for which, count in pending.items() if count]
    if missing:
        raise RuntimeError(f"phantom: no turn introduces the {' and '.join(missing)} image(s)")
    return tuple(items)


def generate_study(
    seed_or_rng: int | np.random.Generator, index: int, config: PhantomConfig = PhantomConfig()
) -> tuple[Study, dict[str, np.ndarray]]:
    """One phantom study and its images.

    seed_or_rng: a seed (the study then depends only on (seed, index)) or a
        numpy Generator to draw from.
    Returns the Study (content-only: `messages`/`abs_images` None; ground truth
    in `cxrtrek_extras["phantom_truth"]`) and its images: relative path ->
    float32[size, size] in [0, 1], in `Study.images` order.
    """
    seed = None if isinstance(seed_or_rng, np.random.Generator) else seed_or_rng
    truth_rng, pixel_rng, text_rng = _study_rng(seed_or_rng, index).spawn(3)
    ids = study_ids(seed, index)
    anatomy, current, has_lateral, prior, from_prior, later, to_later = _sample_truth(truth_rng, config)

    size, noise = config.size, config.noise_std
    folder = f"images/{ids['pat_id']}"
    rendering = render_frontal(anatomy, current.acquisition, current.findings, size, pixel_rng, noise)
    images = {f"{folder}/{ids['study_id']}/frontal.png": rendering.image}
    roles = ["current_frontal"]
    if has_lateral:
        images[f"{folder}/{ids['study_id']}/lateral.png"] = render_lateral(
            anatomy, current.acquisition, current.findings, size, pixel_rng, noise)
        roles.append("current_lateral")
    for role, exam, exam_id in (("prior_frontal", prior, ids["prior"]), ("later_frontal", later, ids["later"])):
        if exam is not None:
            images[f"{folder}/{exam_id}/frontal.png"] = render_frontal(
                anatomy, exam.acquisition, exam.findings, size, pixel_rng, noise).image
            roles.append(role)

    truth = StudyTruth(
        current=current,
        has_lateral=has_lateral,
        regions=rendering.regions,
        prior=prior,
        later=later,
        changes_from_prior=tuple(from_prior.items()),
        changes_to_later=tuple(to_later.items()),
    )
    turns = build_turns(truth, text_rng, config)
    items = _assemble_items(turns, 1 + has_lateral, prior is not None, later is not None, text_rng)
    truth_json = truth.to_json()
    truth_json["chexpert"] = chexpert_labels(current)
    truth_json["image_roles"] = roles
    study = Study(
        study_id=ids["study_id"],
        pat_id=ids["pat_id"],
        source=config.source,
        ref_study_id=ids["prior"] if prior is not None else "",
        pos_study_id=ids["later"] if later is not None else "",
        images=tuple(images),
        items=items,
        cxrtrek_extras=freeze({"phantom_truth": truth_json}),
    )
    return study, images


def _write_png(path: pathlib.Path, image: np.ndarray) -> None:
    """8-bit grayscale PNG, no metadata (byte-identical for identical pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)


def _split_labels(num_studies: int, split: str | Mapping[str, int] | None) -> list[str | None]:
    """The split label of each study index."""
    if split is None or isinstance(split, str):
        return [split] * num_studies
    counts = dict(split)
    if any(not isinstance(n, int) or n < 0 for n in counts.values()):
        raise ValueError(f"split counts must be non-negative integers, got {counts!r}")
    if sum(counts.values()) != num_studies:
        raise ValueError(f"split counts {counts!r} add up to {sum(counts.values())}, not num_studies={num_studies}")
    return [name for name, n in counts.items() for _ in range(n)]


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    num_studies: int,
    seed: int,
    config: PhantomConfig = PhantomConfig(),
    split: str | Mapping[str, int] | None = None,
    *,
    on_study: Callable[[Study], None] | None = None,
) -> pathlib.Path:
    """Write `num_studies` phantom studies: PNGs under `out_dir/images/...` and
    `out_dir/cxrtrek.json` in the full released form (messages, absolute
    `image` paths, `data_dict.cxrtrek_data` with paths relative to `out_dir`).

    split: None (no split field), one split name for every study, or
        {split name: count} assigning consecutive study indices to splits
        (counts must add up to num_studies); written as `cxrtrek_data.split`.
        The split never changes a study's content.
    on_study: called with each written Study (e.g. to count turns).
    Same arguments -> byte-identical files. Returns the JSON path.
    """
    if isinstance(num_studies, bool) or not isinstance(num_studies, int) or num_studies < 1:
        raise ValueError(f"num_studies must be a positive integer, got {num_studies!r}")
    root = pathlib.Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    labels = _split_labels(num_studies, split)

    def studies():
        for index, label in enumerate(labels):
            study, images = generate_study(seed, index, config)
            for relative, image in images.items():
                _write_png(root / relative, image)
            if label is not None:
                study = study.replace(cxrtrek_extras=freeze({**study.cxrtrek_extras, "split": label}))
            study = add_released_fields(study, root)
            if on_study is not None:
                on_study(study)
            yield study

    path = root / DATASET_FILENAME
    write_studies(path, studies(), form="released")
    return path
