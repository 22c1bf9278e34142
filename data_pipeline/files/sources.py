"""Random-access study sources for the input pipeline: TFDS array_record or CXRTrek JSON.

A source has `len(source)` and `source[i] -> StudyRecord`: the study and its
images, still encoded (bytes from the TFDS build) or as local file paths
(JSON + image root). Images are decoded only when the pipeline needs them
(`StudyRecord.load_image`), so images a sequence does not use are never
decoded. Sources are picklable (Grain worker processes get a copy); the
TFDS source reopens its files lazily in each process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipeline.files.cxrtrek_json import read_studies
from data_pipeline.files.image_paths import ImagePathError, choose_image_list, resolve_image_path
from data_pipeline.files.images import load_image, load_image_bytes
from data_pipeline.schema.records import Study
from data_pipeline.schema.splits import TRAIN

__all__ = [
    "SOURCE_KINDS",
    "JsonStudySource",
    "StudyRecord",
    "TfdsStudySource",
    "open_study_source",
    "json_study_record",
    "tfds_splits",
]

SOURCE_KINDS = ("tfds", "json")


@dataclasses.dataclass(frozen=True, eq=False)
class StudyRecord:
    """A study and its images, not yet decoded.

    images: one per `study.images` entry, in order: the encoded file bytes, or
        the local path of the file.
    """

    study: Study
    images: tuple[bytes | str, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.study.images):
            raise ValueError(
                f"study {self.study.key!r}: {len(self.images)} image(s) for {len(self.study.images)} path(s)"
            )

    def load_image(self, index: int) -> np.ndarray:
        """Image `index` decoded: float32 [H, W] in [0, 1], air dark (ImageLoadError naming it)."""
        image = self.images[index]
        if isinstance(image, str):
            return load_image(image)
        label = f"study {self.study.key!r} image {index} ({self.study.images[index]})"
        return load_image_bytes(bytes(image), label)


class JsonStudySource:
    """Every study of CXRTrek JSON file(s), held in memory (for small data sets).

    Image paths are resolved under `image_root` (`resolve_image_path`) when the
    source is built; a path that cannot be placed there is an error naming the
    study. Files need not exist until an image is loaded.
    """

    def __init__(self, json_files: str | os.PathLike | Sequence[str | os.PathLike], image_root: str | os.PathLike):
        files = [json_files] if isinstance(json_files, (str, os.PathLike)) else list(json_files)
        if not files:
            raise ValueError("JsonStudySource needs at least one JSON file")
        self._records: list[StudyRecord] = []
        for path in files:
            for index, study in enumerate(read_studies(path)):
                self._records.append(json_study_record(study, image_root, path, index))

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> StudyRecord:
        return self._records[index]

    def __repr__(self) -> str:
        return f"JsonStudySource({len(self)} studies)"


def json_study_record(study: Study, image_root: str | os.PathLike, path: Any, index: int) -> StudyRecord:
    """A JSON study with its image paths resolved under `image_root`: the relative
    `cxrtrek_data.image` list, else the top-level absolute one remapped under the root (the
    record's study then names those relative paths; `image_paths.choose_image_list`).
    ImagePathError names the file, sample and image."""
    where = f"{os.fspath(path)}: sample {index} (study {study.key!r})"
    try:
        images, _ = choose_image_list(study.images, study.abs_images, image_root)
    except ImagePathError as err:
        raise ImagePathError(f"{where}: {err}") from None
    resolved = []
    for k, image in enumerate(images):
        try:
            resolved.append(os.fspath(resolve_image_path(image, image_root)))
        except ImagePathError as err:
            raise ImagePathError(f"{where} image {k}: {err}") from None
    return StudyRecord(study.replace(images=images), tuple(resolved))


class TfdsStudySource:
    """One split of the `cxrtrek` TFDS data set (`data_pipeline.files.tfds_builder`) under `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike, split: str = TRAIN):
        self.data_dir = os.fspath(data_dir)
        self.split = split
        self._source: Any = None
        self._length = len(self._open())

    def _open(self) -> Any:
        if self._source is None:
            builder = _built_tfds(self.data_dir)
            splits = sorted(builder.info.splits.keys())
            if self.split not in splits:
                raise ValueError(f"{builder.data_dir}: no split {self.split!r}; the data set has {splits}")
            self._source = builder.as_data_source(split=self.split)
        return self._source

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> StudyRecord:
        from data_pipeline.files.tfds_builder import example_to_study

        example = self._open()[index]
        return StudyRecord(example_to_study(example), tuple(bytes(data) for data in example["images"]))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"TfdsStudySource({self.data_dir!r}, split={self.split!r}, {self._length} studies)"


def _built_tfds(data_dir: str | os.PathLike) -> Any:
    """The `CXRTrekBuilder` of the data set built under `data_dir`; FileNotFoundError when none is."""
    from data_pipeline.files.tfds_builder import CXRTrekBuilder

    builder = CXRTrekBuilder(data_dir=os.fspath(data_dir))
    if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        raise FileNotFoundError(f"{os.fspath(data_dir)}: no built cxrtrek data set (expected {builder.data_dir})")
    return builder


def tfds_splits(data_dir: str | os.PathLike) -> tuple[str, ...]:
    """The splits the TFDS data set under `data_dir` holds (an empty split is not written);
    FileNotFoundError when no data set is built there."""
    return tuple(sorted(_built_tfds(data_dir).info.splits.keys()))


def open_study_source(
    kind: str, path: str | os.PathLike, *, image_root: str | os.PathLike | None = None, split: str = TRAIN
) -> JsonStudySource | TfdsStudySource:
    """`kind` "tfds": the TFDS data dir `path` (its `split`); "json": the JSON file `path` with `image_root`."""
    if kind == "tfds":
        return TfdsStudySource(path, split)
    if kind == "json":
        if image_root is None:
            raise ValueError(f"a JSON source ({os.fspath(path)}) needs an image root")
        return JsonStudySource(path, image_root)
    raise ValueError(f"unknown source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
