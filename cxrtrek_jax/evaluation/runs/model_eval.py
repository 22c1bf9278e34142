"""Decode a checkpoint over a CXRTrek data set in the evaluation's context modes.

`decode_predictions(...)` streams `PredictionRecord`s: for each context mode
(`own`, `teacher`, `none`, and `swapped`: `own` with each study's images taken from another
study, see `with_foreign_images`) the studies are read batch by batch (a JSON file,
or one split of a TFDS data dir built by `cxrtrek data build-tfds`), their
images decoded as they enter the decoder, and their conversations run with the explicit
chain state, `batch_size` at a time with continuous batching (`cxrtrek_jax.decoding.stream_chain`:
a study whose chain ends gives its row to the next study; records come out in data order); a
checkpoint trained with its images blanked (the
text-only experiment, `CheckpointModel.blank_images`) is fed the same constant images, and the
console says so. Memory is bounded by the studies in the decoder's rows (plus the answers of
studies finished ahead of an earlier, longer one); the records go straight to a predictions
file. Splits follow the one split rule
(`EvalData`), whatever the form of the data.

`checkpoint_identity(...)` hashes what identifies an evaluation (checkpoint
parameters' metadata, data file, config) for `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from jax.sharding import Mesh

from cxrtrek_jax.contexts import CONTEXT_MODES, SWAPPED
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord, prediction_from_turn
from data_pipeline.files.datasets import Dataset, open_dataset, parse_split
from data_pipeline.files.image_processing import ImageProcessing, model_input
from data_pipeline.files.split_rule import SplitConfig
from data_pipeline.schema.splits import TEST

__all__ = ["EvalData", "iter_eval_studies", "iter_split_studies", "record_images", "with_foreign_images",
           "decode_predictions", "checkpoint_identity"]


class EvalData:
    """The studies of one split of a data set, for evaluation, and how to read their images.

    data: a CXRTrek JSON file (images under `image_root`, default its folder) or a TFDS data dir
      built by `cxrtrek data build-tfds`, opened with `data_pipeline.files.datasets.open_dataset`;
      or an already opened `Dataset` (then without image_root / split_rule).
    split: the split to evaluate (`SPLIT_NAMES`; aliases and "all" as `parse_split` reads them;
      None = every study), placed by the one split rule (`data_pipeline.files.split_rule`: a
      study's `split` field, else the patient hash of `split_rule`), so a JSON file and the TFDS
      set built from it with the same rule give the same studies.
    max_studies: at most this many studies (the first ones in data order).
    """

    def __init__(self, data: str | os.PathLike | Dataset, *, split: str | None = TEST,
                 image_root: str | os.PathLike | None = None, max_studies: int | None = None,
                 split_rule: SplitConfig | None = None):
        if isinstance(data, Dataset):
            if image_root is not None or split_rule is not None:
                raise ValueError("EvalData of an opened Dataset takes its image root and split rule from it")
            self.dataset = data
        else:
            self.dataset = open_dataset(data, image_root=image_root, split_rule=split_rule)
        self.split = parse_split(split)
        self.max_studies = max_studies

    @property
    def path(self) -> Path:
        return Path(self.dataset.path)

    @property
    def kind(self) -> str:
        """The data's form, `Dataset.form`: "json" or "tfds"."""
        return self.dataset.form

    @property
    def image_root(self) -> Path | None:
        return None if self.dataset.image_root is None else Path(self.dataset.image_root)

    def records(self) -> Iterator[Any]:
        """The `StudyRecord`s of the split in data order (all of them; images not decoded)."""
        return self.dataset.records(self.split)

    def identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.dataset.identity(), "data_split": self.split}
        if self.kind == "json":
            from cxrtrek_jax.evaluation.scores.outputs import file_sha256

            out["data_sha256"] = file_sha256(self.path)
        return out


def _split_records(data: EvalData) -> Iterator[Any]:
    """The `StudyRecord`s of the data's split in data order, at most `max_studies`.
    Raises ValueError when the split holds no study."""
    count = 0
    for record in data.records():
        if data.max_studies is not None and count >= data.max_studies:
            return
        count += 1
        yield record
    if count == 0:
        raise ValueError(f"{data.path}: no study in split {data.split!r}")


def iter_split_studies(data: EvalData) -> Iterator[Any]:
    """The Study records of the data's split (at most `max_studies`), without reading images.
    Raises ValueError when the split holds no study."""
    return (record.study for record in _split_records(data))


def record_images(record: Any, image_size: int, processing: ImageProcessing | None = None) -> np.ndarray:
    """The images of a `StudyRecord` at the model's size: float32[K, S, S], fitted by `processing` (an
    `ImageProcessing`; None = aspect kept, padded black), as `decoding.load_study_images`;
    ImageLoadError names a bad image."""
    images = [model_input(record.load_image(k), image_size, processing) for k in range(record.study.num_images)]
    return np.stack(images) if images else np.zeros((0, image_size, image_size), np.float32)


def iter_eval_studies(data: EvalData, image_size: int, blank: float | None = None,
                      processing: ImageProcessing | None = None) -> Iterator[tuple[Any, np.ndarray]]:
    """(Study, float32[K, S, S] images at the model's size) in data order, at most `max_studies`.
    blank: None = the study's images; a pixel value = K constant images of that value instead
    (`data_pipeline.batches.grain_pipeline.blank_images`, as the text-only experiment trains on;
    the files are not read). processing: how images are fitted (`record_images`). Raises ValueError
    when the split holds no study."""
    from data_pipeline.batches.grain_pipeline import blank_images

    for record in _split_records(data):
        if blank is None:
            yield record.study, record_images(record, image_size, processing)
        else:
            yield record.study, blank_images(record.study.num_images, image_size, blank)


def with_foreign_images(studies: Iterator[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
    """(study, images of another study) for each (study, images), in order: a study gets the
    images of the study before it (the first study those of the second), cycled to fill its own
    image count, so every study keeps its image layout and sees none of its own images.
    Raises ValueError with fewer than two studies (nothing to swap with)."""
    def fill(donor: np.ndarray, count: int) -> np.ndarray:
        return donor[np.arange(count) % len(donor)] if count and len(donor) else donor[:0]

    it = iter(studies)
    first, second = next(it, None), next(it, None)
    if second is None:
        raise ValueError("the 'swapped' context needs at least two studies to swap images between")
    yield first[0], fill(second[1], len(first[1]))
    previous = first
    for current in (second, *it):
        yield current[0], fill(previous[1], len(current[1]))
        previous = current


def _chain_study(study, images: np.ndarray, order: str, max_images: int):
    """(ChainStudy, number of turns skipped): turns needing more images than the model's
    `max_images` slots are skipped (as in training) and counted, never silently."""
    import functools

    from cxrtrek_jax.decoding import ChainStudy, fixed_plan, study_turns
    from data_pipeline.text.sequences import system_prompt_of

    if not study.items:
        raise ValueError(f"study {study.key!r} has no questions to evaluate")
    turns = study_turns(study, order)
    kept = tuple(t for t in turns if t.image_input_count <= max_images)
    chain = ChainStudy(study_id=study.key, images=images[:max_images],
                       system_prompt=system_prompt_of(study), plan=functools.partial(fixed_plan, kept))
    return chain, len(turns) - len(kept)


def decode_predictions(
    ckpt_dir: str | os.PathLike,
    data: EvalData,
    *,
    contexts: Sequence[str] = CONTEXT_MODES,
    order: str = "given",
    max_new_tokens: int = 96,
    batch_size: int = 4,
    cache_length: int | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    on_study: Callable[[str, str], None] | None = None,
    skipped: dict[str, int] | None = None,
    mesh: Mesh | None = None,
) -> Iterator[PredictionRecord]:
    """Greedy answers of the checkpoint for every turn of every study, per context mode.

    on_study(context, study_id) is called as each study finishes (progress bars).
    skipped: filled with {study_id: turns skipped} for studies with turns that need
    more images than the model has slots for.
    mesh: decode on this (data, fsdp, tensor) mesh (`decoding.placement`: parameters sharded as in
    training, each batch's studies split over the data x fsdp groups; batch_size must be a multiple
    of them); None = one device. A mesh spanning processes: every process calls this and consumes
    the records in lockstep, and every process gets all of them, in the same order as one device.
    Raises ValueError for an unknown context mode or order, FileNotFoundError for a
    missing checkpoint or tokenizer."""
    import jax

    from cxrtrek_jax.decoding import DecodeSpec, StepwiseDecoder, stream_chain
    from cxrtrek_jax.decoding.model_loading import image_processing_of, load_checkpoint_model
    from cxrtrek_jax.decoding.placement import bytes_per_device, check_rows, describe_mesh, writes_outputs
    from data_pipeline.text.box_grammar import box_grammar_of
    from data_pipeline.text.tokenizer import load_tokenizer

    unknown = [c for c in contexts if c not in CONTEXT_MODES]
    if unknown or not contexts:
        raise ValueError(f"context modes must be among {CONTEXT_MODES}, got {list(contexts)}")
    check_rows(batch_size, mesh)
    loaded = load_checkpoint_model(ckpt_dir, mesh=mesh)
    if mesh is not None and writes_outputs():
        held, total = bytes_per_device(loaded.state)
        sizes = describe_mesh(mesh)
        print(f"decoding on a mesh of data {sizes['data']} x fsdp {sizes['fsdp']} x tensor {sizes['tensor']} "
              f"({sizes['devices']} devices, {sizes['processes']} process(es)): parameters {held / 2**20:.2f} MiB "
              f"per device of {total / 2**20:.2f} MiB", flush=True)
    tokenizer_path = tokenizer_dir or loaded.tokenizer_dir
    if tokenizer_path is None:
        raise FileNotFoundError(f"checkpoint {ckpt_dir} names no tokenizer; give tokenizer_dir")
    tokenizer = load_tokenizer(tokenizer_path)
    config = loaded.config
    spec = DecodeSpec.for_model(config, tokenizer, cache_length=cache_length or config.text.max_positions,
                                max_answer_tokens=max_new_tokens)
    decoder = StepwiseDecoder(loaded.graphdef, config, spec, mesh=mesh,
                              grammar=box_grammar_of(tokenizer, config.vocab_size))
    if loaded.blank_images is not None and writes_outputs():
        print(f"images blanked: checkpoint {ckpt_dir} was trained with every image blanked to the constant "
              f"{loaded.blank_images} (data.pipeline.blank_images, a text-only model); it is evaluated so, "
              "in every context", flush=True)
    for context in contexts:
        studies = iter_eval_studies(data, config.vision.image_size, loaded.blank_images,
                                    processing=image_processing_of(tokenizer_path))
        if context == SWAPPED:
            studies = with_foreign_images(studies)
        keys: dict[int, str] = {}

        def chain_studies(studies=studies, keys=keys):
            for index, (study, images) in enumerate(studies):
                one, dropped = _chain_study(study, images, order, config.max_images)
                if dropped and skipped is not None:
                    skipped[study.key] = dropped
                keys[index] = study.key
                yield one

        finished = stream_chain(decoder, loaded.state, tokenizer, chain_studies(), batch_size=batch_size,
                                context="own" if context == SWAPPED else context,
                                max_new_tokens=max_new_tokens, rng=jax.random.key(0))
        for index, study_results in in_stream_order(finished):
            for turn in study_results:
                record = prediction_from_turn(turn)
                yield dataclasses.replace(record, context=SWAPPED) if context == SWAPPED else record
            if on_study is not None:
                on_study(context, keys.pop(index))


def in_stream_order(finished: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """(index, item) pairs arriving in any order (each index 0, 1, ... once) -> in index order;
    an item waits only until every earlier index has arrived."""
    waiting: dict[int, Any] = {}
    following = 0
    for index, item in finished:
        waiting[index] = item
        while following in waiting:
            yield following, waiting.pop(following)
            following += 1
    if waiting:
        raise RuntimeError(f"stream indices {sorted(waiting)} arrived without index {following}")


class DecodeCoverage:
    """Per context and stage, how many turns were answered with the whole earlier chain, answered
    in a window (`context_dropped` > 0: earlier turns left out to fit the cache), or lost (stop
    reason "cache_full": the turn does not fit the cache even alone)."""

    KINDS = ("whole", "windowed", "lost")

    def __init__(self) -> None:
        self.counts: dict[str, dict[int, dict[str, int]]] = {}

    def add(self, record: PredictionRecord) -> None:
        row = self.counts.setdefault(record.context, {}).setdefault(record.stage, dict.fromkeys(self.KINDS, 0))
        if record.stop_reason == "cache_full":
            row["lost"] += 1
        elif record.context_dropped:
            row["windowed"] += 1
        else:
            row["whole"] += 1

    def to_json(self) -> dict[str, dict[str, dict[str, int]]]:
        return {c: {str(s): dict(r) for s, r in sorted(stages.items())} for c, stages in self.counts.items()}

    def format(self) -> str:
        lines = ["turns per stage: whole chain / windowed / lost (does not fit the cache even alone)"]
        for context, stages in self.counts.items():
            cells = "  ".join(f"{s}: {r['whole']}/{r['windowed']}/{r['lost']}" for s, r in sorted(stages.items()))
            lines.append(f"  {context:<8} {cells}")
        lost = sum(r["lost"] for stages in self.counts.values() for r in stages.values())
        if lost:
            lines.append(f"  WARNING: {lost} turn(s) could not be asked (scored with empty answers)")
        return "\n".join(lines)


def checkpoint_identity(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dir, its newest step, and a SHA-256 of its metadata (model config included);
    with "blank_images" when the checkpoint was trained with its images blanked (`blank_images_of`)."""
    from cxrtrek_jax.decoding.model_loading import blank_images_of
    from cxrtrek_jax.train.checkpointing import read_metadata

    metadata = read_metadata(ckpt_dir)
    blob = json.dumps(metadata, sort_keys=True, default=str).encode()
    identity = {"checkpoint": str(Path(ckpt_dir).resolve()), "checkpoint_step": metadata.get("step"),
                "checkpoint_metadata_sha256": hashlib.sha256(blob).hexdigest(),
                "model_config_sha256": hashlib.sha256(
                    json.dumps(metadata.get("model_config"), sort_keys=True).encode()).hexdigest()}
    blank = blank_images_of(metadata, f"checkpoint {ckpt_dir}")
    return identity if blank is None else {**identity, "blank_images": blank}
