import dataclasses
import json
import pickle

import pytest

from data_pipeline.schema.records import FrozenMapping, QAItem, Study, freeze, thaw


def _study():
    items = (
        QAItem(2, "Findings_Identification", "yes_no", 1, "<image> Is there an effusion?", "Yes.",
               freeze({"score": [1, 2], "meta": {"a": None}})),
        QAItem(1, "View_Information", "single-choice", 1, "Which view?", "A. PA"),
    )
    return Study(study_id="s1", pat_id="p1", images=("a.png",), items=items,
                 cxrtrek_extras=freeze({"note": {"x": [1]}}))


def test_freeze_thaw_round_trip_is_json_identical():
    value = {"a": [1, {"b": [2, 3]}], "c": {"d": "e"}, "f": None}
    frozen = freeze(value)
    assert isinstance(frozen, FrozenMapping) and isinstance(frozen["a"], tuple)
    assert json.dumps(thaw(frozen)) == json.dumps(value)


def test_records_are_immutable():
    study = _study()
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.study_id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        study.items[0].extras["score"] = 3  # type: ignore[index]
    with pytest.raises(AttributeError):
        study.items[0].extras._data = {}  # type: ignore[attr-defined]


def test_records_pickle_for_grain_workers():
    study = _study()
    again = pickle.loads(pickle.dumps(study))
    assert again == study
    assert thaw(again.cxrtrek_extras) == {"note": {"x": [1]}}


def test_study_helpers_keep_given_order():
    study = _study()
    assert [i.stage for i in study.items] == [2, 1]  # never re-sorted
    assert study.stages() == (1, 2)
    assert study.items_of_stage(2)[0].num_placeholders == 1
    assert study.items[1].qtype_parsed.kind == "single-choice"
    assert not study.has_prior and study.replace(ref_study_id="s0").has_prior
