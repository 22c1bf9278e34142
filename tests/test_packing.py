"""Length buckets and first-fit packing of training sequences into rows with segment ids and image slots."""

import numpy as np
import pytest

from data_pipeline.batches.packing import (
    FirstFitPacker,
    choose_bucket,
    length_buckets,
    pack_sequences,
    pad_sequence,
    row_images,
    stack_rows,
)
from data_pipeline.schema.records import QAItem, Study
from data_pipeline.text.sequences import SequenceConfig, TrainingSequence, build_sequences
from data_pipeline.text.tokenizer import train_tokenizer

PAD = 0


def _seq(name, length, images, base=10):
    """A synthetic sequence: tokens base, base+1, ...; answer = second half; stage 2."""
    tokens = np.arange(base, base + length + 1, dtype=np.int32)
    loss = np.zeros(length, np.float32)
    loss[length // 2 :] = 1.0
    return TrainingSequence(
        study_id=name,
        input_tokens=tokens[:-1],
        target_tokens=tokens[1:],
        loss_mask=loss,
        stage_ids=np.full(length, 2, np.int32),
        positions=np.arange(length, dtype=np.int32),
        image_indices=tuple(range(images)),
        turn_indices=(0,),
    )


def test_length_buckets_and_choice():
    assert length_buckets(1024) == (128, 256, 512, 1024)
    assert length_buckets(1000, count=3, multiple=100) == (300, 500, 1000)
    assert length_buckets(64, count=4, multiple=64) == (64,)
    assert choose_bucket(129, (128, 256, 512)) == 256
    assert choose_bucket(128, (512, 128)) == 128
    with pytest.raises(ValueError, match="sequence length 600 exceeds the largest bucket 512"):
        choose_bucket(600, (128, 512))
    with pytest.raises(ValueError, match="need max_length"):
        length_buckets(0)


def test_pad_sequence_single_segment():
    seq = _seq("s", 5, 2)
    row = pad_sequence(seq, choose_bucket(len(seq), (4, 8)), max_images=3, pad_id=PAD)
    np.testing.assert_array_equal(row.input_tokens, [10, 11, 12, 13, 14, PAD, PAD, PAD])
    np.testing.assert_array_equal(row.target_tokens, [11, 12, 13, 14, 15, PAD, PAD, PAD])
    np.testing.assert_array_equal(row.loss_mask, [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(row.stage_ids, [2, 2, 2, 2, 2, 0, 0, 0])
    np.testing.assert_array_equal(row.segment_ids, [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(row.positions, [0, 1, 2, 3, 4, 0, 0, 0])
    np.testing.assert_array_equal(row.image_segment_ids, [1, 1, 0])
    np.testing.assert_array_equal(row.image_mask, [True, True, False])
    assert row.image_sources == ((0, 0), (0, 1)) and row.num_tokens == 5


def test_first_fit_packing_segments_positions_and_image_slots():
    seqs = [
        _seq("a", 5, 1, base=10),
        _seq("b", 3, 2, base=20),  # fits row 0 by length, not by images (1 + 2 > 2): new row
        _seq("c", 3, 1, base=30),  # first fit: row 0 (5 + 3 = 8 tokens, 2 images)
        _seq("d", 4, 0, base=40),  # row 0 full; row 1 has room (3 + 4)
        _seq("e", 2, 0, base=50),  # nothing fits: row 2
    ]
    rows = pack_sequences(seqs, row_length=8, max_images=2, pad_id=PAD)
    assert [r.sequence_numbers for r in rows] == [(0, 2), (1, 3), (4,)]
    r0, r1, r2 = rows
    np.testing.assert_array_equal(r0.input_tokens, [10, 11, 12, 13, 14, 30, 31, 32])
    np.testing.assert_array_equal(r0.target_tokens, [11, 12, 13, 14, 15, 31, 32, 33])
    np.testing.assert_array_equal(r0.segment_ids, [1, 1, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(r0.positions, [0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_array_equal(r0.loss_mask, [0, 0, 1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(r0.image_segment_ids, [1, 2])
    assert r0.image_sources == ((0, 0), (2, 0))
    np.testing.assert_array_equal(r1.input_tokens, [20, 21, 22, 40, 41, 42, 43, PAD])
    np.testing.assert_array_equal(r1.segment_ids, [1, 1, 1, 2, 2, 2, 2, 0])
    np.testing.assert_array_equal(r1.positions, [0, 1, 2, 0, 1, 2, 3, 0])
    np.testing.assert_array_equal(r1.image_segment_ids, [1, 1])
    assert r1.image_sources == ((1, 0), (1, 1))
    np.testing.assert_array_equal(r2.segment_ids, [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(r2.image_mask, [False, False])
    assert sum(r.num_tokens for r in rows) == sum(len(s) for s in seqs)


def test_packer_limits_open_rows():
    packer = FirstFitPacker(row_length=4, max_images=1, pad_id=PAD, max_open_rows=2)
    assert packer.add(_seq("a", 3, 0)) == []
    assert packer.add(_seq("b", 3, 0)) == []
    finished = packer.add(_seq("c", 3, 0))
    assert [r.sequence_numbers for r in finished] == [(0,)]
    assert packer.add(_seq("d", 1, 0)) == []  # first open row (b) still has room
    assert [r.sequence_numbers for r in packer.flush()] == [(1, 3), (2,)]
    assert packer.flush() == []


def test_oversized_sequences_are_errors_naming_the_study():
    with pytest.raises(ValueError, match=r"sequence 0 \(study 'big'\) has 9 tokens, more than the row length 8"):
        pack_sequences([_seq("big", 9, 0)], 8, 2, PAD)
    with pytest.raises(ValueError, match=r"sequence 1 \(study 'many'\) has 3 images, more than max_images=2"):
        pack_sequences([_seq("ok", 2, 0), _seq("many", 2, 3)], 8, 2, PAD)
    with pytest.raises(ValueError, match="max_open_rows"):
        FirstFitPacker(8, 2, PAD, max_open_rows=0)


def test_row_images_and_stack_rows():
    seqs = [_seq("a", 5, 1), _seq("b", 3, 2), _seq("c", 3, 1)]
    rows = pack_sequences(seqs, row_length=8, max_images=3, pad_id=PAD)
    assert [r.sequence_numbers for r in rows] == [(0, 1), (2,)]
    pixels = [np.stack([np.full((4, 4), 10 * n + i, np.float32) for i in range(2)]) for n in range(3)]
    images = np.stack([row_images(r, pixels, (4, 4)) for r in rows])
    assert images.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(images[0, :, 0, 0], [0, 10, 11])  # a's image 0, b's images 0 and 1
    np.testing.assert_array_equal(images[1, :, 0, 0], [20, 0, 0])  # c's image 0, then empty slots
    batch = stack_rows(rows, images)
    assert set(batch) == {
        "input_tokens", "target_tokens", "loss_mask", "stage_ids", "segment_ids", "positions", "image_mask", "images",
    }
    assert batch["input_tokens"].shape == (2, 8) and batch["input_tokens"].dtype == np.int32
    assert batch["loss_mask"].dtype == np.float32 and batch["image_mask"].dtype == bool
    np.testing.assert_array_equal(batch["image_mask"], [[True, True, True], [True, False, False]])
    with pytest.raises(ValueError, match="expected"):
        row_images(rows[0], [np.zeros((2, 3, 3))] * 3, (4, 4))
    with pytest.raises(ValueError, match="differ in length"):
        stack_rows([rows[0], pad_sequence(seqs[0], 16, 3, PAD)])
    with pytest.raises(ValueError, match="does not match"):
        stack_rows(rows, images[:, :2])


def test_packed_real_sequences_keep_image_tokens_with_their_segment():
    """Built studies packed together: each segment's image tokens match its image slots, in order."""
    def item(stage, count, q, a):
        return QAItem(stage=stage, task_type="t", qtype="captioning", image_input_count=count, question=q, answer=a)

    studies = [
        Study(study_id=f"s{k}", images=tuple(f"{k}_{i}.png" for i in range(k % 2 + 1)),
              items=(item(1, k % 2 + 1, "<image>\n" * (k % 2 + 1) + "View?", "PA." * (k + 1)), item(2, k % 2 + 1, "Effusion?", "No.")))
        for k in range(5)
    ]
    tok = train_tokenizer(["View? PA. Effusion? No."] * 5, 300)
    tokens_per_image = 2
    config = SequenceConfig(max_length=256, tokens_per_image=tokens_per_image, system_prompt="Read.")
    seqs = [s for study in studies for s in build_sequences(study, tok, config)[0]]
    rows = pack_sequences(seqs, row_length=128, max_images=3, pad_id=tok.pad_id)
    assert len(rows) < len(seqs)
    for row in rows:
        for segment, number in enumerate(row.sequence_numbers, start=1):
            in_segment = row.segment_ids == segment
            n_images = int(np.sum(row.image_segment_ids == segment))
            assert n_images == seqs[number].num_images
            assert int(np.sum(row.input_tokens[in_segment] == tok.image_id)) == n_images * tokens_per_image
            np.testing.assert_array_equal(row.input_tokens[in_segment], seqs[number].input_tokens)
        assert np.all(row.input_tokens[row.segment_ids == 0] == tok.pad_id)
        assert np.all(row.loss_mask[row.segment_ids == 0] == 0)
