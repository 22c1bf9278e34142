"""benchmarks.recipe_probe on the tiny preset: the dumped rows match the pipeline's contract, the
turn weighting and stage filter do what they say, and a two-phase recipe trains, evaluates with
swapped images and summarises."""

import json

import numpy as np
import pytest

from benchmarks import recipe_probe as rp

LENGTHS = {"on": 512, "off": 384}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    work = tmp_path_factory.mktemp("probe")
    counts = rp.dump_rows(work, 30, work / "rows.npz", preset="tiny", on_length=LENGTHS["on"])
    return work / "rows.npz", counts


def test_dump_has_staged_and_single_qa_rows_with_valid_images(rows):
    path, counts = rows
    data = np.load(path)
    assert counts["train_on"] > 0 and counts["validation_on"] > 0
    assert counts["train_off"] > counts["train_on"]  # one row per QA pair vs one per study
    for split in rp.SPLITS:
        for context in rp.ROW_LENGTH:
            p = f"{split}_{context}_"
            lens, index = data[p + "lens"], data[p + "img_index"]
            assert lens.sum() == len(data[p + "input_tokens"]) and lens.max() <= LENGTHS["on"]
            assert index.max() < len(data[p + "images"]) and (index[:, 0] >= 0).all()
            assert data[p + "images"].dtype == np.uint8
            offsets = np.concatenate([[0], np.cumsum(lens)])
            runs = [len(rp.answer_starts(data[p + "loss_mask"][a:b])) for a, b in zip(offsets[:-1], offsets[1:])]
            if context == "off":
                assert set(runs) == {1}
            else:
                assert min(runs) > 1
    ids = {word: int(data[f"token_{word}"]) for pair in rp.ANSWER_PAIRS.values() for word in pair}
    assert len(set(ids.values())) == 4


def test_turn_weights_give_every_answer_weight_one():
    mask = np.array([[0, 1, 1, 0, 1, 0, 1, 1, 1, 1]], np.float32)
    np.testing.assert_allclose(rp.turn_weights(mask), [[0, .5, .5, 0, 1, 0, .25, .25, .25, .25]])
    np.testing.assert_array_equal(rp.answer_starts(mask[0]), [1, 4, 6])


def test_rows_batch_and_stage_filter(rows):
    data = np.load(rows[0])
    every = rp.Rows(data, "train", "off")
    early = rp.Rows(data, "train", "off", stages=(1, 2))
    assert 0 < early.n < every.n
    batch = early.batch(list(range(early.n)), LENGTHS["off"])
    answer_stages = set(batch["stage_ids"][batch["loss_mask"] > 0].tolist())
    assert answer_stages <= {1, 2} and answer_stages
    first = int(early.keep[0])
    np.testing.assert_allclose(batch["images"][0, 0], data["train_off_images"][data["train_off_img_index"][first, 0]] / 255.0,
                               rtol=1e-6)
    length = int(data["train_off_lens"][first])
    assert batch["segment_ids"][0, :length].all() and not batch["segment_ids"][0, length:].any()
    assert batch["image_mask"].sum() == (data["train_off_img_index"][early.keep] >= 0).sum()


@pytest.mark.slow  # trains and evaluates (~30 s)
def test_recipe_trains_evaluates_and_summarises(rows, tmp_path):
    recipe = rp.Recipe("off:4:2,on:2:2", loss="turn", train_stages=(1, 2))
    log = tmp_path / "probe.jsonl"
    records = rp.run_recipe(rows[0], recipe, log, name="t", preset="tiny", eval_every=2, row_length=LENGTHS)
    assert [r["step"] for r in records] == [2, 4] and [r["ctx"] for r in records] == ["off", "on"]
    for r in records:
        assert np.isfinite(r["val_loss"]) and np.isfinite(r["image_gain"])
        assert any(k.endswith("_yn_acc") for k in r) and any(k.endswith("_yn_acc_swapped") for k in r)
    lines = log.read_text().splitlines()
    assert json.loads(lines[0])["recipe"]["train_stages"] == [1, 2] and len(lines) == 3
    table = rp.summary_table([log], [2, 4, 99])
    assert table.count("\n| t |") == 2 and "stages 1,2" in table and "| 99 |" not in table
    assert rp.summary_table([log], [2, -1]).count("\n| t |") == 2  # -1 adds the last evaluation (step 4)
    assert rp.summary_table([log], [4, -1]).count("\n| t |") == 1


def test_recipe_rejects_bad_phases_and_loss():
    with pytest.raises(ValueError, match="context:batch:steps"):
        rp.Recipe("on:4")
    with pytest.raises(ValueError, match="context must be one of"):
        rp.Recipe("both:4:10")
    with pytest.raises(ValueError, match="loss"):
        rp.Recipe("on:4:10", loss="sample")
    assert set(rp.RECIPES) >= {"demo", "turn_loss", "single_qa_first", "stages12_single_qa"}
