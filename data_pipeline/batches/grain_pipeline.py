"""The Grain input pipeline: studies -> numpy training batches (the common training-batch contract).

    source (TFDS array_record split, or CXRTrek JSON + image root)      MapDataset
      -> shuffle(seed)                 global, reshuffled every epoch (train only)
      -> random_map(PrepareStudy)      crop/intensity augmentation drawn from the
                                       example's global index; images decoded and
                                       resized to the model input; the study
                                       tokenised through the shared chat template
                                       (`data_pipeline.text.sequences`)
      -> [process_index::process_count] each JAX process reads only its share
      -> repeat(num_epochs)            None = forever
      -> to_iter_dataset -> mp_prefetch(workers)
      -> StudyBatchIterDataset         length buckets or first-fit packing, in
                                       this process (so batches do not depend on
                                       the worker count)

Slicing after the shuffle and before `repeat` means epoch e of process p is
the positions p, p + P, ... of the epoch-e permutation: the processes together
see every study exactly once per epoch, with no overlap. When P does not
divide the study count the shares differ by one study per epoch, so in a
finite pass the processes' batch counts can differ (a multi-process eval loop
must allow for that). Augmentation draws depend only on (seed, epoch, position
in the permutation), not on the process or worker count, and a restored
iterator draws them again identically.

Batches (per process, `PipelineConfig.per_process_batch_size` rows):
`input_tokens`, `target_tokens` int32[B, L]; `loss_mask` float32[B, L];
`stage_ids`, `segment_ids`, `positions` int32[B, L]; `images`
float32[B, M, H, W] (M = max_images, H = W = image_size); `image_mask`
bool[B, M]. L is the smallest length bucket holding the batch's longest row.
Without packing a batch holds the next B sequences, one per row; with packing,
the next sequences first-fit into B rows of max(length_buckets) tokens and
max_images image slots. Rows short of B at the end of a finite pass are padding
(`segment_ids` 0, `loss_mask` 0, no images): no example is ever dropped.
With `image_labels` (no packing) two more fields, `IMAGE_LABEL_FIELDS`:
`image_labels`, `image_label_mask` float32[B, K], the finding labels of the row
study's current image (`data_pipeline.text.image_labels`; mask 0 where unknown, on
padding rows, and on rows whose first image slot is not the current image).
With `blank_images` = v every filled image slot holds the constant v (`blank_images`, the
text-only experiment): the same slots, `image_mask` and tokens as without, only the pixels gone.
Running counts (studies, turns dropped by truncation, padding, ...) are
`iterator.stats`, saved and restored with the iterator state.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from data_pipeline.batches.augment import (
    AugmentConfig,
    CropWindow,
    IntensityChange,
    adjust_intensity,
    crop_image,
    crop_study_boxes,
    sample_crop,
    sample_intensity,
    study_box_extent,
)
from data_pipeline.text.image_labels import IMAGE_LABEL_KINDS, study_image_labels
from data_pipeline.files.image_processing import ImageProcessing, model_input
from data_pipeline.files.images import resize_with_pad_params
from data_pipeline.batches.packing import choose_bucket, pack_sequences, pad_sequence, row_images, stack_rows
from data_pipeline.text.sequences import SequenceConfig, SequenceStats, TrainingSequence, build_sequences
from data_pipeline.schema.splits import TRAIN
from data_pipeline.files.sources import SOURCE_KINDS, StudyRecord, open_study_source
from data_pipeline.text.tokenizer import CXRTrekTokenizer

__all__ = [
    "BATCH_FIELDS",
    "IMAGE_LABEL_FIELDS",
    "BatchLayout",
    "BatchStats",
    "PipelineConfig",
    "PipelineStats",
    "PrepareStudy",
    "PreparedStudy",
    "StudyBatchIterDataset",
    "StudyBatchIterator",
    "build_eval_dataset",
    "build_eval_iterator",
    "build_train_dataset",
    "build_train_iterator",
    "ensure_absl_flags_parsed",
    "blank_images",
    "check_blank_value",
]

BATCH_FIELDS = (
    "input_tokens",
    "target_tokens",
    "loss_mask",
    "stage_ids",
    "segment_ids",
    "positions",
    "images",
    "image_mask",
)
IMAGE_LABEL_FIELDS = ("image_labels", "image_label_mask")
_TOKEN_FIELDS = ("input_tokens", "target_tokens", "loss_mask", "stage_ids", "segment_ids", "positions")


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything the input pipeline needs besides the tokenizer; `sequence` says how a study
    becomes training sequences (context, stage filters, long chains, image slots).

    source: the TFDS data dir (`source_kind` "tfds", read split `split`) or a
        CXRTrek JSON file ("json", images under `image_root`); "" = not yet set
        (a training run sets it to the data set it prepared).
    image_size: the model's square input size in pixels (images are resized
        with padding, `resize_with_pad`, unless `image_processing` says otherwise);
        None = not yet set (a training run takes it from the model).
        `sequence.tokens_per_image` and `sequence.max_images` (the image slots M
        per row) likewise.
    global_batch_size: rows per step over all processes.
    length_buckets: allowed row lengths L, ascending; the largest is the
        longest sequence (`sequence.max_length`, set from it;
        `sequence.long_chains` says what happens to a longer chain).
    packing: first-fit pack several sequences per row (segment ids 1..k).
    seed: shuffle and augmentation seed, in [0, 2**32) (the stage shuffle has
        its own, `sequence.shuffle_seed`).
    num_epochs: passes over the data for training (None = forever).
    num_workers: Grain worker processes (0 = in this process); worker_buffer_size:
        prepared studies each worker keeps ready; read_threads: threads per process
        preparing studies.
    augment: training augmentation strengths (`AugmentConfig.none()` = off).
    image_labels: add each row's current-image finding labels (`IMAGE_LABEL_FIELDS`, for an
        auxiliary image-label loss); needs packing off (a packed row holds several studies).
    blank_images: None = the images as decoded; a value v in [0, 1] (model-input pixel units,
        0 = black) = every image of every study replaced by the constant v before batching, in
        training and in evaluation alike (`blank_images`): a text-only model. The images keep
        their slots, so the token layout, `image_mask` and the text (crop-shifted boxes
        included) are those of the unblanked pipeline; only the pixels differ. The text-only
        experiment uses the vision tower's `pixel_mean` (0.5), which normalises to 0.
    image_processing: how an image is fitted to image_size (an imported checkpoint's processor,
        `data_pipeline.files.image_processing`); None = ours, resize with pad. Its size must be
        image_size. Crop augmentation works on the source image before fitting, so it applies to
        every kind; an intensity change applies to the fitted image's content (all of it when
        the image is cropped or squashed rather than padded).
    """

    source: str = ""
    source_kind: str = "tfds"
    split: str = TRAIN
    image_root: str | None = None
    image_size: int | None = None
    global_batch_size: int = 8
    length_buckets: tuple[int, ...] = (512, 1024, 2048)
    packing: bool = False
    seed: int = 0
    num_epochs: int | None = None
    num_workers: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2
    augment: AugmentConfig = AugmentConfig()
    sequence: SequenceConfig = SequenceConfig()
    image_labels: bool = False
    blank_images: float | None = None
    image_processing: ImageProcessing | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", str(self.source))
        check_blank_value(self.blank_images, "PipelineConfig.blank_images")
        if self.image_root is not None:
            object.__setattr__(self, "image_root", str(self.image_root))
        if self.source_kind not in SOURCE_KINDS:
            raise ValueError(f"source_kind must be one of {SOURCE_KINDS}, got {self.source_kind!r}")
        if self.source_kind == "json" and self.source and self.image_root is None:
            raise ValueError("a JSON source needs image_root")
        buckets = tuple(int(b) for b in self.length_buckets)
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 2:
            raise ValueError(f"length_buckets must be distinct, ascending and >= 2, got {self.length_buckets}")
        object.__setattr__(self, "length_buckets", buckets)
        if self.sequence.max_length is not None and self.sequence.max_length != buckets[-1]:
            raise ValueError(f"sequence.max_length {self.sequence.max_length} differs from the largest "
                             f"length bucket {buckets[-1]}; leave it unset (None): it is set from the buckets")
        for name in ("global_batch_size", "worker_buffer_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if None not in (self.image_processing, self.image_size) and self.image_processing.size != self.image_size:
            raise ValueError(f"image_processing ({self.image_processing.source}) makes "
                             f"{self.image_processing.size}x{self.image_processing.size} images, image_size is "
                             f"{self.image_size}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None (forever), got {self.num_epochs}")
        if self.num_workers < 0 or self.read_threads < 0:
            raise ValueError(f"num_workers and read_threads must be >= 0, got {self.num_workers}, {self.read_threads}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.image_labels and self.packing:
            raise ValueError("image_labels needs packing off: a packed row holds several studies' "
                             "images, and a row's labels describe one study's current image")

    def check_complete(self) -> "PipelineConfig":
        """self, or a ValueError naming each field still unset ("" or None) that a pipeline needs."""
        unset = [name for name, value in (("source", self.source), ("image_size", self.image_size),
                                          ("sequence.tokens_per_image", self.sequence.tokens_per_image),
                                          ("sequence.max_images", self.sequence.max_images))
                 if value in ("", None)]
        if unset:
            raise ValueError(f"PipelineConfig: {', '.join(unset)} not set (a training run sets them from "
                             "the prepared data and the model; direct users give them)")
        if self.source_kind == "json" and self.image_root is None:
            raise ValueError("a JSON source needs image_root")
        return self

    @property
    def max_length(self) -> int:
        return self.length_buckets[-1]

    @property
    def max_images(self) -> int | None:
        """Image slots per row (M) = `sequence.max_images`."""
        return self.sequence.max_images

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    def sequence_config(self) -> SequenceConfig:
        """`sequence` with `max_length` set to the largest length bucket."""
        return dataclasses.replace(self.sequence, max_length=self.max_length).check_complete()

    def per_process_batch_size(self, process_count: int) -> int:
        """global_batch_size / process_count (ValueError when it does not divide)."""
        if process_count < 1 or self.global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} does not split over {process_count} process(es)"
            )
        return self.global_batch_size // process_count

    def augmentation_seed(self) -> int:
        """The `random_map` seed, derived from `seed` (distinct from the shuffle's)."""
        return int(np.random.SeedSequence([self.seed, 1]).generate_state(1)[0])


# ----------------------------------------------------------------------------- blank images


def check_blank_value(value: float | None, where: str) -> None:
    """ValueError naming `where` unless `value` is None or a pixel value in [0, 1]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{where} must be None (images as decoded) or a pixel value in [0, 1] "
                         f"(0 = black), got {value!r}")


def blank_images(count: int, image_size: int, value: float) -> np.ndarray:
    """float32[count, S, S] (S = image_size): `count` model-input images with every pixel `value`,
    what a `blank_images` pipeline and the evaluation of its checkpoints feed the image slots."""
    check_blank_value(value, "blank image value")
    return np.full((count, image_size, image_size), value, np.float32)


# ----------------------------------------------------------------------------- per-study preparation


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedStudy:
    """One study ready to batch.

    sequences: its training sequences (one, or one per turn with context "off").
    images: image index -> float32[H, W] model-input image, for every index
        the sequences use.
    stats: what `build_sequences` kept and dropped.
    image_labels: (labels, known) float32[K] of the current image (`study_image_labels`), or
        None when the pipeline does not emit labels.
    """

    study_id: str
    sequences: tuple[TrainingSequence, ...]
    images: Mapping[int, np.ndarray]
    stats: SequenceStats
    image_labels: tuple[np.ndarray, np.ndarray] | None = None


class PrepareStudy:
    """Picklable `StudyRecord -> PreparedStudy` (a Grain map, or random map with an rng).

    With an rng and an augmentation: one crop window per study (boxes in the
    text follow it), then one intensity change per image, drawn in image
    order. Without: the images as they are. Then every used image is fitted to
    `image_size` by `processing` (None: resized with padding; `model_input`). With an rng,
    the sequences flip answers as `sequence_config.answer_flips` says (drawn after the augmentation's draws). With
    `blank_value` (`PipelineConfig.blank_images`) every used image is that constant instead, and is
    not decoded (only the current image is, when a crop window must be snapped to its size): the
    random draws, the crop and so the sequences are those of the unblanked preparation.
    """

    def __init__(
        self,
        tokenizer: CXRTrekTokenizer,
        sequence_config: SequenceConfig,
        image_size: int,
        augment: AugmentConfig | None = None,
        image_labels: bool = False,
        blank_value: float | None = None,
        processing: ImageProcessing | None = None,
    ):
        check_blank_value(blank_value, "PrepareStudy blank_value")
        self.processing = processing
        self.tokenizer = tokenizer
        self.sequence_config = sequence_config
        self.image_size = image_size
        self.augment = None if augment is None or augment.is_identity else augment
        self.image_labels = image_labels
        self.blank_value = blank_value

    def __call__(self, record: StudyRecord, rng: np.random.Generator | None = None) -> PreparedStudy:
        study = record.study
        loaded: dict[int, np.ndarray] = {}
        window = CropWindow()
        changes = [IntensityChange()] * study.num_images
        if self.augment is not None and rng is not None:
            window = sample_crop(rng, self.augment, study_box_extent(study))
            changes = [sample_intensity(rng, self.augment) for _ in range(study.num_images)]
            if study.num_images and not window.is_full:
                loaded[0] = record.load_image(0)
                window = window.snapped(*loaded[0].shape)
                study = crop_study_boxes(study, window)
        sequences, stats = build_sequences(study, self.tokenizer, self.sequence_config, rng)
        used = sorted({k for seq in sequences for k in seq.image_indices})
        if self.blank_value is not None:
            images = dict(zip(used, blank_images(len(used), self.image_size, self.blank_value)))
        else:
            images = {}
            for k in used:
                image = crop_image(loaded[k] if k in loaded else record.load_image(k), window)
                images[k] = self._to_model_input(image, changes[k])
        labels = study_image_labels(study) if self.image_labels else None
        return PreparedStudy(study.key, tuple(sequences), images, stats, labels)

    def _to_model_input(self, image: np.ndarray, change: IntensityChange) -> np.ndarray:
        """Fit to the model size (`model_input`); the intensity change touches the content only (the
        whole image unless it is padded)."""
        out = model_input(image, self.image_size, self.processing)
        if change == IntensityChange():
            return out
        if self.processing is not None and self.processing.kind != "pad":
            return adjust_intensity(out, change)
        p = resize_with_pad_params(image.shape, self.image_size)
        content = (slice(p.offset_y, p.offset_y + p.content_h), slice(p.offset_x, p.offset_x + p.content_w))
        return adjust_intensity(out, change, content)


# ----------------------------------------------------------------------------- batching


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """Shape rules of the batches: B rows, L from `length_buckets`, M image slots of `image_shape`."""

    batch_size: int
    length_buckets: tuple[int, ...]
    max_images: int
    image_shape: tuple[int, int]
    pad_id: int
    packing: bool = False
    image_labels: bool = False


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """Counts over the batches produced so far.

    rows: rows holding at least one sequence; padding_rows: empty rows that
    fill a short final batch; sequences: sequences batched; tokens: non-padding
    token slots; token_slots: B * L summed over batches; answer_tokens: sum of
    loss_mask; images: filled image slots.
    """

    batches: int = 0
    rows: int = 0
    padding_rows: int = 0
    sequences: int = 0
    tokens: int = 0
    token_slots: int = 0
    answer_tokens: int = 0
    images: int = 0

    def __add__(self, other: "BatchStats") -> "BatchStats":
        return BatchStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True)
class PipelineStats:
    """Running counts of an iterator: the studies pulled so far (`SequenceStats`:
    turns kept, excluded, dropped by truncation, ...) and the batches produced."""

    studies: SequenceStats = SequenceStats()
    batches: BatchStats = BatchStats()

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"studies": dataclasses.asdict(self.studies), "batches": dataclasses.asdict(self.batches)}

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, int]]) -> "PipelineStats":
        studies = {k: tuple(v) if isinstance(v, list) else v for k, v in data["studies"].items()}
        return cls(SequenceStats(**studies), BatchStats(**data["batches"]))


# A sequence, its study's images and its study's image labels (None unless the layout asks).
_Item = tuple[TrainingSequence, Mapping[int, np.ndarray], tuple[np.ndarray, np.ndarray] | None]


class StudyBatchIterator(grain.DatasetIterator):
    """Pulls `PreparedStudy` elements, emits batches; see `StudyBatchIterDataset`.

    State: the parent's state before the study holding the next unbatched
    sequence, how many of that study's sequences are already batched, and the
    running stats. Every batch is built from a contiguous run of sequences, so
    restoring that state rebuilds exactly the batches that would have come.
    """

    def __init__(self, parent: grain.DatasetIterator, layout: BatchLayout):
        super().__init__(parent)
        self._layout = layout
        self._current: PreparedStudy | None = None
        self._offset = 0
        self._state_before_current: Any = None
        self._skip_on_pull = 0
        self._count_on_pull = True
        self._stats = PipelineStats()
        self._last_study_ids: tuple[tuple[str, ...], ...] = ()

    @property
    def stats(self) -> PipelineStats:
        """Running counts up to the last batch returned (studies count once pulled)."""
        return self._stats

    @property
    def last_study_ids(self) -> tuple[tuple[str, ...], ...]:
        """Per row of the last batch, the study ids of its segments in order (() for padding rows)."""
        return self._last_study_ids

    # --- reading sequences ---------------------------------------------------------------
    def _peek(self) -> _Item | None:
        """The next unbatched sequence and its study's images, pulling studies as needed."""
        while self._current is None or self._offset >= len(self._current.sequences):
            state = self._parent.get_state()
            try:
                element = next(self._parent)
            except StopIteration:
                self._current = None
                return None
            self._current, self._state_before_current = element, state
            self._offset, self._skip_on_pull = self._skip_on_pull, 0
            if self._count_on_pull:
                self._stats = PipelineStats(self._stats.studies + element.stats, self._stats.batches)
            self._count_on_pull = True
        return self._current.sequences[self._offset], self._current.images, self._current.image_labels

    def _take(self) -> None:
        self._offset += 1

    # --- batching ------------------------------------------------------------------------
    def __next__(self) -> dict[str, np.ndarray]:
        items = self._packed_window() if self._layout.packing else self._padded_window()
        if not items:
            raise StopIteration
        return self._assemble(items)

    def _padded_window(self) -> list[_Item]:
        items = []
        while len(items) < self._layout.batch_size and (item := self._peek()) is not None:
            items.append(item)
            self._take()
        return items

    def _packed_window(self) -> list[_Item]:
        """The next sequences that first-fit into `batch_size` rows (same rule as `pack_sequences`)."""
        layout = self._layout
        row_length = layout.length_buckets[-1]
        rows: list[list[int]] = []  # [tokens, images] used per row
        items = []
        while (item := self._peek()) is not None:
            tokens, images = len(item[0]), item[0].num_images
            target = next(
                (r for r in rows if r[0] + tokens <= row_length and r[1] + images <= layout.max_images), None
            )
            if target is None:
                if len(rows) == layout.batch_size:
                    break
                target = [0, 0]
                rows.append(target)
            target[0] += tokens
            target[1] += images
            items.append(item)
            self._take()
        return items

    def _rows(self, sequences: list[TrainingSequence]) -> list:
        layout = self._layout
        if layout.packing:
            rows = pack_sequences(sequences, layout.length_buckets[-1], layout.max_images, layout.pad_id)
            if len(rows) > layout.batch_size:
                raise AssertionError(f"packed {len(rows)} rows for a batch of {layout.batch_size}")
            return rows
        length = choose_bucket(max(len(s) for s in sequences), layout.length_buckets)
        return [pad_sequence(s, length, layout.max_images, layout.pad_id, n) for n, s in enumerate(sequences)]

    def _assemble(self, items: list[_Item]) -> dict[str, np.ndarray]:
        layout = self._layout
        rows = self._rows([seq for seq, _, _ in items])
        images = np.stack([row_images(row, [imgs for _, imgs, _ in items], layout.image_shape) for row in rows])
        batch = stack_rows(rows, images)
        if layout.image_labels:
            batch.update(_row_labels(items, len(rows)))
        used = int(np.count_nonzero(batch["segment_ids"], axis=1).max())
        length = choose_bucket(used, layout.length_buckets)
        for name in _TOKEN_FIELDS:
            batch[name] = batch[name][:, :length]
        padding_rows = layout.batch_size - len(rows)
        self._last_study_ids = tuple(
            tuple(items[n][0].study_id for n in row.sequence_numbers) for row in rows
        ) + ((),) * padding_rows
        if padding_rows:
            batch = _append_padding_rows(batch, padding_rows, layout.pad_id)
        self._stats = PipelineStats(
            self._stats.studies,
            self._stats.batches
            + BatchStats(
                batches=1,
                rows=len(rows),
                padding_rows=padding_rows,
                sequences=len(items),
                tokens=int(np.count_nonzero(batch["segment_ids"])),
                token_slots=int(batch["segment_ids"].size),
                answer_tokens=int(np.count_nonzero(batch["loss_mask"])),
                images=int(batch["image_mask"].sum()),
            ),
        )
        return batch

    # --- checkpointing -------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        pending = self._current is not None and self._offset < len(self._current.sequences)
        return {
            "parent": self._state_before_current if pending else self._parent.get_state(),
            "skip_sequences": self._offset if pending else 0,
            "study_counted": pending,
            "stats": self._stats.to_json(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._current = None
        self._offset = 0
        self._skip_on_pull = int(state["skip_sequences"])
        self._count_on_pull = not state["study_counted"]
        self._stats = PipelineStats.from_json(state["stats"])

    def __str__(self) -> str:
        return f"StudyBatchIterator({self._layout})"


def _row_labels(items: list[_Item], rows: int) -> dict[str, np.ndarray]:
    """`IMAGE_LABEL_FIELDS` of unpacked rows (row n = items[n]): the study's labels where the
    row's first image slot holds the study's current image (index 0), else mask 0."""
    labels = np.zeros((rows, len(IMAGE_LABEL_KINDS)), np.float32)
    mask = np.zeros_like(labels)
    for n, (sequence, _, study_labels) in enumerate(items[:rows]):
        if study_labels is None:
            raise ValueError(f"study {sequence.study_id}: prepared without image labels for a "
                             "pipeline that emits them")
        if sequence.image_indices[:1] == (0,):
            labels[n], mask[n] = study_labels
    return {"image_labels": labels, "image_label_mask": mask}


def _append_padding_rows(batch: dict[str, np.ndarray], count: int, pad_id: int) -> dict[str, np.ndarray]:
    """`count` empty rows (pad ids, zeros, no images) after the batch's rows."""
    out = {}
    for name, value in batch.items():
        fill = pad_id if name in ("input_tokens", "target_tokens") else 0
        padding = np.full((count, *value.shape[1:]), fill, dtype=value.dtype)
        out[name] = np.concatenate([value, padding])
    return out


class StudyBatchIterDataset(grain.IterDataset):
    """`PreparedStudy` elements -> batch dicts (module docstring), in the calling process."""

    def __init__(self, parent: grain.IterDataset, layout: BatchLayout):
        super().__init__(parent)
        self._layout = layout

    def __iter__(self) -> StudyBatchIterator:
        return StudyBatchIterator(self._parent.__iter__(), self._layout)

    def __str__(self) -> str:
        return f"StudyBatchIterDataset({self._layout})"


# ----------------------------------------------------------------------------- building


def ensure_absl_flags_parsed() -> None:
    """Parse absl flags (program name only) if nothing has: Grain reads its flags in every process."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])


def _init_worker(worker_index: int, worker_count: int) -> None:
    """Grain `worker_init_fn`: runs first in each worker process."""
    del worker_index, worker_count
    ensure_absl_flags_parsed()


def _build(
    cfg: PipelineConfig,
    tokenizer: CXRTrekTokenizer,
    *,
    train: bool,
    process_index: int,
    process_count: int,
) -> StudyBatchIterDataset:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
    cfg.check_complete()
    batch_size = cfg.per_process_batch_size(process_count)
    source = open_study_source(cfg.source_kind, cfg.source, image_root=cfg.image_root, split=cfg.split)
    if len(source) == 0:
        raise ValueError(f"{cfg.source}: the {cfg.source_kind} source holds no studies")
    ds = grain.MapDataset.source(source)
    augment = cfg.augment if train and not cfg.augment.is_identity else None
    prepare = PrepareStudy(tokenizer, cfg.sequence_config(), cfg.image_size, augment, cfg.image_labels,
                           cfg.blank_images, cfg.image_processing)
    if train:
        ds = ds.shuffle(seed=cfg.seed)
    if augment is not None or (train and cfg.sequence.answer_flips > 0.0):
        ds = ds.random_map(prepare, seed=cfg.augmentation_seed())
    else:
        ds = ds.map(prepare)
    ds = ds[process_index::process_count]
    if train:
        ds = ds.repeat(cfg.num_epochs)
    read_options = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=max(8, 2 * batch_size))
    it_ds = ds.to_iter_dataset(read_options)
    if cfg.num_workers > 0:
        ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size),
            worker_init_fn=_init_worker,
        )
    layout = BatchLayout(
        batch_size=batch_size,
        length_buckets=cfg.length_buckets,
        max_images=cfg.max_images,
        image_shape=cfg.image_shape,
        pad_id=tokenizer.pad_id,
        packing=cfg.packing,
        image_labels=cfg.image_labels,
    )
    return StudyBatchIterDataset(it_ds, layout)


def build_train_dataset(
    cfg: PipelineConfig, tokenizer: CXRTrekTokenizer, process_index: int = 0, process_count: int = 1
) -> StudyBatchIterDataset:
    """The training pipeline of one process: shuffled, augmented, `cfg.num_epochs` passes."""
    return _build(cfg, tokenizer, train=True, process_index=process_index, process_count=process_count)


def build_eval_dataset(
    cfg: PipelineConfig, tokenizer: CXRTrekTokenizer, process_index: int = 0, process_count: int = 1
) -> StudyBatchIterDataset:
    """The evaluation pipeline of one process: source order, no augmentation, one pass,
    every study kept (the last batch filled with padding rows). `cfg.num_epochs` is ignored."""
    return _build(cfg, tokenizer, train=False, process_index=process_index, process_count=process_count)


def build_train_iterator(
    cfg: PipelineConfig, tokenizer: CXRTrekTokenizer, process_index: int = 0, process_count: int = 1
) -> StudyBatchIterator:
    """A `grain.DatasetIterator` of training batches (`get_state`/`set_state`, `.stats`)."""
    return iter(build_train_dataset(cfg, tokenizer, process_index, process_count))


def build_eval_iterator(
    cfg: PipelineConfig, tokenizer: CXRTrekTokenizer, process_index: int = 0, process_count: int = 1
) -> StudyBatchIterator:
    """A `grain.DatasetIterator` over one evaluation pass (see `build_eval_dataset`)."""
    return iter(build_eval_dataset(cfg, tokenizer, process_index, process_count))
