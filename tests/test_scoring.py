"""The predictions record, score_predictions, the bootstrap and `cxrtrek eval` (re-scoring gives identical JSON)."""

import json

import numpy as np
import pytest

from cxrtrek_jax.cli import main
from cxrtrek_jax.evaluation.metrics.bootstrap import StudyStats, bootstrap_weights, percentile_interval
from cxrtrek_jax.evaluation.metrics.nlg_metrics import (
    MeteorScorer,
    meteor_unavailable_reason,
)
from cxrtrek_jax.evaluation.scores.predictions import (
    PredictionFormatError,
    PredictionRecord,
    read_predictions,
    write_predictions,
)
from cxrtrek_jax.evaluation.scores.scoring import ScoringConfig, score_predictions

VIEW_Q = "Which view? A. PA. or B. AP."
BOX_REF = "<|ref|> heart <|/ref|> <|box|>(10.0, 10.0), (50.0, 50.0)<|/box|>"
REPORT_REF = "Small left pleural effusion. No pneumothorax. Heart size is normal."
REPORTS = ["Left pleural effusion. No pneumothorax.", "Mild cardiomegaly. No effusion.", REPORT_REF]
FAST = ScoringConfig(meteor=False, bootstrap_resamples=100, seed=7)


def _study_records(study: int, context: str) -> list[PredictionRecord]:
    sid = f"study{study}"
    good = (study + (context == "teacher")) % 3 != 0
    return [
        PredictionRecord(sid, 0, 1, "View_Information", "single-choice", VIEW_Q, "B. AP.", "B." if good else "A.",
                         context, num_generated_tokens=2, latency_s=0.25, stop_reason="eos"),
        PredictionRecord(sid, 1, 2, "Findings_Identification", "yes_no", "Effusion?", "Yes. Left.",
                         "Yes." if study % 2 else "Unsure.", context),
        PredictionRecord(sid, 2, 3, "Findings_Detection", "detection", "[detection] heart", BOX_REF,
                         BOX_REF.replace("50.0, 50.0", "50.0, 30.0") if good else "none", context),
        PredictionRecord(sid, 3, 4, "Relationships_Analysis", "multi-choice-3", "Which? A. effusion B. edema C. mass",
                         "A, B", "A" if good else "A, B", context),
        PredictionRecord(sid, 4, 8, "Report_Generation", "captioning", "Write the report.", REPORT_REF,
                         REPORTS[study % 3], context, num_generated_tokens=9, latency_s=1.5, stop_reason="length"),
    ]


def _records(contexts=("own", "teacher")) -> list[PredictionRecord]:
    return [r for study in range(6) for c in contexts for r in _study_records(study, c)]


@pytest.fixture(scope="module")
def metrics():
    return score_predictions(_records(), FAST)


# -- the record -------------------------------------------------------------------------------


def test_record_json_round_trip(tmp_path):
    record = _study_records(1, "own")[0].replace(scores={"correct": True, "nested": {"a": [1, 2]}})
    line = record.to_json()
    assert list(json.loads(line))[:9] == [
        "study_id", "turn_index", "stage", "task_type", "qtype", "question", "reference", "prediction", "context",
    ]
    assert PredictionRecord.from_json(line) == record
    bare = PredictionRecord.from_json(json.dumps({k: v for k, v in json.loads(line).items() if k != "scores"}))
    assert dict(bare.scores) == {} and bare.latency_s == 0.25
    path = tmp_path / "p.jsonl"
    assert write_predictions(path, _records()) == 60
    assert list(read_predictions(path)) == _records()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stage": 9}, "stage must be in 1..8"),
        ({"context": "all"}, "'context' must be one of"),
        ({"qtype": "essay"}, "unknown qtype"),
        ({"turn_index": True}, "'turn_index' must be int"),
        ({"turn_index": -1}, ">= 0"),
        ({"study_id": ""}, "'study_id' is empty"),
        ({"latency_s": "fast"}, "'latency_s' must be"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_record_validation(change, message):
    data = json.loads(_study_records(1, "own")[0].to_json()) | change
    with pytest.raises(PredictionFormatError, match=message):
        PredictionRecord.from_dict(data)


def test_read_predictions_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = _study_records(1, "own")[0].to_json()
    path.write_text(good + "\n\n" + json.dumps({"study_id": "x"}) + "\n")
    with pytest.raises(PredictionFormatError, match=r"bad.jsonl:3: missing field\(s\) turn_index"):
        list(read_predictions(path))
    path.write_text("{not json\n")
    with pytest.raises(PredictionFormatError, match="bad.jsonl:1: not valid JSON"):
        list(read_predictions(path))


# -- the bootstrap ------------------------------------------------------------------------------


def test_study_stats_and_weights():
    stats = StudyStats(2)
    for study, vector in [(5, [1, 0]), (2, [1, 1]), (5, [1, 1])]:
        stats.add(study, np.array(vector, float))
    np.testing.assert_array_equal(stats.studies, [5, 2])
    np.testing.assert_array_equal(stats.per_study, [[2, 1], [1, 1]])
    np.testing.assert_array_equal(stats.total(), [3, 2])
    chunks = list(bootstrap_weights(6, 150, seed=1, chunk=64))
    assert [c.shape for c in chunks] == [(64, 6), (64, 6), (22, 6)]
    assert all((c.sum(axis=1) == 6).all() for c in chunks)
    again = np.concatenate(list(bootstrap_weights(6, 150, seed=1, chunk=64)))
    np.testing.assert_array_equal(np.concatenate(chunks), again)
    weights = np.zeros((1, 6))
    weights[0, 5] = 3
    np.testing.assert_array_equal(stats.resampled(weights), [[6, 3]])
    with pytest.raises(ValueError, match="shape"):
        stats.add(1, np.zeros(3))
    assert percentile_interval(np.array([np.nan]), 0.95) is None
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))


# -- scoring ------------------------------------------------------------------------------------


def test_closed_and_detection_values(metrics):
    own = metrics["contexts"]["own"]
    # own: studies 0 and 3 are "bad" (A., no boxes, over-complete multi-choice).
    stage1 = own["by_stage"]["1"]["metrics"]["accuracy"]
    assert stage1["value"] == pytest.approx(4 / 6) and stage1["n"] == 6
    yes_no = own["by_qtype"]["yes_no"]["metrics"]
    assert yes_no["accuracy"]["value"] == 0.5 and yes_no["closed_unparseable_rate"]["value"] == 0.5
    multi = own["by_qtype"]["multi-choice-3"]["metrics"]
    assert multi["accuracy"]["value"] == pytest.approx(2 / 6)
    # 4 good items pick A of {A, B} (tp 1, fn 1), 2 bad ones pick both (tp 2).
    assert multi["multi_option_f1"]["value"] == pytest.approx(2 * 8 / (2 * 8 + 4))
    detection = own["by_stage"]["3"]["metrics"]
    # Good prediction: box (10,10)-(50,30) inside the reference -> IoU 0.5; bad: unparseable.
    assert detection["mean_iou"]["value"] == pytest.approx(4 * 0.5 / 6)
    assert detection["acc_iou50"]["value"] == pytest.approx(4 / 6)
    assert detection["detection_unparseable_rate"]["value"] == pytest.approx(2 / 6)
    overall = own["overall"]
    assert overall["n_items"] == 30 and overall["n_studies"] == 6
    assert overall["metrics"]["accuracy"]["n"] == 18


# The reports as every NLG metric sees them: lowercased, punctuation dropped (written out).
REPORT_TOKENS = {
    REPORT_REF: "small left pleural effusion no pneumothorax heart size is normal",
    REPORTS[0]: "left pleural effusion no pneumothorax",
    REPORTS[1]: "mild cardiomegaly no effusion",
}


def _own_reports() -> tuple[list[str], list[str]]:
    """(hypotheses, references) of the own context's stage-8 turns, as token strings."""
    hyps = [REPORT_TOKENS[REPORTS[s % 3]] for s in range(6)]
    return hyps, [REPORT_TOKENS[REPORT_REF]] * len(hyps)


def test_bleu_equals_sacrebleu_corpus_bleu(metrics):
    """nlg_metrics documents equality with sacrebleu (no tokenisation, no smoothing) to 1e-12."""
    from sacrebleu.metrics import BLEU

    report = metrics["contexts"]["own"]["by_stage"]["8"]["metrics"]
    hyps, refs = _own_reports()
    for order in range(1, 5):
        sacre = BLEU(tokenize="none", smooth_method="none", max_ngram_order=order, effective_order=False)
        expected = sacre.corpus_score(hyps, [refs]).score / 100
        assert report[f"bleu_{order}"]["value"] == pytest.approx(expected, abs=1e-12), order
        assert report[f"bleu_{order}"]["n"] == 6
    assert 0 < report["bleu_4"]["value"] < report["bleu_1"]["value"] < 1


def test_rouge_l_equals_coco_caption_and_rouge_score(metrics):
    """The item mean of COCO-caption ROUGE-L (LCS F-measure, beta 1.2), checked against pycocoevalcap
    and against rouge-score's LCS precision and recall combined with beta 1.2."""
    from pycocoevalcap.rouge.rouge import Rouge
    from rouge_score.rouge_scorer import RougeScorer

    value = metrics["contexts"]["own"]["by_stage"]["8"]["metrics"]["rouge_l"]["value"]
    hyps, refs = _own_reports()
    coco = [Rouge().calc_score([h], [r]) for h, r in zip(hyps, refs)]
    assert value == pytest.approx(np.mean(coco), abs=1e-12)
    b2 = 1.2**2
    lcs = [RougeScorer(["rougeL"]).score(r, h)["rougeL"] for h, r in zip(hyps, refs)]
    assert value == pytest.approx(np.mean([(1 + b2) * s.precision * s.recall / (s.recall + b2 * s.precision)
                                           for s in lcs]), abs=1e-12)


def test_cider_d_equals_coco_caption(metrics):
    from pycocoevalcap.cider.cider import Cider

    value = metrics["contexts"]["own"]["by_stage"]["8"]["metrics"]["cider"]["value"]
    hyps, refs = _own_reports()
    # Document frequencies come from the references of every open-ended turn of the context:
    # here the six reports, so pycocoevalcap's corpus is the same.
    assert sum(r.context == "own" and r.qtype == "captioning" for r in _records()) == 6
    _, theirs = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})
    assert value == pytest.approx(float(np.mean(theirs)), abs=1e-12)


def test_clinical_efficacy_values(metrics):
    report = metrics["contexts"]["own"]["by_stage"]["8"]["metrics"]
    assert "meteor" not in report
    # CE: reference positive {Pleural Effusion}; predictions: effusion (x2, tp), cardiomegaly (fp, fn), exact (x2).
    assert report["ce_micro_precision"]["value"] == pytest.approx(4 / 6)
    assert report["ce_micro_recall"]["value"] == pytest.approx(4 / 6)
    assert report["ce_f1[Pleural Effusion]"]["value"] == pytest.approx(2 * 4 / (2 * 4 + 2))
    assert metrics["settings"]["nlg"]["meteor"].startswith("not computed")
    assert metrics["settings"]["clinical_efficacy"]["uncertain_as"] == "positive"


def test_intervals_generation_and_structure(metrics):
    for context in ("own", "teacher"):
        for entry in metrics["contexts"][context]["overall"]["metrics"].values():
            if entry["value"] is not None and entry["ci"] is not None:
                assert entry["ci"][0] - 1e-12 <= entry["value"] <= entry["ci"][1] + 1e-12
    generation = metrics["contexts"]["own"]["generation"]
    assert generation["turns"] == 30 and generation["turns_with_latency"] == 12
    assert generation["mean_latency_s"] == pytest.approx(0.875)
    assert generation["stop_reasons"] == {"eos": 6, "length": 6}
    assert list(metrics["contexts"]) == ["own", "teacher"]
    assert list(metrics["contexts"]["own"]["by_stage"]) == ["1", "2", "3", "4", "8"]
    assert metrics["counts"] == {
        "records": 60, "studies": 6, "records_by_context": {"own": 30, "teacher": 30}, "excluded_items": 0,
    }
    again = score_predictions(_records(), FAST)
    assert json.dumps(again) == json.dumps(metrics)


def test_excluded_items_are_counted_and_named(tmp_path):
    records = _study_records(0, "own")
    bad = [
        records[0].replace(turn_index=10, reference="Perhaps."),
        records[2].replace(turn_index=11, reference="no boxes"),
        records[4].replace(turn_index=12, reference="..."),
        records[1].replace(turn_index=13, reference=""),
    ]
    scored = tmp_path / "scored.jsonl"
    metrics = score_predictions(records + bad, FAST, scored_path=scored)
    problems = metrics["problems"]
    assert metrics["counts"]["excluded_items"] == 4
    assert problems["excluded_by_reason"] == {
        "no reference answer": 1,
        "reference answer cannot be parsed as a closed-ended answer": 1,
        "reference answer has no words": 1,
        "reference boxes unusable: reference answer has no <|box|>": 1,
    }
    assert [e["turn_index"] for e in problems["examples"]] == [10, 11, 12, 13]
    assert metrics["contexts"]["own"]["by_stage"]["1"]["metrics"]["accuracy"]["n"] == 1
    rescored = list(read_predictions(scored))
    assert len(rescored) == 9 and rescored[5].scores["excluded"].startswith("reference answer cannot")
    assert rescored[0].scores["correct"] is False and rescored[0].scores["parsed_as"] == "key"
    assert set(rescored[4].scores) >= {"bleu_4", "rouge_l", "cider", "ce_reference_positive"}


def test_bad_streams_raise():
    with pytest.raises(ValueError, match="no prediction records"):
        score_predictions([], FAST)
    record = _study_records(0, "own")[0]
    with pytest.raises(ValueError, match="duplicate prediction for study 'study0' turn 0 context 'own'"):
        score_predictions([record, record], FAST)
    with pytest.raises(ValueError, match="confidence"):
        ScoringConfig(confidence=1.5)


@pytest.mark.slow  # starts a METEOR JVM (~20 s); tests/test_nlg_metrics.py checks METEOR itself
@pytest.mark.skipif(meteor_unavailable_reason() is not None, reason="METEOR needs java")
def test_meteor_is_scored_per_item():
    records = [r for r in _records(("none",)) if r.stage == 8]
    from pycocoevalcap.meteor.meteor import Meteor

    with MeteorScorer() as meteor:
        metrics = score_predictions(records, ScoringConfig(bootstrap_resamples=20), meteor=meteor)
    hyps = [REPORT_TOKENS[REPORTS[s % 3]] for s in range(6)]
    _, expected = Meteor().compute_score({i: [REPORT_TOKENS[REPORT_REF]] for i in range(6)},
                                         {i: [h] for i, h in enumerate(hyps)})
    entry = metrics["contexts"]["none"]["overall"]["metrics"]["meteor"]
    # The item mean of pycocoevalcap's METEOR 1.5 segment scores (the wrapper nlg_metrics drives).
    assert entry["value"] == pytest.approx(float(np.mean(expected)), abs=1e-12) and entry["n"] == 6
    assert "meteor-1.5.jar" in metrics["settings"]["nlg"]["meteor"]


# -- the command --------------------------------------------------------------------------------


def test_cli_rescoring_gives_identical_metrics(tmp_path, metrics, capsys):
    predictions = tmp_path / "predictions.jsonl"
    write_predictions(predictions, _records())
    identity = tmp_path / "identity.json"
    identity.write_text(json.dumps({"checkpoint_sha256": "abc", "config": "tiny"}))
    out = tmp_path / "eval"
    argv = ["eval", "--predictions", str(predictions), "--out", str(out), "--no-meteor", "--no-progress",
            "--bootstrap-resamples", "100", "--seed", "7", "--identity", str(identity)]
    assert main(argv) == 0
    assert "scored 60 turns from 6 studies" in capsys.readouterr().out
    written = json.loads((out / "metrics.json").read_text())
    identity_written = written.pop("identity")
    assert written == json.loads(json.dumps(metrics))
    assert identity_written["checkpoint_sha256"] == "abc" and len(identity_written["predictions_sha256"]) == 64
    assert identity_written["packages"]["numpy"] == np.__version__
    markdown = (out / "metrics.md").read_text()
    for heading in ("## Overall", "## By stage", "## Context modes compared", "## Error propagation", "`abc`"):
        assert heading in markdown
    assert (out / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scored = list(read_predictions(out / "predictions.scored.jsonl"))
    assert [r.replace(scores={}) for r in scored] == _records()
    assert all(r.scores for r in scored)


def test_cli_errors(tmp_path, capsys):
    assert main(["eval", "--predictions", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"study_id": "x"}\n')
    assert main(["eval", "--predictions", str(bad), "--out", str(tmp_path / "o"), "--no-meteor"]) == 2
    assert "bad.jsonl:1: missing field" in capsys.readouterr().err
