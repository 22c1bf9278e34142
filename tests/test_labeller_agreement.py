"""The report labeller against its reference sentence set (tests/data/labeller_sentences.json)."""

import json
from collections import Counter
from pathlib import Path

import pytest

from data_pipeline.reports.chexpert_labeller import CHEXPERT_OBSERVATIONS, default_labeller
from cxrtrek_jax.evaluation.metrics.labeller_agreement import (
    ReferenceSentence,
    agreement_table,
    expected_labels,
    format_table,
    load_reference,
    main,
)

REFERENCE = Path(__file__).parent / "data" / "labeller_sentences.json"
SENTENCES = load_reference(REFERENCE)


@pytest.mark.parametrize("sentence", SENTENCES, ids=[s.text[:60] for s in SENTENCES])
def test_reference_sentence(sentence):
    # Every observation, listed or not (unlisted ones must come out blank), and the derived No Finding.
    assert dict(default_labeller().label(sentence.text).labels) == expected_labels(sentence)


def test_reference_set_coverage():
    assert len(SENTENCES) >= 150
    mentioned = Counter(o for s in SENTENCES for o in s.labels)
    assert set(mentioned) == set(CHEXPERT_OBSERVATIONS[1:])
    assert sum(expected_labels(s)["No Finding"] == 1 for s in SENTENCES) > 0
    kinds = Counter(s.source.split(":")[0] for s in SENTENCES)
    assert set(kinds) == {"chexpert", "negbio", "own"}
    for phrase in ("clear of", "free of", "negative for", "no evidence of", "without evidence of", "cannot be excluded",
                   "rule out", "may represent", " but ", "however", "which", ";", "no change in"):
        assert any(phrase in s.text.lower() for s in SENTENCES), phrase


def test_expected_labels_derive_no_finding():
    assert expected_labels(ReferenceSentence("t", {"Support Devices": 1}, "own"))["No Finding"] == 1
    finding = ReferenceSentence("t", {"Edema": -1, "Pneumothorax": 0}, "own")
    assert expected_labels(finding)["No Finding"] is None and expected_labels(finding)["Fracture"] is None


def test_agreement_table_and_cli(capsys):
    table = agreement_table(default_labeller(), SENTENCES[:3])
    row = table["Pneumothorax"]
    assert row["mentioned"] >= 1 and row["agree"] <= row["mentioned"]
    assert "| Pneumothorax |" in format_table(table, 3, 3)
    assert main([str(REFERENCE)]) == 0
    assert "| all 14 labels right (sentences) |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"text": "x", "labels": {}}, "keys text, labels and source"),
        ({"text": "x", "labels": {"Pneumo": 1}, "source": "own"}, "unknown or derived"),
        ({"text": "x", "labels": {"No Finding": 1}, "source": "own"}, "unknown or derived"),
        ({"text": "x", "labels": {"Edema": 2}, "source": "own"}, "must be 1, 0 or -1"),
    ],
)
def test_malformed_reference_is_rejected(tmp_path, entry, message):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"sentences": [entry]}))
    with pytest.raises(ValueError, match=message):
        load_reference(path)
    with pytest.raises(ValueError, match="cannot read reference sentences"):
        load_reference(tmp_path / "missing.json")
