"""The CXRTrek TFDS builder: build, read back with tfds.data_source, splits, invalid samples."""

import io
import json
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from pydicom.data import get_testdata_file

from cxrtrek_jax.cli import main
from data_pipeline.files import cxrtrek_json as cj
from data_pipeline.files import tfds_builder as tb
from data_pipeline.files.images import load_image
from data_pipeline.schema.splits import SPLIT_NAMES

tfds.disable_progress_bar()


def _item(stage, task_type, qtype, count, question, answer, **extras):
    return {"stage": stage, "task_type": task_type, "qtype": qtype, "image_input_count": count,
            "question": question, "answer": answer, **extras}


def _record(study_id, pat_id, images, **extra):
    items = [_item(1, "View_Information", "captioning", 1, "View? <image>", "PA.", polish_flag=True)]
    if len(images) > 1:
        items.append(_item(5, "Differences_Comparison", "captioning", 2, "Prior: <image> .", "Stable."))
    items.append(_item(3, "Findings_Detection", "detection", len(images), "Where?",
                       "<|ref|> nodule <|/ref|> <|box|>(1.0, 2.0), (3.0, 4.0)<|/box|>"))
    items.append(_item(2, "Findings_Identification", "yes_no", len(images), "Effusion?", "No.",
                       option_list=["A", "B"]))
    return {"source": "mimic_cxr-mtxray", "pat_id": pat_id, "study_id": study_id, "ref_study_id": "",
            "pos_study_id": "", "image": list(images), "content": items, **extra}


def _png(path, bits=8, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if bits == 16:
        Image.fromarray(rng.integers(0, 65536, (6, 5), dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8)).save(path)


def make_fixture(root):
    """6 studies of 4 patients (released and content-only forms, PNG 8/16-bit, JPEG, DICOM)."""
    images = root / "images"
    _png(images / "p1/s1/a.png", seed=1)
    _png(images / "p1/s0/a.png", bits=16, seed=2)
    _png(images / "p1/s2/a.png", seed=3)
    _png(images / "p2/s3/a.png", seed=4)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
        images / "p2/s3/b.jpg", quality=90)
    (images / "p3/s4").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), images / "p3/s4/a.dcm")
    _png(images / "p4/s5/a.png", seed=6)
    _png(images / "p4/s6/a.png", seed=7)
    records = [
        _record("s1", "p1", ["p1/s1/a.png", "p1/s0/a.png"], cx_extra={"k": [1, None]}),
        _record("s2", "p1", ["p1/s2/a.png"]),
        _record("s3", "p2", ["p2/s3/a.png", "p2/s3/b.jpg"]),
        _record("s4", "p3", ["p3/s4/a.dcm"]),
        _record("s5", "p4", ["p4/s5/a.png"]),
    ]
    released = [cj.study_to_element(cj.add_released_fields(cj.parse_study(r), images), "released")
                for r in records[:3]]
    released[0]["top_extra"] = {"x": 1}
    content_only = [{"data_dict": {"cxrtrek_data": r}} for r in records[3:]] + [
        _record("s6", "p4", ["p4/s6/a.png"])  # bare form, same patient as s5
    ]
    (root / "a.json").write_text(json.dumps(released, indent=4))
    (root / "b.json").write_text(json.dumps(content_only))
    return images, [root / "a.json", root / "b.json"]


# Seed 4 puts p1 in train, p2 in test, p3 and p4 in validation.
SPLIT = tb.SplitConfig(val_fraction=0.3, test_fraction=0.3, seed=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxrtrek")
    images, files = make_fixture(root)
    summary = tb.build_dataset(tb.BuildOptions(tuple(map(str, files)), SPLIT), images, root / "data")
    return root, images, files, summary


def _read_all(data_dir):
    sources = tfds.data_source(tb.DATASET_NAME, data_dir=str(data_dir))
    return {split: [sources[split][i] for i in range(len(sources[split]))] for split in sources}


def test_read_back_equals_source_studies(built):
    root, images, files, summary = built
    source = {s.study_id: s for f in files for s in cj.read_studies(f)}
    examples = _read_all(root / "data")
    read = {}
    for split, split_examples in examples.items():
        for example in split_examples:
            study, decoded = tb.decode_example(example)
            read[study.study_id] = (split, study, decoded)
    assert set(read) == set(source)
    for study_id, (_, study, decoded) in read.items():
        assert study == source[study_id]
        assert len(decoded) == study.num_images
        for path, image in zip(study.images, decoded):
            assert image.dtype == np.float32 and image.ndim == 2
            np.testing.assert_allclose(image, load_image(images / path), atol=0.5 / 65535 + 1e-7)
    assert read["s1"][1].extras == {"top_extra": {"x": 1}}
    assert read["s1"][1].messages is not None and read["s4"][1].messages is None
    assert summary.examples == {s: len(examples.get(s, [])) for s in SPLIT_NAMES}
    assert summary.examples == {"train": 2, "validation": 3, "test": 1} and summary.dropped == ()


def test_dicom_is_stored_as_16_bit_png_and_others_byte_for_byte(built):
    root, images, _, _ = built
    by_id = {tb.example_to_study(e).study_id: e for split in _read_all(root / "data").values() for e in split}
    dicom_png = bytes(by_id["s4"]["images"][0])
    assert dicom_png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(dicom_png)).mode.startswith("I;16")
    assert bytes(by_id["s3"]["images"][1]) == (images / "p2/s3/b.jpg").read_bytes()
    assert bytes(by_id["s1"]["images"][1]) == (images / "p1/s0/a.png").read_bytes()


def test_splits_are_patient_level_and_deterministic(built, tmp_path):
    root, images, files, _ = built
    patient_of = {}
    for split, examples in _read_all(root / "data").items():
        for example in examples:
            study = tb.example_to_study(example)
            assert tb.patient_split(study.pat_id, SPLIT) == split
            patient_of.setdefault(study.pat_id, set()).add(split)
    assert all(len(splits) == 1 for splits in patient_of.values())
    assert len(patient_of) == 4
    # Same inputs -> same split contents.
    again = tb.build_dataset(tb.BuildOptions(tuple(map(str, files)), SPLIT), images, tmp_path / "again")
    assert again.examples == built[3].examples
    # Fractions behave: over many patients, about the requested share.
    counts = {s: 0 for s in SPLIT_NAMES}
    for i in range(4000):
        counts[tb.patient_split(f"patient{i}", tb.SplitConfig(0.1, 0.2, seed=1))] += 1
    assert abs(counts["validation"] / 4000 - 0.1) < 0.02 and abs(counts["test"] / 4000 - 0.2) < 0.02
    with pytest.raises(ValueError, match="must be < 1"):
        tb.SplitConfig(0.5, 0.5)


def test_split_field_overrides_hash(tmp_path):
    images, files = make_fixture(tmp_path)
    elements = json.loads(files[1].read_text())
    elements[0]["data_dict"]["cxrtrek_data"]["split"] = "val"
    elements[1]["split"] = "test"  # element-level
    elements[2]["split"] = "train"  # bare form: a cxrtrek_data key
    files[1].write_text(json.dumps(elements))
    summary = tb.build_dataset(tb.BuildOptions((str(files[1]),), SPLIT), images, tmp_path / "data")
    assert summary.examples == {"train": 1, "validation": 1, "test": 1}
    assert summary.patients_in_several_splits == ("mimic_cxr-mtxray/p4",)  # s5 (test) and s6 (train)
    read = {tb.example_to_study(e).study_id: split for split, ex in _read_all(tmp_path / "data").items() for e in ex}
    assert read == {"s4": "validation", "s5": "test", "s6": "train"}


def _invalid_fixture(tmp_path):
    images, files = make_fixture(tmp_path)
    elements = json.loads(files[1].read_text())
    elements[0]["data_dict"]["cxrtrek_data"]["content"][0]["stage"] = 9  # s4: validation error
    (images / "p4/s5/a.png").write_bytes(b"not an image")  # s5: unreadable when written
    elements.append(_record("s7", "", ["p1/s1/a.png"]))  # no pat_id, no split field
    elements.append(_record("s2", "p1", ["p1/s1/a.png"]))  # duplicate of a.json's s2 (same patient)
    files[1].write_text(json.dumps(elements))
    return images, files


def test_invalid_sample_is_a_hard_error_by_default(tmp_path, capsys):
    images, files = _invalid_fixture(tmp_path)
    with pytest.raises(tb.InvalidSampleError,
                       match=r"sample 0 \(study 'mimic_cxr-mtxray/p3/s4'\).*stage must be in 1..8"):
        tb.build_dataset(tb.BuildOptions(tuple(map(str, files)), SPLIT), images, tmp_path / "data")
    argv = ["data", "build-tfds", "--json", *map(str, files), "--image-root", str(images),
            "--out", str(tmp_path / "cli")]
    assert main(argv) == 2
    assert "--skip-invalid" in capsys.readouterr().err
    assert not list((tmp_path / "cli").glob("cxrtrek/*/*.array_record*"))


def test_skip_invalid_drops_and_counts_with_reasons(tmp_path, capsys):
    images, files = _invalid_fixture(tmp_path)
    elements = json.loads(files[1].read_text())
    elements.append(_record("s2", "p9", ["p1/s1/a.png"]))  # another patient's s2: a study of its own
    files[1].write_text(json.dumps(elements))
    out = tmp_path / "data"
    argv = ["data", "build-tfds", "--json", *map(str, files), "--image-root", str(images), "--out", str(out),
            "--skip-invalid", "--val-fraction", "0.3", "--test-fraction", "0.3", "--split-seed", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary_files = list(out.glob("cxrtrek/*/build_summary.json"))
    assert len(summary_files) == 1
    summary = json.loads(summary_files[0].read_text())
    dropped = {d["study_id"]: d["reasons"] for d in summary["dropped"]}
    m = "mimic_cxr-mtxray/"
    assert set(dropped) == {m + "p3/s4", m + "p4/s5", m + "s7", m + "p1/s2"}
    assert any("stage must be in 1..8" in r for r in dropped[m + "p3/s4"])
    assert any(r.startswith("data_dict.cxrtrek_data.image[0]:") for r in dropped[m + "p4/s5"])
    assert any("pat_id" in r for r in dropped[m + "s7"])
    assert any(f"duplicate study '{m}p1/s2' (source/pat_id/study_id; first seen at {files[0]} sample 1)" in r
               for r in dropped[m + "p1/s2"])
    assert summary["dropped_count"] == 4 and summary["total_examples"] == 5
    assert summary["dropped_by_field"]["data_dict.cxrtrek_data.content[].stage"] == 1
    assert "dropped: 4 sample(s)" in printed and "stage must be in 1..8" in printed
    read = {tb.example_to_study(e).key for ex in _read_all(out).values() for e in ex}
    assert read == {m + "p1/s1", m + "p1/s2", m + "p2/s3", m + "p4/s6", m + "p9/s2"}
    # A second build into the same place needs --overwrite.
    assert main(argv) == 2
    assert main(argv + ["--overwrite"]) == 0


def test_builder_without_options_only_reads(built):
    root = built[0]
    builder = tb.CXRTrekBuilder(data_dir=str(root / "data"))
    sources = builder.as_data_source()
    assert sum(len(s) for s in sources.values()) == 6


def test_split_left_empty_by_unreadable_images_is_an_error(tmp_path):
    images, files = _invalid_fixture(tmp_path)
    (images / "p4/s6/a.png").write_bytes(b"not an image either")  # now every validation study fails
    options = tb.BuildOptions(tuple(map(str, files)), SPLIT, skip_invalid=True)
    with pytest.raises(tb.InvalidSampleError, match="split 'validation': all 2 planned"):
        tb.build_dataset(options, images, tmp_path / "data")
    assert not list((tmp_path / "data").glob("cxrtrek/*/*.array_record*"))
