"""Swapping images between studies keeps each row's slot layout and moves every image."""

import numpy as np

from cxrtrek_jax.train.image_reliance import image_gain, swap_images


def _batch():
    mask = np.array([[True, True, False], [True, False, False], [True, True, True]])
    images = np.zeros((3, 3, 2, 2), np.float32)
    ids = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    images[:] = ids[:, :, None, None]
    images[~mask] = 0.0
    return {"images": images, "image_mask": mask, "input_tokens": np.ones((3, 4), np.int32)}


def test_swap_never_gives_a_study_an_image_of_its_own_and_keeps_the_layout():
    batch = _batch()
    mask = batch["image_mask"]
    owner = {float(v): r for r in range(3) for v in batch["images"][r][mask[r]][:, 0, 0]}
    seen = set()
    for seed in range(20):
        swapped = swap_images(batch, seed)
        assert swapped["image_mask"] is batch["image_mask"] and swapped["input_tokens"] is batch["input_tokens"]
        for row in range(3):
            got = swapped["images"][row][mask[row]][:, 0, 0]
            # every present slot holds a real image, and it belongs to some other row (study)
            assert all(float(v) in owner and owner[float(v)] != row for v in got), (seed, row, got)
            assert np.all(swapped["images"][row][~mask[row]] == 0)  # absent slots stay empty
        seen.add(swapped["images"].tobytes())
    assert len(seen) > 1  # the seed changes which study gives to which
    assert np.array_equal(batch["images"], _batch()["images"])  # the input is not modified


def test_a_row_with_more_slots_than_its_donor_still_gets_only_foreign_images():
    # Two studies: A with three images, B with one. Whatever the seed, A's slots hold B's image only.
    mask = np.array([[True, True, True], [True, False, False]])
    images = np.zeros((2, 3, 1, 1), np.float32)
    images[0, :, 0, 0] = [1, 2, 3]
    images[1, 0, 0, 0] = 9
    for seed in range(5):
        swapped = swap_images({"images": images, "image_mask": mask}, seed)["images"]
        assert swapped[0, :, 0, 0].tolist() == [9, 9, 9]
        assert swapped[1, 0, 0, 0] == 1


def test_rows_of_one_study_are_never_swapped_with_each_other():
    # One QA pair per row (alignment, context "off"): rows 0-2 are study A (frontal a, some with its
    # lateral a2), rows 3-4 study B, row 5 study C whose prior is B's frontal. A swap between rows of
    # one study would leave the images unchanged, and C taking B's image would show C its prior.
    a, a2, b, c = 1.0, 2.0, 3.0, 4.0
    layout = [[a, a2], [a], [a, a2], [b], [b], [c, b]]
    mask = np.array([[True, len(r) > 1] for r in layout])
    images = np.zeros((6, 2, 2, 2), np.float32)
    for row, values in enumerate(layout):
        images[row, :len(values)] = np.asarray(values)[:, None, None]
    owned = [set(r) for r in layout]
    study = [0, 0, 0, 1, 1, 1]  # B and C are linked by their shared image
    donors_seen = set()
    for seed in range(20):
        swapped = swap_images({"images": images, "image_mask": mask}, seed)["images"]
        for row in range(6):
            got = set(swapped[row][mask[row]][:, 0, 0].tolist())
            assert not got & owned[row], (seed, row, got)
            holders = {r for r in range(6) if got <= owned[r]}
            assert all(study[r] != study[row] for r in holders), (seed, row, got)
            donors_seen.add((row, tuple(sorted(got))))
    assert ((5, (a, a2)) in donors_seen or (5, (a,)) in donors_seen)


def test_nothing_to_swap_between_rows_of_one_study():
    batch = _batch()
    batch["image_mask"] = np.ones((3, 3), bool)
    batch["images"][:] = batch["images"][0]  # three rows, one study's images in each
    assert swap_images(batch) is None


def test_nothing_to_swap_within_a_single_study():
    batch = _batch()
    batch["image_mask"] = np.zeros((3, 3), bool)
    batch["image_mask"][1, :2] = True  # two images, but of the same study
    assert swap_images(batch) is None


def test_nothing_to_swap_with_a_single_image():
    batch = _batch()
    batch["image_mask"] = np.zeros((3, 3), bool)
    batch["image_mask"][1, 0] = True
    assert swap_images(batch) is None


def test_gain_is_the_loss_increase_per_stage():
    own = {"loss": 1.0, "accuracy": 0.5, "stage1/loss": 0.5, "stage2/loss": 2.0, "stage2/tokens": 3}
    swapped = {"loss": 1.25, "accuracy": 0.4, "stage1/loss": 1.0, "stage2/loss": 2.0}
    assert image_gain(own, swapped) == {"image_gain": 0.25, "stage1/image_gain": 0.5, "stage2/image_gain": 0.0}
