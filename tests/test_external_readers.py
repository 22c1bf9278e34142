"""The readers of the public evaluation sets (`data_pipeline.external`) on fixtures in each set's
published layout (`external_fixtures`): the items they make, what they skip and why, and the
errors naming file, row and field for malformed rows."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

import external_fixtures as fx
from construct_fixtures import FIXTURE_STUDIES, write_mimic_cxr
from data_pipeline.construct.source_study import SourceError
from data_pipeline.external import SET_NAMES, read_external_set
from data_pipeline.reports.chexpert_labeller import CHEXPERT_OBSERVATIONS


def test_iu_xray_r2gen_annotation_reads_the_test_list(tmp_path):
    root = fx.write_iu_annotation(tmp_path)
    data = read_external_set("iu-xray", root)
    document = json.loads((root / "annotation.json").read_text())
    assert [i.item_id for i in data.items] == [e["id"] for e in document["test"]]
    assert [i.reference for i in data.items] == [e["report"] for e in document["test"]]
    assert data.items[0].images == tuple(str(root / "images" / p) for p in document["test"][0]["image_path"])
    assert data.task == "report" and "R2Gen" in data.split
    document["test"][1].pop("report")
    (root / "annotation.json").write_text(json.dumps(document))
    with pytest.raises(SourceError, match=r"annotation.json: test\[1\]: field 'report'"):
        read_external_set("iu-xray", root)


def _in_hash_test(uid: str) -> bool:
    """The split rule recomputed by hand: sha256("0\\0" + number), first 8 bytes / 2**64 < 0.2."""
    digest = hashlib.sha256(f"0\x00{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < 0.2


def test_iu_xray_csv_export_hash_split_findings_else_impression_frontal_first(tmp_path):
    root = fx.write_iu_csv(tmp_path)
    data = read_external_set("iu-xray", root)
    expected = [uid for uid in ("1", "2", "3", "8", "14") if _in_hash_test(uid) and uid != "3"]
    assert [i.item_id for i in data.items] == expected == ["1", "8", "14"]
    by_id = {i.item_id: i for i in data.items}
    assert by_id["1"].reference == fx.REPORTS[0]
    assert by_id["14"].reference == "No acute cardiopulmonary abnormality."  # no findings: the impression
    assert by_id["8"].images[0].endswith("8_IM-0008-2001.dcm.png")  # the Frontal row, listed second
    assert data.skipped == {"not in the test split": 2}
    with open(root / "indiana_projections.csv", "a", newline="") as f:
        csv.writer(f).writerow(["8", "8_IM-0008-3001.dcm.png", "Oblique"])
    with pytest.raises(SourceError, match=r"indiana_projections.csv:12: field 'projection'.*Oblique"):
        read_external_set("iu-xray", root)


def test_iu_xray_openi_xmls_share_the_construct_reader_and_the_split(tmp_path):
    root = fx.write_openi_xmls(tmp_path)
    data = read_external_set("iu-xray", root)
    assert [i.item_id for i in data.items] == ["CXR1", "CXR8"]  # CXR2 is not a test study
    findings = dict(FIXTURE_STUDIES[0].sections).get("FINDINGS") or dict(FIXTURE_STUDIES[0].sections)["IMPRESSION"]
    assert data.items[0].reference == " ".join(findings.split())
    assert data.skipped == {"not in the test split": 1}


def test_mimic_cxr_official_test_split_and_findings(tmp_path):
    source = write_mimic_cxr(tmp_path)
    with open(source.files["split"], newline="") as f:
        rows = list(csv.reader(f))
    tested = {"50414267", "57375967"}
    rows = [rows[0]] + [r[:3] + ["test" if r[1] in tested else "train"] for r in rows[1:]]
    with open(source.files["split"], "w", newline="") as f:
        csv.writer(f).writerows(rows)
    data = read_external_set("mimic-cxr", source.options["root"], reports_root=source.options["reports_root"])
    assert {i.item_id for i in data.items} == tested
    assert data.skipped["not in the test split"] == len(source.study_keys) - 2
    report = (Path(source.options["reports_root"]) / "files/p10/p10000032/s50414267.txt").read_text()
    item = next(i for i in data.items if i.item_id == "50414267")
    assert item.reference.split()[:3] == report.split("FINDINGS:")[1].split()[:3]
    metadata = Path(source.files["metadata"])
    lines = metadata.read_text().splitlines()
    metadata.write_text("\n".join(lines[:2] + [lines[2].replace(",21", ",2x", 1)] + lines[3:]) + "\n")
    refused = read_external_set("mimic-cxr", source.options["root"], reports_root=source.options["reports_root"])
    assert refused.skipped["metadata row refused (StudyDate)"] == 1
    assert refused.refused[0].startswith(f"{metadata}:3: field 'StudyDate'")
    assert f"refused: {metadata}:3: field 'StudyDate'" in refused.counts_line()
    Path(source.files["split"]).unlink()
    with pytest.raises(SourceError, match="official test split is needed"):
        read_external_set("mimic-cxr", source.options["root"], reports_root=source.options["reports_root"])


def test_chexpert_frontal_images_fourteen_questions_and_the_uncertain_policy(tmp_path):
    root = fx.write_chexpert(tmp_path)
    data = read_external_set("chexpert", root)
    assert len({i.group for i in data.items}) == 2 and all("frontal" in i.group for i in data.items)
    assert len(data.items) == 2 * len(CHEXPERT_OBSERVATIONS) - 1  # patient 2's uncertain Atelectasis left out
    answers = {(i.group.split("/")[2], i.label): i.reference for i in data.items}
    assert answers[("patient64541", "Cardiomegaly")] == "Yes" and answers[("patient64541", "Edema")] == "No"
    assert ("patient64542", "Atelectasis") not in answers and answers[("patient64542", "Fracture")] == "No"
    assert data.skipped == {"lateral image": 2, "uncertain label (ignored)": 1}
    ones = read_external_set("chexpert", root, uncertain="ones")
    assert {i.reference for i in ones.items if i.label == "Atelectasis" and "64542" in i.group} == {"Yes"}
    zeros = read_external_set("chexpert", root, uncertain="zeros")
    assert {i.reference for i in zeros.items if i.label == "Atelectasis" and "64542" in i.group} == {"No"}
    table = root / "valid.csv"
    table.write_text(table.read_text().replace("1.0,0.0,0.0,0.0,0.0,0.0", "1.0,0.0,2.0,0.0,0.0,0.0", 1))
    with pytest.raises(SourceError, match=r"valid.csv:2: field '[A-Za-z ]+': expected 1, 0, -1 or blank, got '2.0'"):
        read_external_set("chexpert", root)


def test_vindr_cxr_every_image_asked_every_class(tmp_path):
    root = fx.write_vindr(tmp_path)
    data = read_external_set("vindr-cxr", root)
    first, second = fx.VINDR_IMAGES
    assert [i.item_id for i in data.items] == [f"{first}#Cardiomegaly", f"{first}#Pleural effusion",
                                               f"{second}#Cardiomegaly", f"{second}#Pleural effusion"]
    assert [len(i.boxes) for i in data.items] == [1, 2, 0, 0]
    assert data.items[0].boxes[0].x_min == 10 and data.items[0].images[0].endswith(f"test/{first}.dicom")
    (root / "test" / f"{second}.dicom").unlink()
    with pytest.raises(SourceError, match=f"image {second}: field 'image_id': no such image file"):
        read_external_set("vindr-cxr", root)
    fx.write_csv(root / "annotations" / "annotations_test.csv", fx.VINDR_HEADER, [[first, "Nodule/Mass", "a", "1", "2", "3"]])
    with pytest.raises(SourceError, match=r"annotations_test.csv:2: field 'x_min'"):
        read_external_set("vindr-cxr", root)


def test_vqa_rad_and_slake_keep_their_chest_xray_questions(tmp_path):
    rad = read_external_set("vqa-rad", fx.write_vqa_rad(tmp_path))
    assert [(i.item_id, i.answer_type, i.reference) for i in rad.items] == [
        ("676", "open", "Right lung hilum"), ("677", "closed", "Yes"), ("678", "closed", "No")]
    assert rad.items[0].group == rad.items[1].group == "synpic31955.jpg"
    assert rad.skipped == {"image_organ not CHEST": 1}
    slake = read_external_set("slake", fx.write_slake(tmp_path))
    assert [(i.item_id, i.question) for i in slake.items] == [
        ("2725", "What scanning plane does this image belong to?"), ("2726", "Is the lung healthy?")]
    assert slake.skipped == {"not English": 1, "modality not X-Ray": 1}
    path = tmp_path / "Slake1.0" / "test.json"
    records = json.loads(path.read_text())
    records[1]["answer_type"] = "MAYBE"
    path.write_text(json.dumps(records))
    with pytest.raises(SourceError, match=r"test.json: \[1\]: field 'answer_type': expected OPEN or CLOSED"):
        read_external_set("slake", tmp_path / "Slake1.0")


def test_unknown_sets_and_options_are_refused(tmp_path):
    assert SET_NAMES == ("iu-xray", "mimic-cxr", "chexpert", "vindr-cxr", "vqa-rad", "slake")
    with pytest.raises(ValueError, match="unknown external set 'nih'"):
        read_external_set("nih", tmp_path)
    with pytest.raises(ValueError, match="takes no file option"):
        read_external_set("iu-xray", tmp_path, file="x.json")
    with pytest.raises(SourceError, match="not an IU X-Ray folder"):
        read_external_set("iu-xray", tmp_path)
