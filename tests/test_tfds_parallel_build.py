"""The TFDS build with its examples prepared in worker processes writes the same data set."""

import json

import pytest
import tensorflow_datasets as tfds

from data_pipeline.files import tfds_builder as tb
from data_pipeline.schema.splits import SPLIT_NAMES
from test_tfds_builder import SPLIT, make_fixture

tfds.disable_progress_bar()


def _read_back(data_dir):
    """split -> [(study key, image bytes, turns' answers)] in stored order."""
    out = {}
    for split in SPLIT_NAMES:
        try:
            source = tfds.data_source(tb.DATASET_NAME, data_dir=str(data_dir), split=split)
        except (ValueError, KeyError):
            continue
        rows = []
        for i in range(len(source)):
            example = source[i]
            study = tb.example_to_study(example)
            rows.append((study.key, [bytes(b) for b in example["images"]], [t.answer for t in study.items]))
        out[split] = rows
    return out


def test_two_processes_write_what_one_process_writes(tmp_path):
    images, json_files = make_fixture(tmp_path)
    built = {}
    for processes in (1, 2):
        options = tb.BuildOptions(json_files=tuple(map(str, json_files)), split=SPLIT, processes=processes)
        summary = tb.build_dataset(options, images, tmp_path / f"out{processes}")
        built[processes] = (summary.examples, _read_back(tmp_path / f"out{processes}"))
    assert built[1] == built[2]
    assert sum(built[2][0].values()) == 6


def test_processes_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="processes must be a positive integer"):
        tb.BuildOptions(json_files=("a.json",), processes=0)
