"""Synthetic training batches in the batch contract of `data_pipeline.batches.grain_pipeline`, deterministic from (seed, index).

Used to exercise training (sharding, checkpoints, exact resume) before and apart from the real
data pipeline. Each batch index gives one global batch; a process takes its contiguous share
of rows. Every row is one sequence:

    [BOS] [image token x N per present image] question... answer... [padding]

The answer repeats the question shifted by one id, so a model can learn it; answer tokens carry
stage ids cycling through 1..8, so per-stage metrics all get tokens.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

__all__ = ["SyntheticSpec", "synthetic_batch", "synthetic_dataset"]

BOS_ID = 1
_FIRST_TEXT_ID = 3


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Shapes of the synthetic batches (take the model-side numbers from the model config).

    batch_size: global rows per batch; seq_len: L; max_images: M slots per row; image_size: H = W;
    tokens_per_image: N placeholder tokens per present image.
    """

    batch_size: int
    seq_len: int
    vocab_size: int
    image_token_id: int
    tokens_per_image: int
    max_images: int
    image_size: int
    seed: int = 0

    def __post_init__(self):
        needed = 1 + self.max_images * self.tokens_per_image + 8
        if self.seq_len < needed:
            raise ValueError(
                f"seq_len {self.seq_len} is too short for {self.max_images} images of "
                f"{self.tokens_per_image} tokens plus text; need at least {needed}"
            )
        if self.vocab_size < _FIRST_TEXT_ID + 8:
            raise ValueError(f"vocab_size {self.vocab_size} is too small for synthetic text")


def _text_ids(rng: np.random.Generator, spec: SyntheticSpec, count: int) -> np.ndarray:
    ids = rng.integers(_FIRST_TEXT_ID, spec.vocab_size - 1, size=count)
    return np.where(ids >= spec.image_token_id, ids + 1, ids).astype(np.int32)


def _row(rng: np.random.Generator, spec: SyntheticSpec) -> dict[str, np.ndarray]:
    length = spec.seq_len
    n_images = int(rng.integers(1, spec.max_images + 1))
    prefix = 1 + n_images * spec.tokens_per_image
    text_budget = length + 1 - prefix  # the sequence has L + 1 tokens (inputs and targets)
    question_len = int(rng.integers(2, max(3, text_budget // 2)))
    question = _text_ids(rng, spec, question_len)
    answer = question[: min(question_len, text_budget - question_len)] + 1
    answer = np.where(answer == spec.image_token_id, answer + 1, answer) % spec.vocab_size
    answer = np.maximum(answer, _FIRST_TEXT_ID).astype(np.int32)
    sequence = np.concatenate(
        [[BOS_ID], np.full(n_images * spec.tokens_per_image, spec.image_token_id), question, answer]
    ).astype(np.int32)
    real = len(sequence) - 1
    pad = length - real
    answer_start = len(sequence) - len(answer)  # index in `sequence` of the first answer token
    target_index = np.arange(1, length + 1)
    is_answer = (target_index >= answer_start) & (target_index < len(sequence))
    images = np.zeros((spec.max_images, spec.image_size, spec.image_size), np.float32)
    images[:n_images] = rng.random((n_images, spec.image_size, spec.image_size), dtype=np.float32)
    return {
        "input_tokens": np.pad(sequence[:-1], (0, pad)),
        "target_tokens": np.pad(sequence[1:], (0, pad)),
        "loss_mask": is_answer.astype(np.float32),
        "stage_ids": np.where(is_answer, 1 + (target_index - answer_start) % 8, 0).astype(np.int32),
        "segment_ids": np.pad(np.ones(real, np.int32), (0, pad)),
        "positions": np.pad(np.arange(real, dtype=np.int32), (0, pad)),
        "images": images,
        "image_mask": np.arange(spec.max_images) < n_images,
    }


def synthetic_batch(
    spec: SyntheticSpec, index: int, process_index: int = 0, process_count: int = 1
) -> dict[str, np.ndarray]:
    """Batch `index` (this process's rows of it): fields as in `data_pipeline.batches.grain_pipeline.BATCH_FIELDS`, batch dim first."""
    if spec.batch_size % process_count:
        raise ValueError(
            f"batch_size {spec.batch_size} is not divisible by {process_count} processes"
        )
    rng = np.random.default_rng([spec.seed, index])
    rows = [_row(rng, spec) for _ in range(spec.batch_size)]
    share = spec.batch_size // process_count
    mine = rows[process_index * share : (process_index + 1) * share]
    return {name: np.stack([r[name] for r in mine]) for name in mine[0]}


@dataclasses.dataclass(frozen=True)
class _BatchAt:
    """Picklable index -> batch transform (Grain may run it in worker processes)."""

    spec: SyntheticSpec
    process_index: int
    process_count: int

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        return synthetic_batch(self.spec, int(index), self.process_index, self.process_count)


def synthetic_dataset(
    spec: SyntheticSpec, num_batches: int, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """A Grain `MapDataset` of `num_batches` batches; its iterators are checkpointable."""
    return grain.MapDataset.range(num_batches).map(_BatchAt(spec, process_index, process_count))
