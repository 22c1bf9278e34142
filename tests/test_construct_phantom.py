"""The phantom check of `construct`: the phantom writes its studies as a hospital would export them
(reports and radiographs in the plain source layout, the truth beside them); `cxrtrek data
construct --source plain` reads them back (report reader, timeline, stage generators), and what
comes out must agree with the truth the phantom drew:

  - stage-2 presence answers agree with the truth at F1 >= 0.95 for every phantom finding;
  - the view (stage 1) is the metadata's, for every study;
  - stage 5 exists exactly for the studies with a prior exam and stage 6 exactly for those with a
    later one, linked to the right study;
  - stage 5 says how each finding changed since the prior exam (new, resolved, worse, better,
    unchanged), as the phantom drew it, and stage 6 the course the later exam shows;
  - the output validates with zero errors (image files included).
"""

from __future__ import annotations

import collections
import json

import pytest

from cxrtrek_jax.cli import main
from data_pipeline.construct.construct_run import shard_paths
from data_pipeline.files.cxrtrek_json import read_studies
from data_pipeline.files.validation import validate_file
from data_pipeline.phantom import KINDS, PLAIN_TRUTH_FILENAME, PhantomConfig, write_plain_source

# Phantom studies to export (each becomes 1-3 dated studies of one patient).
NUM_PHANTOM_STUDIES = 80
MIN_F1 = 0.95
# The reader's finding names of each phantom kind (support devices: any device it names).
READER_NAMES = {
    "cardiomegaly": {"cardiomegaly"},
    "pleural_effusion": {"pleural effusion"},
    "pneumothorax": {"pneumothorax"},
    "consolidation": {"consolidation"},
    "nodule": {"nodule", "lung nodule", "pulmonary nodule"},
}
VIEW_WORDS = {"PA": "Posteroanterior (PA)", "AP": "Anteroposterior (AP)", "LATERAL": "lateral"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(truth rows by study id (with each study's report text), constructed studies by study id,
    path of the written JSON, the export's root)."""
    root = tmp_path_factory.mktemp("phantom_plain")
    studies_path = write_plain_source(root, NUM_PHANTOM_STUDIES, seed=11, config=PhantomConfig(size=64))
    truth = {row["study_id"]: row for row in map(json.loads, (root / PLAIN_TRUTH_FILENAME).read_text().splitlines())}
    for row in map(json.loads, studies_path.read_text().splitlines()):
        truth[row["study_id"]]["report"] = row["report"]
    out_dir = root / "constructed"
    assert main(["data", "construct", "--source", "plain", "--input", str(studies_path), "--image-root", str(root),
                 "--out", str(out_dir), "--no-progress"]) == 0
    (out,) = shard_paths(out_dir)
    studies = {study.study_id: study for study in read_studies(out)}
    return truth, studies, out, root


def _predicted_present(study) -> dict[str, list[str]]:
    """The phantom kinds the study's stage-2 yes/no presence answers say are present, each with the
    report sentences the answers cite."""
    present: dict[str, list[str]] = {}
    for item in study.items:
        target = str(item.extras.get("target", ""))
        if item.stage != 2 or item.qtype != "yes_no" or not item.answer.startswith("Yes"):
            continue
        cited = [s["text"] for s in item.extras["provenance"].get("sentences", ())]
        if target.startswith("foreign_body_["):
            present.setdefault("support_devices", []).extend(cited)
        for kind, names in READER_NAMES.items():
            if target in {f"abnormality_[{name}]" for name in names}:
                present.setdefault(kind, []).extend(cited)
    return present


def test_every_exam_of_every_patient_is_constructed_and_validates(built):
    truth, studies, out, root = built
    assert set(studies) == set(truth)
    report = validate_file(out, image_root=root)
    assert report.errors == () and report.studies == len(truth)


def test_presence_answers_agree_with_the_phantom_truth(built):
    truth, studies, _, _ = built
    counts = {kind: collections.Counter() for kind in KINDS}
    misses = collections.defaultdict(list)
    for study_id, row in truth.items():
        predicted = _predicted_present(studies[study_id])
        for kind in KINDS:
            actual = kind in row["kinds"]
            outcome = {(True, True): "tp", (False, True): "fp", (True, False): "fn", (False, False): "tn"}[
                (actual, kind in predicted)]
            counts[kind][outcome] += 1
            if outcome == "fp":  # the sentences read as stating a finding the exam does not have
                misses[kind].append(f"{study_id}: {predicted[kind]}")
            if outcome == "fn":
                misses[kind].append(f"{study_id}: no 'Yes' (report: {row['report']!r})")
    f1 = {kind: round(2 * c["tp"] / max(1, 2 * c["tp"] + c["fp"] + c["fn"]), 3) for kind, c in counts.items()}
    assert all(counts[kind]["tp"] >= 5 for kind in KINDS), counts  # every finding is really tested
    failing = {kind: misses[kind][:5] for kind in KINDS if f1[kind] < MIN_F1}
    assert not failing, f"F1 per finding {f1}; misread (study: sentences) {failing}"


def test_the_view_is_the_metadata_view_for_every_study(built):
    truth, studies, _, _ = built
    for study_id, row in truth.items():
        views = list(dict.fromkeys(row["views"]))
        expected = " and ".join(VIEW_WORDS[v] for v in views) + (" views." if len(views) > 1 else " view.")
        (caption,) = [i for i in studies[study_id].items
                      if i.task_type == "View_Information" and i.qtype == "captioning"]
        assert caption.answer == expected[:1].upper() + expected[1:], study_id


def test_stage5_exactly_with_a_prior_and_stage6_exactly_with_a_later_exam(built):
    truth, studies, _, _ = built
    with_prior = with_later = 0
    for study_id, row in truth.items():
        study = studies[study_id]
        assert study.ref_study_id == row["prior_study_id"] and study.pos_study_id == row["next_study_id"]
        assert bool(study.items_of_stage(5)) == bool(row["prior_study_id"]), study_id
        assert bool(study.items_of_stage(6)) == bool(row["next_study_id"]), study_id
        with_prior += bool(row["prior_study_id"])
        with_later += bool(row["next_study_id"])
    assert with_prior >= 10 and with_later >= 10


# How stage 5 words each of the phantom's changes of a finding since the prior exam.
STAGE5_WORDS = {"new": "is new", "resolved": "has resolved", "larger": "has worsened", "smaller": "has improved",
                "unchanged": "is unchanged"}


def test_stage5_says_how_each_finding_changed_since_the_prior(built):
    truth, studies, _, _ = built
    checked, wrong = 0, []
    for study_id, row in truth.items():
        said = {str(i.extras.get("target", "")): i for i in studies[study_id].items_of_stage(5)
                if i.qtype == "captioning"}
        for kind, change in row["changes_from_prior"].items():
            if kind == "support_devices":
                continue
            names = [n for n in READER_NAMES[kind] if f"change_[{n}]" in said]
            answer = said[f"change_[{names[0]}]"].answer if names else "(no stage-5 answer)"
            checked += 1
            if not answer.endswith(f"{STAGE5_WORDS[change]}."):
                cited = said[f"change_[{names[0]}]"].extras["provenance"] if names else {}
                wrong.append(f"{study_id}: {kind} {change}, answered {answer!r} from {dict(cited)}")
    assert checked >= 30
    assert not wrong, f"{len(wrong)} of {checked} changes misread: {wrong[:5]}"


# How stage 6 words each change from the current to the later exam, as the expected course.
STAGE6_WORDS = {"new": "is expected to develop", "resolved": "is expected to resolve",
                "larger": "is expected to worsen",
                "smaller": "is expected to improve", "unchanged": "is expected to remain stable"}


def test_stage6_gives_the_course_the_later_exam_shows(built):
    truth, studies, _, _ = built
    checked, wrong = 0, []
    for study_id, row in truth.items():
        if not row["next_study_id"]:
            continue
        said = {str(i.extras.get("target", "")): i.answer for i in studies[study_id].items_of_stage(6)}
        for kind, change in truth[row["next_study_id"]]["changes_from_prior"].items():
            if kind == "support_devices":
                continue
            names = [n for n in READER_NAMES[kind] if f"trend_[{n}]" in said]
            answer = said[f"trend_[{names[0]}]"] if names else "(no stage-6 answer)"
            checked += 1
            if not answer.endswith(f"{STAGE6_WORDS[change]}."):
                wrong.append(f"{study_id}: {kind} {change}, answered {answer!r}")
    assert checked >= 30
    assert not wrong, f"{len(wrong)} of {checked} courses misread: {wrong[:5]}"


def test_the_plain_export_is_dated_per_patient_and_byte_identical_on_a_rerun(tmp_path):
    config = PhantomConfig(size=64, prob_prior=1.0, prob_later=1.0, prob_lateral=0.0)
    first = write_plain_source(tmp_path / "a", 3, seed=5, config=config)
    write_plain_source(tmp_path / "b", 3, seed=5, config=config)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 + 3 * 3  # studies.jsonl, truth.jsonl, one frontal per exam (no lateral drawn here)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    assert [r["study_id"] for r in rows[:3]] == ["phantom5-s000000-prior", "phantom5-s000000", "phantom5-s000000-later"]
    for row in rows:
        assert set(row) == {"patient_id", "study_id", "study_date", "report", "images"}
        assert all((tmp_path / "a" / image["path"]).is_file() and image["view"] in ("PA", "AP", "LATERAL")
                   for image in row["images"])
    dates = [r["study_date"] for r in rows[:3]]
    assert dates == sorted(dates) and len(set(dates)) == 3
