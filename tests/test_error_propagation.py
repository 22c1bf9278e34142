"""Error propagation: first wrong stage per study, later-stage accuracy, context-mode comparisons."""

import numpy as np
import pytest

from cxrtrek_jax.evaluation.metrics.error_propagation import StageOutcomes, compare_contexts
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from cxrtrek_jax.evaluation.scores.scoring import ScoringConfig, score_predictions

# study -> correctness of its closed-ended answer at stages 1, 2, 3 (context "own").
OWN_OUTCOMES = {
    "A": (False, True, False),
    "B": (True, True, True),
    "C": (True, False, True),
    "D": (True, True, False),
}
QUESTION = "Is there an abnormality?"


def _records():
    for study, outcomes in OWN_OUTCOMES.items():
        for stage, correct in enumerate(outcomes, start=1):
            for context in ("own", "teacher"):
                right = correct or context == "teacher"
                yield PredictionRecord(
                    study, stage - 1, stage, "Findings_Identification", "yes_no", QUESTION,
                    "Yes.", "Yes." if right else "No.", context,
                )


@pytest.fixture(scope="module")
def metrics():
    return score_predictions(_records(), ScoringConfig(meteor=False, bootstrap_resamples=300, seed=3))


def test_stage_outcomes():
    outcomes = StageOutcomes()
    outcomes.add("own", 0, 3, False)
    outcomes.add("own", 0, 2, True)
    outcomes.add("own", 0, 5, False)
    outcomes.add("own", 1, 1, True)
    assert outcomes.first_error_stage("own", 0) == 3
    assert outcomes.first_error_stage("own", 1) is None
    assert outcomes.had_error_before("own", 0, 5) and not outcomes.had_error_before("own", 0, 3)
    distribution = outcomes.first_error_distribution("own")
    assert distribution["3"] == 1 and distribution["none"] == 1 and sum(distribution.values()) == 2
    assert sum(outcomes.first_error_distribution("teacher").values()) == 0


def test_first_error_distribution(metrics):
    first = metrics["error_propagation"]["first_errors"]
    assert first["own"]["first_error_stage"] == {
        "1": 1, "2": 1, "3": 1, "4": 0, "5": 0, "6": 0, "7": 0, "8": 0, "none": 1,
    }
    assert first["teacher"]["first_error_stage"]["none"] == 4


def test_later_stage_accuracy_with_and_without_earlier_error(metrics):
    later = metrics["error_propagation"]["first_errors"]["own"]["later_stage_accuracy"]
    # Stage 2: A erred at stage 1 (then right); B, D right and C wrong without earlier error.
    assert later["2"]["with_earlier_error"]["value"] == 1.0 and later["2"]["with_earlier_error"]["n"] == 1
    assert later["2"]["without_earlier_error"]["value"] == pytest.approx(2 / 3)
    # Stage 3: A (wrong) and C (right) had an earlier error; B (right), D (wrong) had none.
    assert later["3"]["with_earlier_error"]["value"] == 0.5
    assert later["3"]["without_earlier_error"]["value"] == 0.5
    assert "1" not in later
    teacher = metrics["error_propagation"]["first_errors"]["teacher"]["later_stage_accuracy"]
    assert "with_earlier_error" not in teacher["2"]


def test_context_comparison_is_paired(metrics):
    comparison = metrics["error_propagation"]["context_comparison"]
    loss = comparison["overall"]["accuracy"]["own_context_loss"]
    assert loss["value"] == pytest.approx(1 - 8 / 12)
    low, high = loss["ci"]
    assert 0.0 < low <= loss["value"] <= high
    assert comparison["stage_2"]["accuracy"]["own_context_loss"]["value"] == pytest.approx(1 / 4)
    # No "none" context was scored, so there is no context gain.
    assert "context_gain" not in comparison["overall"]["accuracy"]


def test_compare_contexts_without_replicates():
    values = {"teacher": {"accuracy": 0.9, "cider": None}, "none": {"accuracy": 0.6, "cider": 1.0}}
    replicates = {"teacher": {"accuracy": np.array([0.8, 1.0])}, "none": {"accuracy": np.array([0.5, 0.6])}}
    out = compare_contexts(values, replicates, 0.95)
    assert out["accuracy"]["context_gain"]["value"] == pytest.approx(0.3)
    # Replicate differences 0.3 and 0.4: the 2.5th and 97.5th percentiles interpolate between them.
    assert out["accuracy"]["context_gain"]["ci"] == pytest.approx([0.3025, 0.3975])
    assert "cider" not in out
    assert compare_contexts(values, {}, 0.95)["accuracy"]["context_gain"]["ci"] is None
