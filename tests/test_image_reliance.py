"""Swapping images between studies keeps each row's slot layout and moves every image."""

import numpy as np

from cxrtrek_jax.evaluation.image_reliance import image_gain, swap_images


def _batch():
    mask = np.array([[True, True, False], [True, False, False], [True, True, True]])
    images = np.zeros((3, 3, 2, 2), np.float32)
    ids = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    images[:] = ids[:, :, None, None]
    images[~mask] = 0.0
    return {"images": images, "image_mask": mask, "input_tokens": np.ones((3, 4), np.int32)}


def test_swap_moves_every_present_image_and_keeps_the_layout():
    batch = _batch()
    for seed in range(5):
        swapped = swap_images(batch, seed)
        mask = batch["image_mask"]
        assert swapped["image_mask"] is batch["image_mask"] and swapped["input_tokens"] is batch["input_tokens"]
        before, after = batch["images"][mask][:, 0, 0], swapped["images"][mask][:, 0, 0]
        assert sorted(after) == sorted(before)  # a permutation of the present images ...
        assert np.all(after != before)  # ... with none left in its own slot
        assert np.all(swapped["images"][~mask] == 0)  # absent slots stay empty
    assert not np.array_equal(swap_images(batch, 0)["images"], swap_images(batch, 1)["images"])
    assert np.array_equal(batch["images"], _batch()["images"])  # the input is not modified


def test_nothing_to_swap_with_a_single_image():
    batch = _batch()
    batch["image_mask"] = np.zeros((3, 3), bool)
    batch["image_mask"][1, 0] = True
    assert swap_images(batch) is None


def test_gain_is_the_loss_increase_per_stage():
    own = {"loss": 1.0, "accuracy": 0.5, "stage1/loss": 0.5, "stage2/loss": 2.0, "stage2/tokens": 3}
    swapped = {"loss": 1.25, "accuracy": 0.4, "stage1/loss": 1.0, "stage2/loss": 2.0}
    assert image_gain(own, swapped) == {"image_gain": 0.25, "stage1/image_gain": 0.5, "stage2/image_gain": 0.0}
