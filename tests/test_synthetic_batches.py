"""Synthetic batches follow the batch contract of data_pipeline.batches.grain_pipeline and are deterministic."""

import numpy as np
import pytest

from cxrtrek_jax.testing import synthetic_batches as sb
from cxrtrek_jax.train import step as ts

SPEC = sb.SyntheticSpec(batch_size=4, seq_len=48, vocab_size=512, image_token_id=511,
                        tokens_per_image=16, max_images=2, image_size=32, seed=3)


def test_batch_follows_the_contract():
    batch = sb.synthetic_batch(SPEC, 5)
    ts.check_batch(batch)
    assert batch["input_tokens"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
    assert batch["images"].shape == (4, 2, 32, 32) and batch["image_mask"].dtype == bool
    for row in range(4):
        real = batch["segment_ids"][row] == 1
        n_real = int(real.sum())
        assert real[:n_real].all() and not real[n_real:].any()  # right padding
        np.testing.assert_array_equal(batch["positions"][row, :n_real], np.arange(n_real))
        # Targets are the inputs shifted by one.
        np.testing.assert_array_equal(batch["target_tokens"][row, : n_real - 1],
                                      batch["input_tokens"][row, 1:n_real])
        # N image tokens per present image; absent slots are black.
        n_images = int(batch["image_mask"][row].sum())
        assert (batch["input_tokens"][row] == SPEC.image_token_id).sum() == 16 * n_images
        assert not batch["images"][row, n_images:].any()
        # Answer tokens are scored, carry stages 1..8, and are never padding or image tokens.
        scored = batch["loss_mask"][row] == 1
        assert scored.any() and not scored[n_real:].any()
        assert set(batch["stage_ids"][row][scored]) <= set(range(1, 9))
        assert (batch["stage_ids"][row][~scored] == 0).all()
        assert not (batch["target_tokens"][row][scored] == SPEC.image_token_id).any()


def test_deterministic_and_split_across_processes():
    whole = sb.synthetic_batch(SPEC, 7)
    again = sb.synthetic_batch(SPEC, 7)
    for name in whole:
        np.testing.assert_array_equal(whole[name], again[name])
    halves = [sb.synthetic_batch(SPEC, 7, process_index=i, process_count=2) for i in range(2)]
    for name in whole:
        np.testing.assert_array_equal(np.concatenate([h[name] for h in halves]), whole[name])
    assert not np.array_equal(sb.synthetic_batch(SPEC, 8)["input_tokens"], whole["input_tokens"])
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        sb.synthetic_batch(SPEC, 0, process_count=3)


def test_dataset_iterator_is_checkpointable():
    iterator = iter(sb.synthetic_dataset(SPEC, 10))
    next(iterator)
    state = iterator.get_state()
    expected = next(iterator)
    fresh = iter(sb.synthetic_dataset(SPEC, 10))
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["input_tokens"], expected["input_tokens"])


def test_spec_rejects_too_short_sequences():
    with pytest.raises(ValueError, match="seq_len 20 is too short"):
        sb.SyntheticSpec(batch_size=1, seq_len=20, vocab_size=512, image_token_id=511,
                         tokens_per_image=16, max_images=2, image_size=32)
