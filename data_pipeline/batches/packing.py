"""Batching helpers for training sequences: length buckets and first-fit packing (numpy only).

A *row* is one batch element of fixed length L: one or more sequences laid
end to end (`segment_ids` 1..k, 0 = padding; `positions` restart at 0 in each
segment) and up to `max_images` image slots holding the images of its
sequences, concatenated in order. Image placeholders in `input_tokens` follow
the same order, so the model can fill them slot by slot.

Sequences are anything with the `TrainingSequence` fields (`input_tokens`,
`target_tokens`, `loss_mask`, `stage_ids`, `positions`, `image_indices`,
`study_id`). Rows name their images by `(sequence number, image index)`;
`row_images` gathers the pixels once the images are loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = [
    "PackedRow",
    "FirstFitPacker",
    "choose_bucket",
    "length_buckets",
    "pad_sequence",
    "pack_sequences",
    "row_images",
    "stack_rows",
]


class _SequenceLike(Protocol):
    study_id: str
    input_tokens: np.ndarray
    target_tokens: np.ndarray
    loss_mask: np.ndarray
    stage_ids: np.ndarray
    positions: np.ndarray
    image_indices: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class PackedRow:
    """One batch row.

    input_tokens/target_tokens int32[L] (padding: pad_id); loss_mask float32[L];
    stage_ids, segment_ids, positions int32[L] (0 on padding).
    image_segment_ids int32[M]: segment of the image in each slot, 0 = empty slot.
    image_sources: (sequence number, index into that sequence's study images)
        per filled slot, in slot order.
    sequence_numbers: the sequences in the row, in segment order (segment k
        holds sequence_numbers[k - 1]).
    """

    input_tokens: np.ndarray
    target_tokens: np.ndarray
    loss_mask: np.ndarray
    stage_ids: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    image_segment_ids: np.ndarray
    image_sources: tuple[tuple[int, int], ...]
    sequence_numbers: tuple[int, ...]

    @property
    def image_mask(self) -> np.ndarray:
        """bool[M]: True where a slot holds an image."""
        return self.image_segment_ids > 0

    @property
    def num_tokens(self) -> int:
        """Non-padding tokens."""
        return int(np.count_nonzero(self.segment_ids))


def length_buckets(max_length: int, count: int = 4, multiple: int = 64) -> tuple[int, ...]:
    """`count` lengths doubling up to `max_length`, each rounded up to `multiple` (ascending, distinct)."""
    if max_length < 1 or count < 1 or multiple < 1:
        raise ValueError(f"need max_length, count, multiple >= 1, got {max_length}, {count}, {multiple}")
    rounded = {min(max_length, -(-max_length // (2**k * multiple)) * multiple) for k in range(count)}
    return tuple(sorted(rounded))


def choose_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= `length`; ValueError when `length` exceeds them all."""
    fitting = [b for b in buckets if b >= length]
    if not fitting:
        raise ValueError(f"sequence length {length} exceeds the largest bucket {max(buckets, default=0)}")
    return min(fitting)


class _RowBuilder:
    """A row being filled."""

    def __init__(self, length: int, max_images: int):
        self.length = length
        self.max_images = max_images
        self.used = 0
        self.members: list[tuple[int, _SequenceLike]] = []

    @property
    def num_images(self) -> int:
        return sum(len(seq.image_indices) for _, seq in self.members)

    def fits(self, seq: _SequenceLike) -> bool:
        return (
            self.used + len(seq.input_tokens) <= self.length
            and self.num_images + len(seq.image_indices) <= self.max_images
        )

    def add(self, number: int, seq: _SequenceLike) -> None:
        self.members.append((number, seq))
        self.used += len(seq.input_tokens)

    def finish(self, pad_id: int) -> PackedRow:
        length, max_images = self.length, self.max_images
        input_tokens = np.full(length, pad_id, np.int32)
        target_tokens = np.full(length, pad_id, np.int32)
        loss_mask = np.zeros(length, np.float32)
        stage_ids = np.zeros(length, np.int32)
        segment_ids = np.zeros(length, np.int32)
        positions = np.zeros(length, np.int32)
        image_segment_ids = np.zeros(max_images, np.int32)
        sources: list[tuple[int, int]] = []
        start = 0
        for segment, (number, seq) in enumerate(self.members, start=1):
            end = start + len(seq.input_tokens)
            input_tokens[start:end] = seq.input_tokens
            target_tokens[start:end] = seq.target_tokens
            loss_mask[start:end] = seq.loss_mask
            stage_ids[start:end] = seq.stage_ids
            segment_ids[start:end] = segment
            positions[start:end] = np.arange(end - start)
            image_segment_ids[len(sources) : len(sources) + len(seq.image_indices)] = segment
            sources += [(number, int(i)) for i in seq.image_indices]
            start = end
        return PackedRow(
            input_tokens, target_tokens, loss_mask, stage_ids, segment_ids, positions,
            image_segment_ids, tuple(sources), tuple(n for n, _ in self.members),
        )


def _check_fits(seq: _SequenceLike, number: int, length: int, max_images: int) -> None:
    if len(seq.input_tokens) > length:
        raise ValueError(
            f"sequence {number} (study {seq.study_id!r}) has {len(seq.input_tokens)} tokens, "
            f"more than the row length {length}"
        )
    if len(seq.image_indices) > max_images:
        raise ValueError(
            f"sequence {number} (study {seq.study_id!r}) has {len(seq.image_indices)} images, "
            f"more than max_images={max_images}"
        )


def pad_sequence(seq: _SequenceLike, length: int, max_images: int, pad_id: int, number: int = 0) -> PackedRow:
    """One sequence alone in a row of `length` tokens (e.g. `choose_bucket(len(seq), buckets)`)."""
    _check_fits(seq, number, length, max_images)
    row = _RowBuilder(length, max_images)
    row.add(number, seq)
    return row.finish(pad_id)


class FirstFitPacker:
    """Streaming first-fit packing into rows of `row_length` tokens and `max_images` image slots.

    `add(seq)` puts the sequence into the first open row with room for its
    tokens and its images, else opens a new row (so a sequence whose images
    do not fit starts a new row). When more than `max_open_rows` rows are open
    the oldest is finished and returned. `flush()` finishes the rest.
    Sequences are numbered 0, 1, ... in the order they are added.
    """

    def __init__(self, row_length: int, max_images: int, pad_id: int, max_open_rows: int | None = None):
        if row_length < 1 or max_images < 0:
            raise ValueError(f"need row_length >= 1 and max_images >= 0, got {row_length}, {max_images}")
        if max_open_rows is not None and max_open_rows < 1:
            raise ValueError(f"max_open_rows must be >= 1 or None, got {max_open_rows}")
        self.row_length = row_length
        self.max_images = max_images
        self.pad_id = pad_id
        self.max_open_rows = max_open_rows
        self._open: list[_RowBuilder] = []
        self._count = 0

    def add(self, seq: _SequenceLike) -> list[PackedRow]:
        """Add one sequence; returns the rows finished by this call (possibly none)."""
        number = self._count
        _check_fits(seq, number, self.row_length, self.max_images)
        self._count += 1
        for row in self._open:
            if row.fits(seq):
                row.add(number, seq)
                return []
        row = _RowBuilder(self.row_length, self.max_images)
        row.add(number, seq)
        self._open.append(row)
        if self.max_open_rows is not None and len(self._open) > self.max_open_rows:
            return [self._open.pop(0).finish(self.pad_id)]
        return []

    def flush(self) -> list[PackedRow]:
        """Finish every open row, oldest first."""
        rows = [row.finish(self.pad_id) for row in self._open]
        self._open = []
        return rows


def pack_sequences(
    sequences: Iterable[_SequenceLike], row_length: int, max_images: int, pad_id: int
) -> list[PackedRow]:
    """First-fit pack all `sequences` (every row stays open until the end)."""
    packer = FirstFitPacker(row_length, max_images, pad_id)
    for seq in sequences:
        packer.add(seq)
    return packer.flush()


def row_images(row: PackedRow, images: Any, image_shape: tuple[int, int]) -> np.ndarray:
    """float32[M, H, W] pixels of a row's image slots (zeros in empty slots).

    images: `images[sequence_number]` is float32[n, H, W], the images of
        that sequence's study indexed as in `image_indices` (a list or a dict).
    """
    out = np.zeros((len(row.image_segment_ids), *image_shape), np.float32)
    for slot, (number, index) in enumerate(row.image_sources):
        image = np.asarray(images[number][index], np.float32)
        if image.shape != tuple(image_shape):
            raise ValueError(f"image {index} of sequence {number} has shape {image.shape}, expected {image_shape}")
        out[slot] = image
    return out


def stack_rows(rows: Sequence[PackedRow], images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A batch dict (the training-batch contract) from rows of equal length.

    images: optional float32[B, M, H, W] (e.g. stacked `row_images`), added as `images`.
    """
    if not rows:
        raise ValueError("no rows to stack")
    lengths = {len(r.input_tokens) for r in rows}
    slots = {len(r.image_segment_ids) for r in rows}
    if len(lengths) != 1 or len(slots) != 1:
        raise ValueError(f"rows differ in length {sorted(lengths)} or image slots {sorted(slots)}")
    batch = {
        name: np.stack([getattr(r, name) for r in rows])
        for name in ("input_tokens", "target_tokens", "loss_mask", "stage_ids", "segment_ids", "positions")
    }
    batch["image_mask"] = np.stack([r.image_mask for r in rows])
    if images is not None:
        if images.shape[:2] != batch["image_mask"].shape:
            raise ValueError(f"images shape {images.shape} does not match [B, M] = {batch['image_mask'].shape}")
        batch["images"] = np.asarray(images, np.float32)
    return batch
