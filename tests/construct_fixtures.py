"""Small report sources in their real published layouts, for the construct tests (`cxrtrek data construct`).

One writer per source (`write_mimic_cxr`, `write_chexpert_plus`, `write_openi`, `write_plain`;
by CLI name in `SOURCE_WRITERS`) builds a complete source tree under a folder: report files or
tables as the source publishes them, and the images as small real JPEG/PNG files. Each returns a
`SourceFixture`: the `--source` name, the reader options (`open_source`) and the same as command
line arguments, the main files (to corrupt in tests), and what a reader must find.

The content is the same in every source (`FIXTURE_STUDIES`): patient A has three studies in time
(a portable one with tubes and lines, effusion that grows then shrinks), patient B one normal
study. The reports hold a negated list ("No focal consolidation, pneumothorax, or pulmonary
edema"), an uncertain finding ("pneumonia cannot be excluded"), devices (endotracheal tube,
internal jugular catheter), a recommendation ("Recommend follow-up ..."), comparison sentences
("Compared to the prior study, ... has increased"), and one report without section headers.
Open-i has no patient ids and no dates: there every report is its own patient, with no order.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["FixtureStudy", "FIXTURE_STUDIES", "SourceFixture", "SOURCE_WRITERS", "CHEXPERT_PLUS_HEADER",
           "MIMIC_METADATA_COLUMNS", "chexpert_report", "mimic_dicom_id", "mimic_report", "openi_xml", "write_image",
           "write_chexpert_plus", "write_mimic_cxr", "write_openi", "write_plain"]


@dataclasses.dataclass(frozen=True)
class FixtureStudy:
    """One study's report and views, written by each source in its own format.

    patient: "A" or "B" (each source gives them its own ids); sections: (HEADER, text) in report
    order, a single ("", text) for a report without headers; views: one per image (DICOM names).
    """

    patient: str
    sections: tuple[tuple[str, str], ...]
    views: tuple[str, ...]


FIXTURE_STUDIES: tuple[FixtureStudy, ...] = (
    FixtureStudy("A", (
        ("EXAMINATION", "CHEST (PA AND LAT)"),
        ("INDICATION", "___F with cough and fever, evaluate for pneumonia."),
        ("TECHNIQUE", "Chest PA and lateral."),
        ("COMPARISON", "None."),
        ("FINDINGS", "There is a small left pleural effusion. Patchy opacity in the left lower lobe likely "
                     "reflects atelectasis, although early pneumonia cannot be excluded. No focal consolidation, "
                     "pneumothorax, or pulmonary edema. The cardiomediastinal silhouette is normal."),
        ("IMPRESSION", "Small left pleural effusion with left basilar opacity; pneumonia cannot be excluded. "
                       "Recommend follow-up chest radiograph in 4 to 6 weeks to document resolution."),
    ), ("PA", "LATERAL")),
    FixtureStudy("A", (
        ("EXAMINATION", "CHEST (PORTABLE AP)"),
        ("INDICATION", "___F intubated, assess endotracheal tube placement."),
        ("TECHNIQUE", "Portable AP chest radiograph."),
        ("COMPARISON", "Chest radiograph from ___."),
        ("FINDINGS", "Endotracheal tube terminates 4.5 cm above the carina. A right internal jugular central "
                     "venous catheter ends in the mid SVC. Compared to the prior study, the small left pleural "
                     "effusion has increased. There is no pneumothorax."),
        ("IMPRESSION", "Endotracheal tube in standard position. Increased left pleural effusion."),
    ), ("AP",)),
    FixtureStudy("A", (
        ("EXAMINATION", "CHEST (PA AND LAT)"),
        ("INDICATION", "___F extubated, follow-up of effusion."),
        ("COMPARISON", "Chest radiograph from ___."),
        ("FINDINGS", "The endotracheal tube has been removed. The right internal jugular catheter is unchanged. "
                     "The left pleural effusion has decreased and is now trace. No pneumothorax. The heart is "
                     "mildly enlarged."),
        ("IMPRESSION", "Decreased left pleural effusion. Mild cardiomegaly. Please correlate clinically."),
    ), ("PA", "LATERAL")),
    FixtureStudy("B", (
        ("", "Lungs are clear. No focal consolidation, pleural effusion, or pneumothorax. Heart size is normal. "
             "No acute cardiopulmonary process."),
    ), ("PA",)),
)


@dataclasses.dataclass(frozen=True)
class SourceFixture:
    """A source tree written by a `write_*` function.

    source: the `--source` name. options: `open_source` options. cli_args: the same on a command
    line ("--source", name, "--root", DIR, ...). files: the main files by role ("metadata", "csv",
    "reports", ...). study_keys: every (patient_id, study_id), in FIXTURE_STUDIES order.
    timeline: the study ids of patient A in time order (Open-i: () for it has no order).
    views: (patient_id, study_id) -> the views the reader must give its images.
    sections: the FixtureStudy section headers whose text the source's reports hold ("" for the
        headerless report); Open-i has no EXAMINATION or TECHNIQUE.
    """

    source: str
    options: dict[str, str]
    cli_args: tuple[str, ...]
    files: dict[str, Path]
    study_keys: tuple[tuple[str, str], ...]
    timeline: tuple[str, ...]
    views: dict[tuple[str, str], tuple[str | None, ...]]
    sections: tuple[str, ...]


_ALL_SECTIONS = ("", "EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON", "FINDINGS", "IMPRESSION")


def _fixture(source: str, options: dict[str, Path], files: dict[str, Path], keys: list[tuple[str, str]],
             timeline: tuple[str, ...], views: dict[tuple[str, str], tuple[str | None, ...]],
             sections: tuple[str, ...] = _ALL_SECTIONS) -> SourceFixture:
    args = ["--source", source]
    for option, value in options.items():
        args += [f"--{option.replace('_', '-')}", str(value)]
    return SourceFixture(source, {k: str(v) for k, v in options.items()}, tuple(args), files, tuple(keys), timeline,
                         views, sections)


def write_image(path: Path, seed: int, size: int = 64) -> Path:
    """A small chest-like grayscale image (bright body, dark lungs) as JPEG or PNG by suffix."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(-(((x - 0.7) / 0.15) ** 2
                                                                                 + ((y - 0.5) / 0.3) ** 2))
    pixels = np.clip(200 - 150 * lungs + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def _text(study: FixtureStudy) -> str:
    """The report as plain text: "HEADER: text" paragraphs (the bare text when it has no headers)."""
    return "\n\n".join(f"{h}: {t}" if h else t for h, t in study.sections) + "\n"


# --- MIMIC-CXR ----------------------------------------------------------------------------------------

_MIMIC_IDS = (  # (subject_id, study_id, StudyDate, StudyTime): patient A's ids are not in time order.
    ("10000032", "53189527", "21800506", "213014.531"),
    ("10000032", "50414267", "21800626", "165500.312"),
    ("10000032", "56699142", "21800805", "80556.875"),  # 08:05:56.875, leading zero dropped as in the CSV
    ("10000764", "57375967", "21321014", "74626.25"),
)
_MIMIC_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}
MIMIC_METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                          "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                          "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")


def mimic_dicom_id(study_id: str, index: int) -> str:
    """A dicom_id in MIMIC-CXR's form (five dash-separated groups of 8 hex digits)."""
    digest = hashlib.sha1(f"{study_id}/{index}".encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def mimic_report(study: FixtureStudy) -> str:
    """The report as MIMIC-CXR writes it: a FINAL REPORT banner, lines indented by one space."""
    lines = ["                                 FINAL REPORT"]
    for header, text in study.sections:
        body = _wrapped(text, 76)
        if not header:
            lines += [f" {line}" for line in body] + [" "]
        elif header in ("FINDINGS", "IMPRESSION"):
            lines += [f" {header}:", " "] + [f" {line}" for line in body] + [" "]
        else:
            lines += [f" {header}:  {body[0]}"] + [f" {line}" for line in body[1:]] + [" "]
    return "\n".join(lines[:-1]) + "\n"


def _wrapped(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line]


def write_mimic_cxr(folder: Path, separate_reports: bool = True) -> SourceFixture:
    """MIMIC-CXR-JPG 2.0.0 under folder/mimic-cxr-jpg/2.0.0 (images, metadata and split CSVs), the
    reports under folder/mimic-cxr/2.0.0 (or the same root with `separate_reports=False`)."""
    root = folder / "mimic-cxr-jpg" / "2.0.0"
    reports_root = folder / "mimic-cxr" / "2.0.0" if separate_reports else root
    blocks, splits, views = [], [], {}
    for (subject, study_id, date, time), study in zip(_MIMIC_IDS, FIXTURE_STUDIES, strict=True):
        metadata: list[list[str]] = []
        blocks.append(metadata)
        report = reports_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(mimic_report(study))
        views[(subject, study_id)] = study.views
        procedure = "CHEST (PORTABLE AP)" if study.views == ("AP",) else "CHEST (PA AND LAT)"
        for index, view in enumerate(study.views):
            dicom = mimic_dicom_id(study_id, index)
            write_image(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id}" / f"{dicom}.jpg",
                        seed=int(study_id) + index)
            metadata.append([dicom, subject, study_id, procedure, view, "64", "64", date, time, procedure,
                             _MIMIC_VIEW_MEANING[view], "Erect" if view != "AP" else "Recumbent"])
            splits.append([dicom, study_id, subject, "train" if subject == "10000032" else "validate"])
    rows = [row for block in reversed(blocks) for row in block]  # studies need not be in time order.
    files = {"metadata": root / "mimic-cxr-2.0.0-metadata.csv", "split": root / "mimic-cxr-2.0.0-split.csv",
             "reports_root": reports_root}
    _write_csv(files["metadata"], MIMIC_METADATA_COLUMNS, rows)
    _write_csv(files["split"], ("dicom_id", "study_id", "subject_id", "split"), splits)
    options = {"root": root} | ({"reports_root": reports_root} if separate_reports else {})
    keys = [(subject, study_id) for subject, study_id, _, _ in _MIMIC_IDS]
    return _fixture("mimic-cxr", options, files, keys, ("53189527", "50414267", "56699142"), views)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


# --- CheXpert Plus ------------------------------------------------------------------------------------

CHEXPERT_PLUS_HEADER = (
    "path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id", "patient_report_date_order",
    "report", "section_narrative", "section_clinical_history", "section_history", "section_comparison",
    "section_technique", "section_procedure_comments", "section_findings", "section_impression",
    "section_end_of_impression", "section_summary", "section_accession_number", "age", "sex", "race",
    "ethnicity", "interpreter_needed", "insurance_type", "recent_bmi", "deceased", "split")
_CHEXPERT_SECTIONS = {"INDICATION": "section_clinical_history", "COMPARISON": "section_comparison",
                      "TECHNIQUE": "section_technique", "FINDINGS": "section_findings",
                      "IMPRESSION": "section_impression"}
_ANONYMISED = ("This report has been anonymized. All dates are offset from the actual dates by a fixed interval "
               "associated with the patient.")


def chexpert_report(study: FixtureStudy, accession: str) -> tuple[str, dict[str, str]]:
    """(report, section columns) as CheXpert Plus writes them: NARRATIVE, HISTORY, COMPARISON,
    FINDINGS, IMPRESSION, SUMMARY and ACCESSION NUMBER blocks; a headerless report stays bare."""
    if not study.sections[0][0]:
        return study.sections[0][1], {"section_findings": study.sections[0][1]}
    sections = dict(study.sections)
    columns = {_CHEXPERT_SECTIONS[h]: t for h, t in study.sections if h in _CHEXPERT_SECTIONS}
    columns |= {"section_narrative": sections["EXAMINATION"], "section_summary": "2-ABNORMAL",
                "section_accession_number": accession}
    blocks = [f"NARRATIVE:\n{sections['EXAMINATION']}", f"HISTORY: {sections['INDICATION']}",
              f"COMPARISON: {sections['COMPARISON']}"]
    blocks += [f"TECHNIQUE: {sections['TECHNIQUE']}"] if "TECHNIQUE" in sections else []
    blocks += [f"FINDINGS:\n{sections['FINDINGS']}", f"IMPRESSION:\n{sections['IMPRESSION']}",
               "SUMMARY: 2-ABNORMAL", f"ACCESSION NUMBER:\n{accession}\n{_ANONYMISED}"]
    return "\n\n".join(blocks), columns


def write_chexpert_plus(folder: Path) -> SourceFixture:
    """df_chexpert_plus_240401.csv and the images under folder/chexpertplus/ (train/patientNNNNN/
    studyN/viewK_frontal.jpg; patient B's image as .png, as the PNG release names it)."""
    root = folder / "chexpertplus"
    patients = {"A": ("patient00017", "train", "F", 61), "B": ("patient64541", "valid", "M", 45)}
    rows, keys, views, orders = [], [], {}, {"A": 0, "B": 0}
    for number, study in enumerate(FIXTURE_STUDIES):
        patient_id, split, sex, age = patients[study.patient]
        orders[study.patient] += 1
        study_id = f"study{orders[study.patient]}"
        report, columns = chexpert_report(study, accession=str(9959089 + number))
        keys.append((patient_id, study_id))
        views[(patient_id, study_id)] = study.views
        for index, view in enumerate(study.views):
            side = "lateral" if view == "LATERAL" else "frontal"
            path = f"{split}/{patient_id}/{study_id}/view{index + 1}_{side}.jpg"
            write_image(root / (path if study.patient == "A" else path[:-4] + ".png"), seed=number * 10 + index)
            values = {"path_to_image": path, "path_to_dcm": path[:-4] + ".dcm", "frontal_lateral": side.title(),
                      "ap_pa": "" if view == "LATERAL" else view, "deid_patient_id": patient_id,
                      "patient_report_date_order": str(orders[study.patient]), "report": report, "age": str(age),
                      "sex": sex, "race": "White", "ethnicity": "Non-Hispanic/Non-Latino", "interpreter_needed": "No",
                      "insurance_type": "Private Insurance", "recent_bmi": "22.2", "deceased": "No",
                      "split": split} | columns
            rows.append([values.get(column, "") for column in CHEXPERT_PLUS_HEADER])
    rows = rows[3:] + rows[:3]  # a patient's rows in the table need not be in time order.
    files = {"csv": root / "df_chexpert_plus_240401.csv"}
    _write_csv(files["csv"], CHEXPERT_PLUS_HEADER, rows)
    return _fixture("chexpert-plus", {"csv": files["csv"], "image_root": root}, files, keys,
                    ("study1", "study2", "study3"), views)


# --- Open-i / IU X-ray --------------------------------------------------------------------------------

_OPENI_HEADERS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")


def openi_xml(uid: int, study: FixtureStudy, image_ids: list[str]) -> str:
    """An ecgen-radiology report XML as the collection publishes it (a headerless report goes in
    FINDINGS, the other sections left empty)."""
    sections = dict(study.sections) if study.sections[0][0] else {"FINDINGS": study.sections[0][1]}
    abstract = "\n".join(f'            <AbstractText Label="{label}">{sections[label]}</AbstractText>'
                         if label in sections else f'            <AbstractText Label="{label}"/>'
                         for label in _OPENI_HEADERS)
    images = "\n".join(f"""   <parentImage id="{image_id}">
      <figureId>F{k + 1}</figureId>
      <caption>Xray Chest PA and Lateral</caption>
      <panel type="single">
         <url>/hadoop/storage/radiology/extract/{image_id}.jpg</url>
         <imgModality>7</imgModality>
         <region type="" id="" fig-text=""/>
      </panel>
   </parentImage>""" for k, image_id in enumerate(image_ids))
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{uid}"/>
   <pmcId id="{uid}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{uid}"/>
   <licenseType>open-access</licenseType>
   <articleType>XR</articleType>
   <publisher>Indiana University</publisher>
   <title>Indiana University Chest X-ray Collection</title>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
{abstract}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      <major>normal</major>
   </MeSH>
{images}
</eCitation>
"""


def write_openi(folder: Path) -> SourceFixture:
    """ecgen-radiology/N.xml report XMLs and NLMCXR_png/<parentImage id>.png images under folder/openi/."""
    reports, images = folder / "openi" / "ecgen-radiology", folder / "openi" / "NLMCXR_png"
    reports.mkdir(parents=True, exist_ok=True)
    keys, views = [], {}
    for uid, study in zip((2, 10, 11, 37), FIXTURE_STUDIES, strict=True):
        image_ids = [f"CXR{uid}_IM-{uid:04d}-{1001 + 1000 * k}" for k in range(len(study.views))]
        for k, image_id in enumerate(image_ids):
            write_image(images / f"{image_id}.png", seed=uid * 10 + k)
        (reports / f"{uid}.xml").write_text(openi_xml(uid, study, image_ids), encoding="utf-8")
        keys.append((f"CXR{uid}", f"CXR{uid}"))
        views[(f"CXR{uid}", f"CXR{uid}")] = (None,) * len(study.views)
    return _fixture("openi", {"reports": reports, "image_root": images}, {"reports": reports}, keys, (), views,
                    ("",) + _OPENI_HEADERS)


# --- plain JSON Lines ---------------------------------------------------------------------------------

_PLAIN_IDS = (("P0007", "S0003", "2021-03-04T09:15:00"), ("P0007", "S0001", "2021-05-01"),
              ("P0007", "S0002", "2021-07-15T14:00:00"), ("P0012", "S0001", None))


def write_plain(folder: Path) -> SourceFixture:
    """studies.jsonl (one study a line, patients interleaved) and images under folder/plain/images;
    patient B's study has no date and its image no view."""
    root = folder / "plain"
    lines, keys, views = [], [], {}
    for number, ((patient_id, study_id, date), study) in enumerate(zip(_PLAIN_IDS, FIXTURE_STUDIES, strict=True)):
        images = []
        for index, view in enumerate(study.views):
            path = f"{patient_id}/{study_id}/image{index + 1}.png"
            write_image(root / "images" / path, seed=number * 10 + index)
            images.append({"path": path, "view": view} if date else {"path": path})
        record = {"patient_id": patient_id, "study_id": study_id, "report": _text(study), "images": images}
        lines.append(json.dumps(record | ({"study_date": date} if date else {})))
        keys.append((patient_id, study_id))
        views[(patient_id, study_id)] = study.views if date else (None,) * len(study.views)
    lines = [lines[1], lines[3], lines[0], lines[2]]  # a patient's studies need not be together
    files = {"input": root / "studies.jsonl"}
    files["input"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return _fixture("plain", {"input": files["input"], "image_root": root / "images"}, files, keys,
                    ("S0003", "S0001", "S0002"), views)


SOURCE_WRITERS: dict[str, Callable[[Path], SourceFixture]] = {
    "mimic-cxr": write_mimic_cxr, "chexpert-plus": write_chexpert_plus, "openi": write_openi, "plain": write_plain}
