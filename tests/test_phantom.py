"""Tests of the procedural chest X-ray phantom (data_pipeline.phantom) and `cxrtrek data phantom`."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest

from cxrtrek_jax.cli import main
from data_pipeline.phantom.splits import parse_splits
from data_pipeline.schema.boxes import parse_boxes
from data_pipeline.phantom import (
    Acquisition,
    Finding,
    PhantomConfig,
    Prevalences,
    generate_study,
    render_frontal,
    sample_anatomy,
    write_phantom_dataset,
)
from data_pipeline.schema.stages import STAGE_TASK_TYPES, parse_qtype
from data_pipeline.files.validation import validate_file

SMALL = PhantomConfig(size=96)


@pytest.fixture(scope="module")
def studies():
    """A modest set of studies (with their images) at a small image size."""
    return [generate_study(7, i, SMALL) for i in range(60)]


def _truth(study) -> dict:
    return json.loads(json.dumps(study.cxrtrek_extras["phantom_truth"], default=dict))


def _key(item) -> str:
    return item.extras["phantom_key"]


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"prob_prior": 1.5}, "prob_prior"),
        ({"size": 16}, "size"),
        ({"turns_per_study": (10, 5)}, "turns_per_study"),
        ({"turn_order": "random"}, "turn_order"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        PhantomConfig(**changes)


def test_prevalences_reject_bad_probability():
    with pytest.raises(ValueError, match="nodule"):
        Prevalences(nodule=-0.1)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tmp_path):
    config = PhantomConfig(size=64)
    out = tmp_path / "set"
    write_phantom_dataset(out, 5, seed=3, config=config)
    first = _files(out)
    shutil.rmtree(out)
    write_phantom_dataset(out, 5, seed=3, config=config)
    assert _files(out) == first
    assert any(name.endswith(".png") for name in first)


def test_study_depends_only_on_seed_and_index(tmp_path):
    config = PhantomConfig(size=64)
    small = write_phantom_dataset(tmp_path / "a", 3, seed=11, config=config)
    large = write_phantom_dataset(tmp_path / "b", 6, seed=11, config=config)
    small_elements = json.loads(small.read_text())
    large_elements = json.loads(large.read_text())
    assert len(small_elements) == 3 and len(large_elements) == 6
    for a, b in zip(small_elements, large_elements):
        assert a["data_dict"] == b["data_dict"]
        assert a["messages"] == b["messages"]
        for relative in a["data_dict"]["cxrtrek_data"]["image"]:
            assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    other_seed = generate_study(12, 0, config)[0]
    assert other_seed.items != generate_study(11, 0, config)[0].items


def test_generate_study_accepts_a_generator_and_rejects_bad_seeds():
    study, images = generate_study(np.random.default_rng(5), 4, SMALL)
    assert study.study_id == "phantom-s000004" and len(images) == study.num_images
    with pytest.raises(ValueError, match="seed"):
        generate_study(-1, 0, SMALL)


# ----------------------------------------------------------------------------- schema


def test_written_dataset_validates_without_problems(tmp_path):
    path = write_phantom_dataset(tmp_path, 12, seed=1, config=PhantomConfig(size=64))
    report = validate_file(path, image_root=tmp_path)
    assert report.errors == () and report.warnings == ()
    assert report.studies == 12
    element = json.loads(path.read_text())[0]
    assert element["messages"][0]["role"] == "system"
    assert element["image"][0] == str(tmp_path / element["data_dict"]["cxrtrek_data"]["image"][0])
    assert element["data_dict"]["cxrtrek_data"]["image"][0].startswith("images/")


def test_images_are_float32_unit_range(studies):
    for study, images in studies[:10]:
        assert list(images) == list(study.images)
        for image in images.values():
            assert image.dtype == np.float32 and image.shape == (96, 96)
            assert 0.0 <= image.min() and image.max() <= 1.0


def test_placeholders_and_image_counts(studies):
    for study, _ in studies:
        n_current = 1 + _truth(study)["has_lateral"]
        first = study.items[0]
        assert first.num_placeholders == n_current and first.image_input_count == n_current
        seen = 0
        for item in study.items:
            seen += item.num_placeholders
            assert item.image_input_count == seen
        assert seen == study.num_images
        for stage, present in ((5, study.has_prior), (6, study.has_later)):
            turns = study.items_of_stage(stage)
            assert bool(turns) == present
            if present:
                assert turns[0].num_placeholders == 1
                assert all(item.num_placeholders == 0 for item in turns[1:])


def test_all_stages_qtypes_and_task_types_appear(studies):
    items = [item for study, _ in studies for item in study.items]
    assert {item.stage for item in items} == set(range(1, 9))
    assert {parse_qtype(item.qtype).kind for item in items} == {
        "yes_no", "single-choice", "multi-choice", "captioning", "detection"}
    task_types = {item.task_type for item in items}
    for stage, task_type in [(1, "Quality_Assessment"), (1, "View_Information"), (3, "Findings_Detection"),
                             (5, "Differences_Comparison[Choice]"), (8, "Report_Generation[Findings]"),
                             (8, "Report_Generation[Impression]")]:
        assert task_type in task_types and task_type in STAGE_TASK_TYPES[stage]
    for item in items:
        assert item.task_type in STAGE_TASK_TYPES[item.stage]


def test_turn_counts_follow_config(studies):
    counts = [len(study.items) for study, _ in studies]
    assert 20 <= np.mean(counts) <= 26
    few = PhantomConfig(size=64, turns_per_study=(8, 8))
    assert all(len(generate_study(2, i, few)[0].items) <= 16 for i in range(5))


def test_turns_are_in_canonical_stage_order(studies):
    for study, _ in studies:
        stages = [item.stage for item in study.items]
        assert stages == sorted(stages)


# ----------------------------------------------------------------------------- answers follow the truth


def test_closed_answers_have_the_documented_form(studies):
    for study, _ in studies:
        for item in study.items:
            kind = item.qtype_parsed.kind
            if kind == "yes_no":
                assert item.answer.startswith(("Yes", "No"))
            if kind in ("single-choice", "multi-choice"):
                options, answers = item.extras["option_list"], item.extras["answer_list"]
                assert item.answer == ", ".join(answers)
                assert all(a in options and a in item.question for a in answers)
            if kind == "multi-choice":
                assert len(item.extras["option_list"]) == item.qtype_parsed.n_options


def test_stage2_presence_answers_match_truth(studies):
    for study, _ in studies:
        present = {f["kind"] for f in _truth(study)["current"]["findings"]}
        for item in study.items_of_stage(2):
            if _key(item).startswith("finding:"):
                kind = _key(item).split(":")[1]
                assert item.answer.startswith("Yes" if kind in present else "No")
        assert all(any(_key(i) == f"finding:{k}" for i in study.items) for k in present)


@pytest.mark.parametrize("order", ["canonical", "by_finding"])
def test_stage3_only_after_stage2_yes(studies, order):
    runs = studies if order == "canonical" else [
        generate_study(7, i, dataclasses.replace(SMALL, turn_order="by_finding")) for i in range(30)]
    interleaved = False
    for study, _ in runs:
        present = {f["kind"] for f in _truth(study)["current"]["findings"]}
        confirmed: set[str] = set()
        for position, item in enumerate(study.items):
            if item.stage == 2 and _key(item).startswith("finding:") and item.answer.startswith("Yes"):
                confirmed.add(_key(item).split(":")[1])
            if item.stage == 3 and _key(item) != "detect:all":
                kind = _key(item).split(":")[1]
                assert kind in present and kind in confirmed, (study.study_id, position, item.question)
            interleaved |= item.stage == 2 and any(i.stage == 3 for i in study.items[:position])
    assert interleaved == (order == "by_finding")


def test_detection_boxes_match_the_regions(studies):
    detections = 0
    for study, _ in studies:
        regions = _truth(study)["regions"]
        for item in study.items:
            if item.qtype == "detection":
                detections += 1
                boxes = parse_boxes(item.answer)
                kind = _key(item).split(":")[1]
                wanted = [r for r in regions if kind in ("all", r["kind"])]
                assert [[b.x1, b.y1, b.x2, b.y2] for b in boxes] == [r["box"] for r in wanted]
                assert [b.label for b in boxes] == [r["label"] for r in wanted]
    assert detections > 10


def test_longitudinal_changes_match_the_exams(studies):
    checked = 0
    for study, _ in studies:
        truth = _truth(study)
        for earlier, later, changes in (("prior", "current", "changes_from_prior"),
                                        ("current", "later", "changes_to_later")):
            if earlier not in truth or later not in truth:
                continue
            before = {f["kind"]: f for f in truth[earlier]["findings"]}
            after = {f["kind"]: f for f in truth[later]["findings"]}
            assert set(truth[changes]) == set(before) | set(after)
            for kind, change in truth[changes].items():
                checked += 1
                if change == "new":
                    assert kind not in before and kind in after
                elif change == "resolved":
                    assert kind in before and kind not in after
                elif change in ("larger", "smaller"):
                    ratio = after[kind]["extent"] / before[kind]["extent"]
                    assert ratio > 1.05 if change == "larger" else ratio < 0.95
                else:
                    assert before[kind] == after[kind]
    assert checked > 10


def test_report_negates_absent_pathologies(studies):
    negations = {"pleural_effusion": "pleural effusion", "pneumothorax": "pneumothorax",
                 "consolidation": "consolidation", "nodule": "nodule", "cardiomegaly": "cardiomegaly"}
    for study, _ in studies:
        present = {f["kind"] for f in _truth(study)["current"]["findings"]}
        for item in study.items_of_stage(8):
            if item.task_type == "Report_Generation[Impression]":
                continue
            negative_sentences = [s for s in item.answer.split(". ") if s.startswith("No ")]
            for kind, word in negations.items():
                negated = any(word in s for s in negative_sentences)
                assert negated == (kind not in present), (kind, item.answer)


# ----------------------------------------------------------------------------- pixels


def _render(findings, view="PA", seed=0, size=128):
    anatomy = sample_anatomy(np.random.default_rng(seed))
    return render_frontal(anatomy, Acquisition(view=view), findings, size, np.random.default_rng(seed + 1))


def _box_mean(image, box):
    size = image.shape[0]
    r0, r1 = int(box.y1 * size / 100), int(np.ceil(box.y2 * size / 100))
    c0, c1 = int(box.x1 * size / 100), int(np.ceil(box.x2 * size / 100))
    return float(image[r0:r1, c0:c1].mean())


@pytest.mark.parametrize(
    "finding, sign",
    [
        (Finding("pleural_effusion", side="right", extent=0.3), 1),
        (Finding("pleural_effusion", side="bilateral", extent=0.8), 1),
        (Finding("consolidation", side="left", zone="middle", extent=0.7), 1),
        (Finding("nodule", side="right", zone="upper", extent=0.25), 1),
        (Finding("cardiomegaly", extent=0.64), 1),
        (Finding("pneumothorax", side="left", extent=0.5), -1),
        (Finding("support_devices", side="right", devices=("endotracheal tube", "central venous catheter")), 1),
    ],
)
def test_boxes_lie_where_the_finding_is_drawn(finding, sign):
    with_finding = _render((finding,))
    without = _render(())
    assert with_finding.regions
    for region in with_finding.regions:
        delta = _box_mean(with_finding.image, region.box) - _box_mean(without.image, region.box)
        assert sign * delta > 0.02, (region.box, delta)
    changed = np.abs(with_finding.image - without.image) > 0.05
    inside_any = np.zeros_like(changed)
    for region in with_finding.regions:
        b = region.box
        inside_any[int(b.y1 * 128 / 100):int(np.ceil(b.y2 * 128 / 100)),
                   int(b.x1 * 128 / 100):int(np.ceil(b.x2 * 128 / 100))] = True
    assert changed[~inside_any].mean() < 0.01  # the finding changes pixels only inside its boxes


def test_findings_consume_no_randomness():
    plain = _render(())
    again = _render((Finding("nodule", side="left", zone="lower", extent=0.5),))
    far_away = np.s_[:20, :]  # the top rows hold no lung finding
    np.testing.assert_array_equal(plain.image[far_away], again.image[far_away])


def test_pa_and_ap_views_differ_visibly():
    pa, ap = _render((), view="PA"), _render((), view="AP")
    assert np.abs(pa.image - ap.image).mean() > 0.02
    corner = np.s_[:12, :24]  # the "AP" lead marker
    assert ap.image[corner].max() > 0.9 > pa.image[corner].max()


def test_cardiomegaly_box_reflects_the_cardiothoracic_ratio():
    normal = _render((Finding("cardiomegaly", extent=0.55),)).regions[0].box
    large = _render((Finding("cardiomegaly", extent=0.66),)).regions[0].box
    assert (large.x2 - large.x1) > (normal.x2 - normal.x1) + 3


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_and_summarises(tmp_path, capsys):
    code = main(["data", "phantom", "--out", str(tmp_path), "--studies", "4", "--seed", "2", "--size", "64",
                 "--splits", "train=0.5,validation=0.25,test=0.25"])
    assert code == 0
    out = capsys.readouterr().out
    assert "studies: 4" in out and "per stage:" in out and "studies/s" in out and "train:2" in out
    elements = json.loads((tmp_path / "cxrtrek.json").read_text())
    assert [e["data_dict"]["cxrtrek_data"]["split"] for e in elements] == ["train", "train", "validation", "test"]


@pytest.mark.parametrize(
    "spec, message",
    [("train=0.5,test=0.2", "add up to 1"), ("train=3,test=2", "not the number of studies 4"), ("dev=1.0", "unknown split"),
     ("train", "NAME=VALUE"), ("train=1,test=abc", "all counts or all fractions")],
)
def test_cli_rejects_bad_splits(tmp_path, capsys, spec, message):
    code = main(["data", "phantom", "--out", str(tmp_path), "--studies", "4", "--seed", "0", "--splits", spec])
    assert code == 2
    assert message in capsys.readouterr().err


def test_parse_splits_distributes_rounding():
    assert parse_splits("train=0.8,validation=0.1,test=0.1", 7) == {"train": 6, "validation": 1, "test": 0}
    assert parse_splits("train=5,test=2", 7) == {"train": 5, "test": 2}
