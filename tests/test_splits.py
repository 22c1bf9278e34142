"""The split names and a study's `split` field, read alike by the TFDS build and evaluation."""

import pytest

from data_pipeline.schema.records import Study, freeze
from data_pipeline.schema.splits import SPLIT_NAMES, canonical_split, split_field, study_split


def _study(cxrtrek=None, element=None):
    return Study("s1", pat_id="p1", cxrtrek_extras=freeze(cxrtrek or {}), extras=freeze(element or {}))


def test_the_three_splits_in_order():
    assert SPLIT_NAMES == ("train", "validation", "test")


@pytest.mark.parametrize("spelling, split", [("train", "train"), ("Training", "train"), (" val ", "validation"),
                                             ("VALID", "validation"), ("test", "test"), ("dev", None), (3, None)])
def test_canonical_split(spelling, split):
    assert canonical_split(spelling) == split


def test_study_split_reads_cxrtrek_data_first_and_names_an_unknown_value():
    assert study_split(_study({"split": "val"}, {"split": "train"})) == "validation"
    assert split_field(_study(element={"split": "test"})) == ("element", "test")
    assert study_split(_study()) is None
    with pytest.raises(ValueError, match=r"study 'p1/s1': unknown split 'holdout'"):
        study_split(_study(element={"split": "holdout"}))
