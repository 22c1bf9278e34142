"""The four report-source readers of `cxrtrek data construct`, each on a fixture in its published layout
(tests/construct_fixtures.py): what they read, and how they refuse bad rows (file, row, field) or,
with skip_invalid, drop and list them."""

import csv
import gzip
import json
import os
import shutil

import pytest

from construct_fixtures import (FIXTURE_STUDIES, SOURCE_WRITERS, mimic_dicom_id, write_chexpert_plus, write_image,
                                write_mimic_cxr, write_openi, write_plain)
from data_pipeline.construct.chexpert_plus_source import chexpert_view
from data_pipeline.construct.invalid_rows import InvalidRows, SkippedRow
from data_pipeline.construct.mimic_cxr_source import mimic_order_key
from data_pipeline.construct.plain_source import plain_order_key
from data_pipeline.construct.source_readers import SOURCE_NAMES, open_source
from data_pipeline.construct.source_study import SourceError


def _words(text):
    return " ".join(text.split())


def _read(fixture, skip_invalid=False):
    source = open_source(fixture.source, fixture.options, skip_invalid=skip_invalid)
    return source, {study.key: study for study in source.studies()}


# --- every source --------------------------------------------------------------------------------------

def test_the_table_names_the_four_sources():
    assert SOURCE_NAMES == ("mimic-cxr", "chexpert-plus", "openi", "plain")


@pytest.mark.parametrize("name", list(SOURCE_WRITERS))
def test_each_source_reads_every_study_with_its_report_views_and_images(tmp_path, name):
    fixture = SOURCE_WRITERS[name](tmp_path)
    source, studies = _read(fixture)
    assert sorted(studies) == sorted(fixture.study_keys)
    for key, written in zip(fixture.study_keys, FIXTURE_STUDIES, strict=True):
        study = studies[key]
        assert study.source == name
        for header, text in written.sections:  # every section's text, whatever the source's line wrapping
            assert (_words(text) in _words(study.report)) == (header in fixture.sections)
        assert tuple(image.view for image in study.images) == fixture.views[key]
        root = fixture.options.get("image_root", fixture.options.get("root"))
        assert all(os.path.isfile(os.path.join(root, image.path)) for image in study.images)
        assert all(not os.path.isabs(image.path) and ".." not in image.path.split("/") for image in study.images)
    assert source.skipped == ()


@pytest.mark.parametrize("name", list(SOURCE_WRITERS))
def test_studies_stream_one_at_a_time_from_an_index_without_report_text(tmp_path, name):
    fixture = SOURCE_WRITERS[name](tmp_path)
    source = open_source(fixture.source, fixture.options)
    entries = list(source.entries())
    assert sorted(entry.key for entry in entries) == sorted(fixture.study_keys)
    assert all(not hasattr(entry, "report") for entry in entries)
    stream = source.studies()
    assert next(stream).key == entries[0].key  # a generator: one study read, the rest not yet


# --- MIMIC-CXR -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("date, time, expected", [
    ("21800506", "213014.531", ("2180-05-06", "21:30:14.531")),
    ("21800805", "80556.875", ("2180-08-05", "08:05:56.875")),  # the CSV drops leading zeros
    ("21321014", "4602", ("2132-10-14", "00:46:02")),
    ("21321014", "0", ("2132-10-14", "00:00:00")),
])
def test_mimic_study_date_and_time_become_an_iso_order_key(date, time, expected):
    assert mimic_order_key(date, time, "m.csv:2") == expected


@pytest.mark.parametrize("date, time, field", [
    ("2180-05-06", "213014.531", "StudyDate"), ("21801306", "213014.531", "StudyDate"),
    ("21800506", "256000", "StudyTime"), ("21800506", "21:30:14", "StudyTime"), ("21800506", "", "StudyTime"),
])
def test_a_bad_mimic_date_or_time_is_named(date, time, field):
    with pytest.raises(SourceError) as error:
        mimic_order_key(date, time, "m.csv:2")
    assert error.value.field == field and error.value.origin == "m.csv:2"


def test_mimic_keeps_ids_dates_official_split_and_the_report_verbatim(tmp_path):
    fixture = write_mimic_cxr(tmp_path)
    _, studies = _read(fixture)
    study = studies[("10000032", "56699142")]
    assert study.order_key == ("2180-08-05", "08:05:56.875")
    assert study.split == "train" and studies[("10000764", "57375967")].split == "validation"
    report_file = fixture.files["reports_root"] / "files/p10/p10000032/s56699142.txt"
    assert study.report == report_file.read_text()
    assert study.report.startswith("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)")
    assert [image.path for image in study.images] == [
        f"files/p10/p10000032/s56699142/{mimic_dicom_id('56699142', k)}.jpg" for k in range(2)]
    assert [image.image_id for image in study.images] == [mimic_dicom_id("56699142", k) for k in range(2)]
    assert study.origin.startswith(f"{fixture.files['metadata']}:")


def test_mimic_reports_under_the_same_root_gzip_tables_and_no_split_table(tmp_path):
    fixture = write_mimic_cxr(tmp_path, separate_reports=False)
    for table in (fixture.files["metadata"], fixture.files["split"]):
        with open(table, "rb") as plain, gzip.open(f"{table}.gz", "wb") as packed:
            shutil.copyfileobj(plain, packed)
        table.unlink()
    _, studies = _read(fixture)
    assert sorted(studies) == sorted(fixture.study_keys)
    assert studies[("10000764", "57375967")].split == "validation"
    os.unlink(f"{fixture.files['split']}.gz")
    _, studies = _read(fixture)
    assert {study.split for study in studies.values()} == {None}


def test_mimic_takes_a_dicom_where_there_is_no_jpeg(tmp_path):
    fixture = write_mimic_cxr(tmp_path)
    folder = tmp_path / "mimic-cxr-jpg/2.0.0/files/p10/p10000764/s57375967"
    dicom = mimic_dicom_id("57375967", 0)
    (folder / f"{dicom}.jpg").rename(folder / f"{dicom}.dcm")
    _, studies = _read(fixture)
    assert studies[("10000764", "57375967")].images[0].path == f"files/p10/p10000764/s57375967/{dicom}.dcm"


def _append_csv_row(path, row):
    with open(path, "a", encoding="utf-8") as file:
        file.write(",".join(row) + "\n")
    return sum(1 for _ in open(path, encoding="utf-8"))  # the row number (these rows are single lines)


def test_a_bad_mimic_row_names_file_row_and_field_or_is_dropped_and_listed(tmp_path):
    fixture = write_mimic_cxr(tmp_path)
    dicom = "00000000-11111111-22222222-33333333-44444444"
    write_image(tmp_path / f"mimic-cxr-jpg/2.0.0/files/p10/p10000032/s53189527/{dicom}.jpg", seed=1)
    row = _append_csv_row(fixture.files["metadata"], [dicom, "10000032", "53189527", "CHEST (PA AND LAT)", "PA", "64",
                                                      "64", "2180-05-06", "213014.531", "", "", ""])
    _append_csv_row(fixture.files["split"], [dicom, "53189527", "10000032", "train"])
    with pytest.raises(SourceError, match="YYYYMMDD") as error:
        _read(fixture)
    assert (error.value.origin, error.value.field) == (f"{fixture.files['metadata']}:{row}", "StudyDate")
    source, studies = _read(fixture, skip_invalid=True)
    assert sorted(studies) == sorted(fixture.study_keys)  # the study keeps its two valid images
    assert len(studies[("10000032", "53189527")].images) == 2
    assert source.skipped == (SkippedRow(f"{fixture.files['metadata']}:{row}", "StudyDate",
                                         "not a date in YYYYMMDD form: '2180-05-06'"),)
    assert source.invalid.summary() == "skipped: 1 invalid row(s) (1 for 'StudyDate')"


def test_a_mimic_image_or_report_that_does_not_exist_is_named(tmp_path):
    fixture = write_mimic_cxr(tmp_path)
    folder = tmp_path / "mimic-cxr-jpg/2.0.0/files/p10/p10000764/s57375967"
    missing = folder / f"{mimic_dicom_id('57375967', 0)}.jpg"
    missing.unlink()
    with pytest.raises(SourceError, match="no such image file") as error:
        _read(fixture)
    assert str(missing) in str(error.value) and error.value.field == "dicom_id"
    write_image(missing, seed=3)
    report = fixture.files["reports_root"] / "files/p10/p10000032/s50414267.txt"
    report.unlink()
    with pytest.raises(SourceError, match="no report file") as error:
        _read(fixture)
    assert (error.value.origin, error.value.field) == (str(report), "report")
    source, studies = _read(fixture, skip_invalid=True)
    assert ("10000032", "50414267") not in studies and len(studies) == 3
    assert [(row.origin, row.field) for row in source.skipped] == [(str(report), "report")]


def test_rows_of_one_mimic_study_must_agree(tmp_path):
    fixture = write_mimic_cxr(tmp_path)
    dicom = "55555555-11111111-22222222-33333333-44444444"
    write_image(tmp_path / f"mimic-cxr-jpg/2.0.0/files/p10/p10000032/s53189527/{dicom}.jpg", seed=1)
    row = _append_csv_row(fixture.files["metadata"], [dicom, "10000032", "53189527", "", "LL", "64", "64", "21800507",
                                                      "1200", "", "", ""])
    _append_csv_row(fixture.files["split"], [dicom, "53189527", "10000032", "train"])
    with pytest.raises(SourceError, match="differs from .* of the same study 53189527") as error:
        _read(fixture)
    assert (error.value.origin, error.value.field) == (f"{fixture.files['metadata']}:{row}", "StudyDate/StudyTime")


def test_a_mimic_view_position_outside_dicom_names_is_refused(tmp_path):
    fixture = write_mimic_cxr(tmp_path)
    text = fixture.files["metadata"].read_text().replace(",AP,64,", ",OBLIQUE,64,")
    fixture.files["metadata"].write_text(text)
    with pytest.raises(SourceError, match="unknown view 'OBLIQUE'") as error:
        _read(fixture)
    assert error.value.field == "ViewPosition"


# --- CheXpert Plus -------------------------------------------------------------------------------------

@pytest.mark.parametrize("frontal_lateral, ap_pa, view", [
    ("Frontal", "PA", "PA"), ("Frontal", "AP", "AP"), ("Lateral", "", "LATERAL"), ("Lateral", "LL", "LL"),
    ("Frontal", "", None), ("", "AP", "AP"),
])
def test_chexpert_view_from_frontal_lateral_and_ap_pa(frontal_lateral, ap_pa, view):
    assert chexpert_view(frontal_lateral, ap_pa, "c.csv:2") == view


@pytest.mark.parametrize("frontal_lateral, ap_pa, field", [
    ("Lateral", "PA", "ap_pa"), ("Frontal", "LL", "ap_pa"), ("Oblique", "", "frontal_lateral"),
    ("Frontal", "XX", "ap_pa"),
])
def test_a_contradictory_chexpert_view_is_named(frontal_lateral, ap_pa, field):
    with pytest.raises(SourceError) as error:
        chexpert_view(frontal_lateral, ap_pa, "c.csv:2")
    assert error.value.field == field


def test_chexpert_groups_rows_into_studies_ordered_by_report_date_order(tmp_path):
    fixture = write_chexpert_plus(tmp_path)
    _, studies = _read(fixture)
    assert [studies[("patient00017", f"study{k}")].order_key for k in (1, 2, 3)] == [(1,), (2,), (3,)]
    first = studies[("patient00017", "study1")]
    assert [(i.path, i.view) for i in first.images] == [("train/patient00017/study1/view1_frontal.jpg", "PA"),
                                                        ("train/patient00017/study1/view2_lateral.jpg", "LATERAL")]
    assert first.images[0].image_id == "train/patient00017/study1/view1_frontal"
    assert first.report.startswith("NARRATIVE:\nCHEST (PA AND LAT)\n\nHISTORY: ___F with cough and fever")
    assert first.split == "train"
    other = studies[("patient64541", "study1")]
    assert other.split == "validation"  # "valid" in the table
    assert other.images[0].path == "valid/patient64541/study1/view1_frontal.png"  # the PNG release's name


def _chexpert_rows(fixture):
    with open(fixture.files["csv"], newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def _write_chexpert_rows(fixture, rows):
    with open(fixture.files["csv"], "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows(rows)


@pytest.mark.parametrize("column, value, field, reason", [
    ("patient_report_date_order", "first", "patient_report_date_order", "not a number"),
    ("path_to_image", "../train/patient00017/study1/view1_frontal.jpg", "path_to_image", "'..' component"),
    ("path_to_image", "/data/train/patient00017/study1/view1_frontal.jpg", "path_to_image", "absolute path"),
    ("split", "holdout", "split", "unknown split"),
    ("report", "  ", "report", "empty"),
    ("report", "A different report.", "report", "differs from row"),
])
def test_a_bad_chexpert_row_names_file_row_and_field_or_is_dropped_and_listed(tmp_path, column, value, field, reason):
    fixture = write_chexpert_plus(tmp_path)
    rows = _chexpert_rows(fixture)
    header = rows[0]
    # rows[5] is the lateral image of patient A's study1 (row 6 of the table): its study keeps its frontal image.
    assert rows[5][header.index("path_to_image")] == "train/patient00017/study1/view2_lateral.jpg"
    rows[5][header.index(column)] = value
    _write_chexpert_rows(fixture, rows)
    with pytest.raises(SourceError, match=reason) as error:
        _read(fixture)
    assert (error.value.origin, error.value.field) == (f"{fixture.files['csv']}:6", field)
    source, studies = _read(fixture, skip_invalid=True)
    assert sorted(studies) == sorted(fixture.study_keys)
    assert [i.view for i in studies[("patient00017", "study1")].images] == ["PA"]
    assert [(row.origin, row.field) for row in source.skipped] == [(f"{fixture.files['csv']}:6", field)]


def test_a_missing_chexpert_image_names_every_path_tried(tmp_path):
    fixture = write_chexpert_plus(tmp_path)
    (tmp_path / "chexpertplus/train/patient00017/study2/view1_frontal.jpg").unlink()
    with pytest.raises(SourceError, match="no such image file") as error:
        _read(fixture)
    message = str(error.value)
    assert "study2/view1_frontal.jpg" in message and "study2/view1_frontal.png" in message
    assert "study2/view1_frontal.dcm" in message and error.value.field == "path_to_image"


def test_a_chexpert_table_without_a_needed_column_is_refused(tmp_path):
    fixture = write_chexpert_plus(tmp_path)
    rows = _chexpert_rows(fixture)
    rows[0][rows[0].index("patient_report_date_order")] = "order"
    _write_chexpert_rows(fixture, rows)
    with pytest.raises(SourceError, match="missing column") as error:
        open_source(fixture.source, fixture.options)
    assert error.value.field == "patient_report_date_order"


# --- Open-i --------------------------------------------------------------------------------------------

def test_openi_reads_one_study_per_report_with_labelled_sections(tmp_path):
    fixture = write_openi(tmp_path)
    source, studies = _read(fixture)
    assert [entry.study_id for entry in source.entries()] == ["CXR2", "CXR10", "CXR11", "CXR37"]  # natural order
    study = studies[("CXR10", "CXR10")]
    assert study.report == (
        "COMPARISON: Chest radiograph from ___.\n"
        "INDICATION: ___F intubated, assess endotracheal tube placement.\n"
        "FINDINGS: Endotracheal tube terminates 4.5 cm above the carina. A right internal jugular central venous "
        "catheter ends in the mid SVC. Compared to the prior study, the small left pleural effusion has increased. "
        "There is no pneumothorax.\n"
        "IMPRESSION: Endotracheal tube in standard position. Increased left pleural effusion.\n")
    assert studies[("CXR37", "CXR37")].report == (  # empty sections are left out
        "FINDINGS: Lungs are clear. No focal consolidation, pleural effusion, or pneumothorax. Heart size is "
        "normal. No acute cardiopulmonary process.\n")
    assert [(i.path, i.image_id) for i in studies[("CXR2", "CXR2")].images] == [
        ("CXR2_IM-0002-1001.png", "CXR2_IM-0002-1001"), ("CXR2_IM-0002-2001.png", "CXR2_IM-0002-2001")]
    assert all(s.order_key is None and s.split is None for s in studies.values())


def test_openi_takes_a_jpeg_where_there_is_no_png(tmp_path):
    fixture = write_openi(tmp_path)
    images = tmp_path / "openi/NLMCXR_png"
    (images / "CXR10_IM-0010-1001.png").unlink()
    write_image(images / "CXR10_IM-0010-1001.jpg", seed=2)
    _, studies = _read(fixture)
    assert studies[("CXR10", "CXR10")].images[0].path == "CXR10_IM-0010-1001.jpg"


@pytest.mark.parametrize("edit, field, reason", [
    (lambda xml: xml.replace('<uId id="CXR11"/>', ""), "uId", "empty"),
    (lambda xml: xml.replace("</eCitation>", ""), "xml", "not well-formed"),
    (lambda xml: xml.replace('id="CXR11_IM-0011-2001"', 'id="CXR11_IM-0011-9001"'), "parentImage CXR11_IM-0011-9001",
     "no such image file"),
    (lambda xml: xml.replace('id="CXR11_IM-0011-2001"', 'id="../CXR11_IM-0011-2001"'), "parentImage",
     "contains '/'"),
])
def test_a_bad_openi_report_names_file_and_field_or_is_dropped_and_listed(tmp_path, edit, field, reason):
    fixture = write_openi(tmp_path)
    path = fixture.files["reports"] / "11.xml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(SourceError, match=reason) as error:
        _read(fixture)
    assert (error.value.origin, error.value.field) == (str(path), field)
    source, studies = _read(fixture, skip_invalid=True)
    assert sorted(studies) == sorted(key for key in fixture.study_keys if key != ("CXR11", "CXR11"))
    assert [(row.origin, row.field) for row in source.skipped] == [(str(path), field)]


# --- plain JSON Lines ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, key", [
    ("2021-03-04", ("2021-03-04", "")), ("2021-03-04T09:15:00", ("2021-03-04", "09:15:00")),
    ("2021-03-04 09:15", ("2021-03-04", "09:15:00")), (None, None), ("", None),
])
def test_plain_study_date_becomes_an_order_key(value, key):
    assert plain_order_key(value, "s.jsonl:1") == key


@pytest.mark.parametrize("value", ["04/03/2021", "2021-13-01", "2021-03-04T09:15:00+01:00", 20210304])
def test_a_bad_plain_study_date_is_refused(value):
    with pytest.raises(SourceError) as error:
        plain_order_key(value, "s.jsonl:1")
    assert error.value.field == "study_date"


def test_plain_reads_dates_views_and_the_report_as_given(tmp_path):
    fixture = write_plain(tmp_path)
    _, studies = _read(fixture)
    assert studies[("P0007", "S0003")].order_key == ("2021-03-04", "09:15:00")
    assert studies[("P0007", "S0001")].order_key == ("2021-05-01", "")
    assert studies[("P0012", "S0001")].order_key is None
    assert studies[("P0012", "S0001")].report == (
        "Lungs are clear. No focal consolidation, pleural effusion, or pneumothorax. Heart size is normal. "
        "No acute cardiopulmonary process.\n")
    assert [(i.path, i.view, i.image_id) for i in studies[("P0007", "S0003")].images] == [
        ("P0007/S0003/image1.png", "PA", "P0007/S0003/image1"),
        ("P0007/S0003/image2.png", "LATERAL", "P0007/S0003/image2")]
    assert studies[("P0007", "S0003")].origin == f"{fixture.files['input']}:3"  # lines are interleaved


def _good_plain_record():
    return {"patient_id": "P0099", "study_id": "S0001", "study_date": "2022-01-01", "report": "FINDINGS: Clear.",
            "images": [{"path": "P0007/S0003/image1.png", "view": "lat"}]}


@pytest.mark.parametrize("change, field, reason", [
    ({"images": [{"path": "../outside.png"}]}, "images[0].path", "'..' component"),
    ({"images": [{"path": "/etc/hosts"}]}, "images[0].path", "absolute path"),
    ({"images": [{"path": "P0007/S0003/missing.png"}]}, "images[0].path", "no such image file"),
    ({"images": [{"path": "P0007/S0003/image1.png", "view": "OBLIQUE"}]}, "images[0].view", "unknown view"),
    ({"images": [{"file": "P0007/S0003/image1.png"}]}, "images[0].file", "unknown field"),
    ({"images": []}, "images", "non-empty list"),
    ({"studydate": "2022-01-01"}, "studydate", "unknown field"),
    ({"patient_id": "P/0099"}, "patient_id", "contains '/'"),
    ({"report": ""}, "report", "non-empty text"),
    ({"study_id": "S0003", "patient_id": "P0007"}, "study_id", "also on line 3"),
])
def test_a_bad_plain_line_names_file_line_and_field_or_is_dropped_and_listed(tmp_path, change, field, reason):
    fixture = write_plain(tmp_path)
    with open(fixture.files["input"], "a", encoding="utf-8") as file:
        file.write("\n" + json.dumps(_good_plain_record() | change) + "\n")  # a blank line, then line 6
    with pytest.raises(SourceError, match=reason) as error:
        _read(fixture)
    assert (error.value.origin, error.value.field) == (f"{fixture.files['input']}:6", field)
    source, studies = _read(fixture, skip_invalid=True)
    assert sorted(studies) == sorted(fixture.study_keys)
    assert [(row.origin, row.field) for row in source.skipped] == [(f"{fixture.files['input']}:6", field)]


def test_a_plain_line_that_is_not_json_is_named(tmp_path):
    fixture = write_plain(tmp_path)
    with open(fixture.files["input"], "a", encoding="utf-8") as file:
        file.write('{"patient_id": "P1", \n')
    with pytest.raises(SourceError, match="not a JSON object") as error:
        _read(fixture)
    assert (error.value.origin, error.value.field) == (f"{fixture.files['input']}:5", "json")


def test_a_symlink_out_of_the_image_root_is_refused(tmp_path):
    fixture = write_plain(tmp_path)
    outside = write_image(tmp_path / "elsewhere/secret.png", seed=5)
    (tmp_path / "plain/images/link.png").symlink_to(outside)
    with open(fixture.files["input"], "a", encoding="utf-8") as file:
        file.write(json.dumps(_good_plain_record() | {"images": [{"path": "link.png"}]}) + "\n")
    with pytest.raises(SourceError, match="outside the image root") as error:
        _read(fixture)
    assert error.value.field == "images[0].path"


def test_a_mimic_report_is_read_when_its_study_is_loaded_not_when_indexed(tmp_path):
    fixture = write_mimic_cxr(tmp_path)
    source = open_source(fixture.source, fixture.options)
    entries = {entry.key: entry for entry in source.entries()}
    report = fixture.files["reports_root"] / "files/p10/p10000764/s57375967.txt"
    report.write_text("                                 FINAL REPORT\n IMPRESSION:  Rewritten after indexing.\n")
    assert source.load(entries[("10000764", "57375967")]).report.endswith("Rewritten after indexing.\n")


# --- the table -----------------------------------------------------------------------------------------

def test_open_source_names_an_unknown_source_a_missing_option_and_an_option_not_taken(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'padchest'; expected one of mimic-cxr, chexpert-plus"):
        open_source("padchest", {})
    with pytest.raises(ValueError, match=r"^--source chexpert-plus needs --image-root \(--csv --image-root\)$"):
        open_source("chexpert-plus", {"csv": str(tmp_path / "x.csv"), "image_root": None})
    fixture = write_plain(tmp_path)
    with pytest.raises(ValueError, match="--source plain does not take --reports-root"):
        open_source("plain", fixture.options | {"reports_root": str(tmp_path)})


def test_invalid_rows_raise_unless_skipping_and_count_by_field():
    strict = InvalidRows()
    with pytest.raises(SourceError, match="f.csv:2: field 'a': bad"):
        strict.reject(SourceError("f.csv:2", "a", "bad"))
    log = InvalidRows(skip=True)
    for origin, field in (("f.csv:2", "b"), ("f.csv:3", "a"), ("f.csv:4", "b")):
        log.reject(SourceError(origin, field, "bad"))
    assert log.by_field() == {"b": 2, "a": 1}
    assert log.summary() == "skipped: 3 invalid row(s) (2 for 'b', 1 for 'a')"
    assert str(log.rows[0]) == "f.csv:2: field 'b': bad"
    log.clear()
    assert log.rows == () and log.summary() == "skipped: 0 invalid row(s)"
