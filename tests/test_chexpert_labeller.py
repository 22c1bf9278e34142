"""The CheXpert-style report labeller on hand-written report sentences."""

import json

import numpy as np
import pytest

from data_pipeline.reports.chexpert_labeller import (
    CHEXPERT_OBSERVATIONS,
    NEGATIVE,
    POSITIVE,
    RULES_DIR,
    UNCERTAIN,
    ReportLabeller,
    default_labeller,
    labeller_tokens,
)
from cxrtrek_jax.evaluation.metrics.clinical_efficacy import ce_item_statistics, ce_metrics, ce_statistics


def labels(report: str) -> dict:
    return {k: v for k, v in default_labeller().label(report).labels.items() if v is not None}


@pytest.mark.parametrize(
    "report, expected",
    [
        ("No pleural effusion.", {"Pleural Effusion": NEGATIVE, "No Finding": POSITIVE}),
        ("Cannot exclude pneumonia.", {"Pneumonia": UNCERTAIN}),
        ("Pneumonia cannot be excluded.", {"Pneumonia": UNCERTAIN}),
        ("Possible left lower lobe pneumonia.", {"Pneumonia": UNCERTAIN}),
        ("Findings suggestive of pulmonary edema.", {"Edema": UNCERTAIN}),
        ("Small left pleural effusion.", {"Pleural Effusion": POSITIVE}),
        ("Moderate right pleural effusions.", {"Pleural Effusion": POSITIVE}),
        ("Right pleural effusion has resolved.", {"Pleural Effusion": NEGATIVE, "No Finding": POSITIVE}),
        ("Pneumothorax is not seen.", {"Pneumothorax": NEGATIVE, "No Finding": POSITIVE}),
        ("Heart size is normal. The lungs are clear.",
         {"Cardiomegaly": NEGATIVE, "Lung Opacity": NEGATIVE, "No Finding": POSITIVE}),
        ("The heart is mildly enlarged.", {"Cardiomegaly": POSITIVE}),
        ("Heart size is not enlarged.", {"Cardiomegaly": NEGATIVE, "No Finding": POSITIVE}),
        ("Endotracheal tube terminates 4 cm above the carina.", {"Support Devices": POSITIVE, "No Finding": POSITIVE}),
        ("No change in the large left pleural effusion.", {"Pleural Effusion": POSITIVE}),
        ("", {"No Finding": POSITIVE}),
    ],
)
def test_sentence_labels(report, expected):
    assert labels(report) == expected


def test_negation_reaches_lists_and_stops_at_but():
    assert labels("No focal consolidation, pleural effusion, or pneumothorax.") == {
        "Consolidation": NEGATIVE, "Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE, "No Finding": POSITIVE,
    }
    assert labels("Effusion and pneumothorax are not seen.") == {
        "Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE, "No Finding": POSITIVE,
    }
    assert labels("No pneumothorax, but there is a small right pleural effusion.") == {
        "Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE,
    }
    # "no ... to suggest" carries the negation past the verb; sentences end every scope.
    assert labels("No focal consolidation is seen to suggest pneumonia.")["Pneumonia"] == NEGATIVE
    assert labels("No pneumothorax. Consolidation in the right lower lobe.")["Consolidation"] == POSITIVE


def test_aggregation_positive_beats_uncertain_beats_negative():
    assert labels("No left pleural effusion. Small right pleural effusion.")["Pleural Effusion"] == POSITIVE
    assert labels("No effusion on the right. Possible left effusion.")["Pleural Effusion"] == UNCERTAIN
    # Support devices alone do not stop "No Finding"; an uncertain finding does.
    assert "No Finding" not in labels("Possible small pneumothorax.")


def test_laterality_is_reported_per_mention():
    mentions = default_labeller().label(
        "Left pleural effusion. No right pleural effusion. Bibasilar atelectasis. Effusion on the right."
    ).mentions
    assert [(m.observation, m.status, m.laterality) for m in mentions] == [
        ("Pleural Effusion", "positive", "left"),
        ("Pleural Effusion", "negative", "right"),
        ("Atelectasis", "positive", "bilateral"),
        ("Pleural Effusion", "positive", "right"),
    ]
    assert [m.sentence for m in mentions] == [0, 1, 2, 3]


def test_ignore_phrases_and_plurals():
    assert labels("Small pericardial effusion.") == {"No Finding": POSITIVE}
    assert labeller_tokens("Opacities, effusions; X-ray") == ["opacity", ",", "effusion", ";", "x", "ray"]
    assert labels("Bilateral opacities.") == {"Lung Opacity": POSITIVE}


def test_positive_vector_uncertain_mapping():
    result = default_labeller().label("Cannot exclude pneumonia. Mild cardiomegaly.")
    names = np.array(CHEXPERT_OBSERVATIONS)
    assert set(names[result.positive_vector(True)]) == {"Pneumonia", "Cardiomegaly"}
    assert set(names[result.positive_vector(False)]) == {"Cardiomegaly"}


def test_rules_files_are_checked(tmp_path):
    observations = json.loads((RULES_DIR / "observations.json").read_text())
    cues = json.loads((RULES_DIR / "cues.json").read_text())
    conflicting = dict(cues, uncertainty_pre=cues["uncertainty_pre"] + ["without"])
    with pytest.raises(ValueError, match="'without' is listed as negation_pre and uncertainty_pre"):
        ReportLabeller(observations, conflicting)
    extra = {"Pneumo": {"mentions": [], "normal": []}}
    unknown = {**observations, "observations": {**observations["observations"], **extra}}
    with pytest.raises(ValueError, match="unknown observation"):
        ReportLabeller(unknown, cues)
    gap_first = {**observations, "ignore": ["... effusion"]}
    with pytest.raises(ValueError, match="starts/ends with"):
        ReportLabeller(gap_first, cues)
    with pytest.raises(ValueError, match="cannot read labeller rules"):
        ReportLabeller.from_rules_dir(tmp_path)


def test_clinical_efficacy_counts_and_f1():
    reference = "Left pleural effusion. Mild cardiomegaly. No pneumothorax."
    prediction = "Small left pleural effusion. Possible pneumothorax."
    stats, ref_pos, pred_pos = ce_item_statistics(default_labeller(), reference, prediction)
    assert ref_pos == ["Cardiomegaly", "Pleural Effusion"]
    assert pred_pos == ["Pneumothorax", "Pleural Effusion"]
    metrics = ce_metrics(stats)
    # tp: effusion; fp: pneumothorax; fn: cardiomegaly.
    assert metrics["ce_micro_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert metrics["ce_micro_precision"] == pytest.approx(0.5)
    assert metrics["ce_f1[Pleural Effusion]"] == 1.0 and metrics["ce_f1[Cardiomegaly]"] == 0.0
    # Macro F1 over the three observations with support: (1 + 0 + 0) / 3.
    assert metrics["ce_macro_f1"] == pytest.approx(1 / 3)
    assert metrics["ce5_macro_f1"] == pytest.approx(1 / 2)
    assert np.isnan(metrics["ce_f1[Edema]"])
    with pytest.raises(ValueError, match="bool\\[14\\]"):
        ce_statistics(np.zeros(5, bool), np.zeros(14, bool))
