"""The phantom as a hospital would export it: free-text reports and radiographs in the plain source
layout (`cxrtrek data construct --source plain`), with the truth kept beside them.

    out_dir/studies.jsonl   one study a line: {"patient_id", "study_id", "study_date" (ISO),
                            "report" (the whole text), "images": [{"path", "view"}]}
    out_dir/images/...      the radiographs (8-bit PNG), paths relative to out_dir
    out_dir/truth.jsonl     per study: its findings (phantom kinds), views, prior/next study ids
                            and each finding's change from the prior (`findings.CHANGES`)

A phantom study with a prior and/or a later exam becomes separate, dated studies of one patient
(prior, current, later), each with its own report written from its own exam's truth: technique,
quality, every finding present, the absent pathologies negated, changes against the patient's
previous exam, an impression and, sometimes, a recommendation. One report in five has no
section headers (all of it findings text), as some real reports do.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipeline.phantom.config import PhantomConfig
from data_pipeline.phantom.findings import Acquisition, ExamTruth, Finding
from data_pipeline.phantom.generator import _write_png, generate_study, study_ids
from data_pipeline.phantom.phrases import (
    PATHOLOGIES, change_phrase, describe, finding_sentence, negative_sentences, next_step, pick, technique_sentence,
)
from data_pipeline.schema.records import thaw

__all__ = ["PLAIN_STUDIES_FILENAME", "PLAIN_TRUTH_FILENAME", "exam_from_json", "exam_report", "write_plain_source"]

PLAIN_STUDIES_FILENAME = "studies.jsonl"
PLAIN_TRUTH_FILENAME = "truth.jsonl"
# A patient's first exam falls within this many days of 2015-01-01; exams are 20-120 days apart.
_FIRST_DATE, _DATE_SPREAD, _GAP_DAYS = datetime.date(2015, 1, 1), 3000, (20, 120)
_INDICATIONS = ("shortness of breath", "chest pain", "fever and cough, evaluate for pneumonia",
                "preoperative evaluation", "follow-up", "hypoxia", "line placement")
_IMPRESSION_CHANGES = {"larger": ", increased since the prior study", "smaller": ", decreased since the prior study",
                       "unchanged": ", unchanged from the prior study", "new": ", new since the prior study"}
# The report's own random stream, apart from the phantom's (seed, index) streams.
_REPORT_STREAM = 7


def exam_from_json(exam: Mapping[str, Any]) -> ExamTruth:
    """An exam of the phantom truth JSON (`phantom_truth["current"]`, ...) as an `ExamTruth`;
    ValueError if a finding's size does not read back from its stored extent."""
    acq = exam["acquisition"]
    findings = []
    for f in exam["findings"]:
        finding = Finding(kind=f["kind"], side=f.get("side", ""), zone=f.get("zone", ""),
                          extent=float(f.get("extent", 0.0)), devices=tuple(f.get("devices", ())))
        if finding.size != f.get("size", ""):
            raise ValueError(f"phantom truth: {f['kind']} size {f.get('size')!r} does not read back ({finding.size!r})")
        findings.append(finding)
    return ExamTruth(Acquisition(acq["view"], acq["rotation"], bool(acq["low_inspiration"])), tuple(findings))


def _impression(exam: ExamTruth, changes: Mapping[str, str], rng: np.random.Generator) -> list[str]:
    lines = []
    for f in exam.findings:
        if f.kind in PATHOLOGIES:
            text = describe(f).removeprefix("a ") + _IMPRESSION_CHANGES.get(changes.get(f.kind, ""), "")
            lines.append(text[:1].upper() + text[1:] + ".")
    if not lines:
        lines.append("No acute cardiopulmonary process.")
    if exam.findings and rng.random() < 0.5:
        lines.append(sorted(next_step(f) for f in exam.findings)[0][2])
    return lines


def exam_report(exam: ExamTruth, has_lateral: bool, previous: ExamTruth | None, changes: Mapping[str, str],
                rng: np.random.Generator, *, headers: bool = True, previous_date: str = "") -> str:
    """The report of one exam: `previous` is the patient's exam before it (None for the first)
    and `changes` each finding's change from it (`findings.CHANGES`)."""
    acq = exam.acquisition
    findings = [technique_sentence(acq, has_lateral)]
    if acq.low_inspiration:
        findings.append("Low lung volumes.")
    if acq.rotated:
        findings.append("The patient is rotated.")
    findings += [finding_sentence(f, rng) for f in exam.findings]
    findings += negative_sentences(exam, rng)
    for kind, change in changes.items():
        if change == "resolved" and previous is not None and previous.finding(kind) is not None:
            findings.append(change_phrase(kind, change, previous.finding(kind)))
    impression = _impression(exam, changes, rng)
    if not headers:
        return " ".join(findings + impression)
    view = "PA AND LAT" if acq.view == "PA" and has_lateral else ("PA" if acq.view == "PA" else "PORTABLE AP")
    comparison = f"Chest radiograph of {previous_date}." if previous is not None else "None."
    return "\n".join((
        f"EXAMINATION: CHEST ({view})", "",
        f"INDICATION: ___-year-old patient with {pick(rng, _INDICATIONS)}.", "",
        f"COMPARISON: {comparison}", "",
        "FINDINGS:", "", " ".join(findings), "",
        "IMPRESSION:", "", " ".join(impression),
    ))


def _patient_exams(truth: Mapping[str, Any], ids: Mapping[str, str]) -> list[dict[str, Any]]:
    """The patient's exams in time order: {study_id, exam, has_lateral, role, changes (from the
    exam before)}."""
    current = exam_from_json(truth["current"])
    exams = []
    if "prior" in truth:
        exams.append({"study_id": ids["prior"], "exam": exam_from_json(truth["prior"]), "has_lateral": False,
                      "role": "prior", "changes": {}})
    exams.append({"study_id": ids["study_id"], "exam": current, "has_lateral": bool(truth["has_lateral"]),
                  "role": "current", "changes": dict(truth.get("changes_from_prior", {}))})
    if "later" in truth:
        exams.append({"study_id": ids["later"], "exam": exam_from_json(truth["later"]), "has_lateral": False,
                      "role": "later", "changes": dict(truth.get("changes_to_later", {}))})
    return exams


def _dates(rng: np.random.Generator, count: int) -> list[str]:
    day = _FIRST_DATE + datetime.timedelta(days=int(rng.integers(_DATE_SPREAD)))
    out = []
    for _ in range(count):
        out.append(day.isoformat())
        day += datetime.timedelta(days=int(rng.integers(*_GAP_DAYS)))
    return out


def _patient_rows(seed: int, index: int, config: PhantomConfig, root: pathlib.Path) -> list[tuple[dict, dict]]:
    """(plain study row, truth row) per exam of phantom study `index`; writes its images."""
    study, images = generate_study(seed, index, config)
    truth = thaw(study.cxrtrek_extras["phantom_truth"])
    ids = study_ids(seed, index)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, _REPORT_STREAM]))
    exams = _patient_exams(truth, ids)
    dates = _dates(rng, len(exams))
    rows = []
    for k, e in enumerate(exams):
        # image roles: current_frontal, current_lateral, prior_frontal, later_frontal (in that order)
        shown = [p for p, role in zip(study.images, truth["image_roles"]) if role.startswith(e["role"] + "_")]
        views = [e["exam"].acquisition.view] + ["LATERAL"] * e["has_lateral"]
        if len(shown) != len(views):
            raise RuntimeError(f"phantom study {index}: {len(shown)} image(s) for the {e['role']} exam, "
                               f"expected {len(views)}")
        for path in shown:
            _write_png(root / path, images[path])
        previous = exams[k - 1]["exam"] if k else None
        report = exam_report(e["exam"], e["has_lateral"], previous, e["changes"], rng,
                             headers=rng.random() >= 0.2, previous_date=dates[k - 1] if k else "")
        row = {"patient_id": ids["pat_id"], "study_id": e["study_id"], "study_date": dates[k], "report": report,
               "images": [{"path": p, "view": v} for p, v in zip(shown, views)]}
        truth_row = {"patient_id": ids["pat_id"], "study_id": e["study_id"], "kinds": list(e["exam"].kinds),
                     "views": views, "prior_study_id": exams[k - 1]["study_id"] if k else "",
                     "next_study_id": exams[k + 1]["study_id"] if k + 1 < len(exams) else "",
                     "changes_from_prior": e["changes"]}
        rows.append((row, truth_row))
    return rows


def write_plain_source(out_dir: str | os.PathLike, num_studies: int, seed: int,
                       config: PhantomConfig = PhantomConfig()) -> pathlib.Path:
    """Write phantom studies `0 .. num_studies - 1` of `seed` in the plain source layout (see the
    module docstring); returns the path of `studies.jsonl`. Same arguments, same bytes."""
    if isinstance(num_studies, bool) or not isinstance(num_studies, int) or num_studies < 1:
        raise ValueError(f"num_studies must be a positive integer, got {num_studies!r}")
    root = pathlib.Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / PLAIN_STUDIES_FILENAME, "w", encoding="utf-8") as studies, \
            open(root / PLAIN_TRUTH_FILENAME, "w", encoding="utf-8") as truths:
        for index in range(num_studies):
            for row, truth_row in _patient_rows(seed, index, config, root):
                studies.write(json.dumps(row) + "\n")
                truths.write(json.dumps(truth_row) + "\n")
    return root / PLAIN_STUDIES_FILENAME
