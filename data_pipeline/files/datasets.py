"""One way to open a CXRTrek data set, whatever its form, with one split rule.

    dataset = open_dataset("released.json", image_root="images")  # a CXRTrek JSON file, or
    dataset = open_dataset("data/tfds")                           # a TFDS dir (`cxrtrek data build-tfds`)
    dataset.form                                                  # "json" or "tfds"
    for record in dataset.records("test"):                        # `sources.StudyRecord`s
        record.study, record.load_image(0)

Forms: a CXRTrek JSON file (`cxrtrek_json`; its relative image paths resolved under `image_root`,
default the file's folder, as `sources.json_study_record` does) or a directory holding the data
set `tfds_builder` built (images stored inside it; `sources.TfdsStudySource`).

Splits: the one rule of `split_rule` (a study's own `split` field, else the patient hash of
`SplitConfig`). A TFDS data set's splits were written with it when it was built; a JSON file's
are decided with it as the file is read, with the `split_rule` given (default `SplitConfig()`, the
build's default). So a JSON file and the TFDS set built from it with the same rule hold the same
studies in each split, and every command reading either agrees on them. `split=None` means every
study (TFDS: train, validation, test in turn; JSON: file order, no rule needed).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.files.cxrtrek_json import iter_studies
from data_pipeline.files.sources import StudyRecord, TfdsStudySource, json_study_record, tfds_splits
from data_pipeline.files.split_rule import SplitConfig, SplitRuleError, assign_split
from data_pipeline.schema.records import Study
from data_pipeline.schema.splits import SPLIT_ALIASES, SPLIT_NAMES, canonical_split

__all__ = ["DATASET_FORMS", "EVERY_SPLIT", "Dataset", "open_dataset", "parse_split"]

DATASET_FORMS = ("json", "tfds")
EVERY_SPLIT = "all"  # how a user asks for every study, whatever its split


def parse_split(value: str | None) -> str | None:
    """A split as a user names it: None or "all" -> None (every study); any `SPLIT_ALIASES`
    spelling, any case -> its split name. ValueError listing the choices otherwise."""
    if value is None or value.strip().lower() == EVERY_SPLIT:
        return None
    name = canonical_split(value)
    if name is None:
        raise ValueError(f"unknown split {value!r}; expected one of {', '.join(SPLIT_ALIASES)} or {EVERY_SPLIT}")
    return name


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An opened data set (`open_dataset`): its form, where it is, and how its splits are decided.

    form: "json" or "tfds". path: the JSON file or the TFDS data dir. image_root: the folder a
    JSON file's relative image paths live under (None for TFDS: its images are stored inside it).
    split_rule: the `SplitConfig` a JSON file's studies without a `split` field are split with
    (None for TFDS: its splits were fixed when it was built).
    """

    form: str
    path: str
    image_root: str | None = None
    split_rule: SplitConfig | None = None

    def records(self, split: str | None) -> Iterator[StudyRecord]:
        """The studies of `split` (a `SPLIT_NAMES` name; None = every study) with their images,
        not yet decoded, in data order. An empty split yields nothing. ValueError for an unknown
        split name, and (JSON) for a study the rule cannot place, naming the file and sample."""
        if split is not None and split not in SPLIT_NAMES:
            raise ValueError(f"{self.path}: unknown split {split!r}; expected one of {', '.join(SPLIT_NAMES)}")
        if self.form == "tfds":
            return self._tfds_records(split)
        return self._json_records(split)

    def studies(self, split: str | None) -> Iterator[Study]:
        """The `Study` of each record of `split` (`records`), images not read."""
        return (record.study for record in self.records(split))

    def _tfds_records(self, split: str | None) -> Iterator[StudyRecord]:
        built = tfds_splits(self.path)
        for name in SPLIT_NAMES if split is None else (split,):
            if name not in built:
                continue
            source = TfdsStudySource(self.path, name)
            for index in range(len(source)):
                yield source[index]

    def _json_records(self, split: str | None) -> Iterator[StudyRecord]:
        for index, study in enumerate(iter_studies(self.path)):
            if split is not None:
                try:
                    name = assign_split(study, self.split_rule)
                except SplitRuleError as err:
                    raise ValueError(f"{self.path}: sample {index}: {err}") from None
                if name != split:
                    continue
            yield json_study_record(study, self.image_root, self.path, index)

    def identity(self) -> dict[str, Any]:
        """What identifies the data: its path and form; a JSON file's split rule as well."""
        out: dict[str, Any] = {"data": self.path, "data_form": self.form}
        if self.split_rule is not None:
            out["data_split_rule"] = dataclasses.asdict(self.split_rule)
        return out


def open_dataset(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                 split_rule: SplitConfig | None = None) -> Dataset:
    """The data set at `path`: a CXRTrek JSON file (images under `image_root`, default its folder;
    split with `split_rule`, default `SplitConfig()`) or a TFDS data dir built by `cxrtrek data
    build-tfds` (which takes neither: its images and splits are fixed inside it).

    Raises FileNotFoundError for a missing path, a directory without a built data set or a
    missing image root; ValueError for an image root or split rule given with a TFDS dir."""
    where = Path(path)
    if not where.exists():
        raise FileNotFoundError(f"{where}: no such file or directory (expected a CXRTrek JSON file or a "
                                "TFDS data dir built by `cxrtrek data build-tfds`)")
    if where.is_dir():
        tfds_splits(where)  # FileNotFoundError when nothing is built there
        for name, value in (("an image root", image_root), ("a split rule", split_rule)):
            if value is not None:
                raise ValueError(f"{where} is a TFDS data dir: its images and splits were fixed when it was "
                                 f"built (`cxrtrek data build-tfds`); {name} goes with a CXRTrek JSON file")
        return Dataset("tfds", str(where))
    root = Path(image_root) if image_root is not None else where.parent
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root}: no such folder")
    return Dataset("json", str(where), str(root), split_rule if split_rule is not None else SplitConfig())
