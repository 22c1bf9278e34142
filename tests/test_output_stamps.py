"""The one "is this output current" mechanism (`cxrtrek_jax.output_stamps`): a stamp records what
an output was made from; the output is current only when the stamp records exactly the inputs."""

import json
from pathlib import Path

import pytest

from cxrtrek_jax.output_stamps import is_current, read_stamp, write_stamp

INPUTS = {"studies": 20, "turns": (4, 6), "splits": "train=0.8", "where": Path("/data/x.json")}


def test_a_stamp_of_the_same_inputs_is_current_and_holds_them_as_json(tmp_path):
    stamp = tmp_path / ".complete"
    write_stamp(stamp, INPUTS)
    # What the file holds, written out by hand: the tuple as a list, the path as its text.
    assert json.loads(stamp.read_text()) == {"studies": 20, "turns": [4, 6], "splits": "train=0.8",
                                             "where": "/data/x.json"}
    assert stamp.read_text().endswith("\n") and [p.name for p in tmp_path.iterdir()] == [".complete"]
    assert is_current(stamp, INPUTS)
    assert is_current(stamp, {"where": "/data/x.json", "splits": "train=0.8", "turns": [4, 6], "studies": 20})


@pytest.mark.parametrize("changed", [{"studies": 21}, {"turns": (4, 7)}, {"seed": 0}])
def test_a_changed_or_added_input_is_not_current(tmp_path, changed):
    stamp = tmp_path / "inputs.json"
    write_stamp(stamp, INPUTS)
    assert not is_current(stamp, {**INPUTS, **changed})
    less = dict(INPUTS)
    del less["studies"]
    assert not is_current(stamp, less)


def test_a_missing_stamp_is_not_current_and_reading_it_says_so(tmp_path):
    assert not is_current(tmp_path / "inputs.json", INPUTS)
    with pytest.raises(FileNotFoundError):
        read_stamp(tmp_path / "inputs.json")


@pytest.mark.parametrize("text", ['{"studies": 20, "tur', "", "not json\n"])
def test_a_corrupt_stamp_is_not_current_and_reading_it_names_the_file(tmp_path, text):
    stamp = tmp_path / "demo_inputs.json"
    stamp.write_text(text)
    assert not is_current(stamp, INPUTS)
    with pytest.raises(ValueError, match=r"demo_inputs\.json: not JSON"):
        read_stamp(stamp)
    write_stamp(stamp, INPUTS)  # rewriting it makes the output current again
    assert is_current(stamp, INPUTS)


def test_the_files_a_stamp_requires_must_exist_too(tmp_path):
    stamp, metrics = tmp_path / "inputs.json", tmp_path / "metrics.json"
    write_stamp(stamp, INPUTS)
    assert not is_current(stamp, INPUTS, requires=(metrics,))
    metrics.write_text("{}")
    assert is_current(stamp, INPUTS, requires=(metrics,))
