"""A TensorFlow Datasets builder for CXRTrek (array_record files, no TensorFlow needed).

Input: CXRTrek JSON files (`data_pipeline.files.cxrtrek_json`) plus the image root,
given to TFDS as the manual dir. Output: `train`/`validation`/`test` splits
readable with ``tfds.data_source("cxrtrek", data_dir=...)`` (or
``builder.as_data_source()``), one example per study.

Splits: the one split rule (`data_pipeline.files.split_rule`): a study's `split`
field (in `cxrtrek_data` or at the element's top level: train / validation (val,
valid) / test) when present; otherwise a hash of (split seed, `pat_id`), so every
study of a patient lands in the same split.

Per example (`FEATURES`): the ids, the relative image paths, the images as
encoded bytes (PNG/JPEG files kept byte for byte; DICOM decoded by
`data_pipeline.files.images.load_image_bytes` and stored as 16-bit PNG), the image
count, the turns as parallel sequences (stage, task_type, qtype,
image_input_count, question, answer, extras as JSON) and the study-level
rest (extras, chat messages, absolute image paths) as one JSON string, so
`example_to_study` rebuilds the source `Study` exactly.

Every sample goes through `data_pipeline.files.validation.StudyValidator` (with the
image root, so missing images are caught) before anything is written, and
every image is decoded once while writing. Reading and decoding the images is the build's
cost: `BuildOptions.processes` > 1 prepares the examples in that many worker processes
(spawned, ordered: the files written are the same as with one process). An invalid sample
stops the build (`InvalidSampleError`) unless `skip_invalid` is set; then it is dropped and
listed with its problems in the `BuildSummary` (also written as
`build_summary.json` in the dataset directory).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_pipeline.files.cxrtrek_json import find_cxrtrek_data, iter_elements, parse_study
from data_pipeline.files.image_paths import IMAGE_LISTS, ImagePathError, choose_image_list, resolve_image_path
from data_pipeline.files.images import ImageLoadError, encode_png16, is_dicom, load_image_bytes
from data_pipeline.schema.records import Message, QAItem, Study, freeze, study_key, thaw
from data_pipeline.schema.splits import SPLIT_NAMES
from data_pipeline.files.split_rule import SplitConfig, SplitRuleError, assign_split, patient_split
from data_pipeline.files.ordered_map import ordered_map
from data_pipeline.files.validation import Problem, StudyValidator

__all__ = [
    "DATASET_NAME",
    "SplitConfig",
    "patient_split",
    "BuildOptions",
    "InvalidSampleError",
    "DroppedSample",
    "BuildSummary",
    "CXRTrekBuilder",
    "build_dataset",
    "encode_stored_image",
    "study_to_example",
    "example_to_study",
    "example_images",
    "decode_example",
]

DATASET_NAME = "cxrtrek"
SUMMARY_FILE = "build_summary.json"
_TEXT_FIELDS = ("study_id", "pat_id", "source", "ref_study_id", "pos_study_id")
_TURN_TEXT_FIELDS = ("task_type", "qtype", "question", "answer")
_TURN_INT_FIELDS = ("stage", "image_input_count")


# ----------------------------------------------------------------------------- splits


def _split_of(study: Study, prefix: str, config: SplitConfig) -> tuple[str | None, tuple[str, str] | None]:
    """(split, None) or (None, (field, reason)): the one split rule (`split_rule.assign_split`)."""
    try:
        return assign_split(study, config), None
    except SplitRuleError as err:
        return None, (prefix + err.field if err.in_cxrtrek_data else err.field, err.reason)


# ----------------------------------------------------------------------------- options and summary


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """What to build from: the JSON files (in order), the split rule, and whether
    invalid samples are dropped (and listed) instead of stopping the build."""

    json_files: tuple[str, ...]
    split: SplitConfig = SplitConfig()
    skip_invalid: bool = False
    processes: int = 1

    def __post_init__(self) -> None:
        if not self.json_files:
            raise ValueError("BuildOptions needs at least one JSON file")
        if isinstance(self.processes, bool) or not isinstance(self.processes, int) or self.processes < 1:
            raise ValueError(f"BuildOptions.processes must be a positive integer, got {self.processes!r}")
        object.__setattr__(self, "json_files", tuple(os.fspath(p) for p in self.json_files))


class InvalidSampleError(ValueError):
    """An invalid sample while building without `skip_invalid`; names file, index, study and problems."""


@dataclasses.dataclass(frozen=True)
class DroppedSample:
    """A sample left out of the data set (only with `skip_invalid`)."""

    json_file: str
    index: int
    study_id: str
    problems: tuple[Problem, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "json_file": self.json_file,
            "index": self.index,
            "study_id": self.study_id,
            "reasons": [f"{p.field or 'sample'}: {p.message}" for p in self.problems],
        }


def _field_kind(field: str) -> str:
    """'data_dict.cxrtrek_data.content[3].stage' -> 'data_dict.cxrtrek_data.content[].stage'."""
    return re.sub(r"\[\d+\]", "[]", field) or "sample"


@dataclasses.dataclass(frozen=True)
class BuildSummary:
    """What a build wrote and what it left out.

    examples: split -> number of examples written (0 for an empty split, which
        is then absent from the data set).
    dropped: every dropped sample with its problems (empty without skip_invalid).
    warnings: number of validation warnings (kept samples included).
    patients_in_several_splits: patients ("source/pat_id") whose studies landed in more
        than one split (only possible through explicit `split` fields).
    image_lists: which image list each written study was read from
        (`image_paths.choose_image_list`: "relative", "absolute", "none") -> studies.
    """

    dataset_dir: str
    examples: Mapping[str, int]
    dropped: tuple[DroppedSample, ...]
    warnings: int
    patients_in_several_splits: tuple[str, ...]
    image_lists: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def dropped_by_field(self) -> dict[str, int]:
        counts = collections.Counter(_field_kind(p.field) for d in self.dropped for p in d.problems)
        return dict(sorted(counts.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset_dir": self.dataset_dir,
            "examples": dict(self.examples),
            "total_examples": sum(self.examples.values()),
            "dropped_count": len(self.dropped),
            "dropped_by_field": self.dropped_by_field,
            "dropped": [d.to_json() for d in self.dropped],
            "warnings": self.warnings,
            "patients_in_several_splits": list(self.patients_in_several_splits),
            "image_lists": dict(self.image_lists),
        }


# ----------------------------------------------------------------------------- examples

FEATURES = tfds.features.FeaturesDict(
    {
        **{name: tfds.features.Text() for name in _TEXT_FIELDS},
        "image_paths": tfds.features.Sequence(tfds.features.Text()),
        # Encoded PNG/JPEG bytes; decoded by `example_images` (tfds.features.Image
        # would need OpenCV for 16-bit PNGs when decoding without TensorFlow).
        "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
        "num_images": np.int32,
        "turns": tfds.features.Sequence(
            {
                **{name: np.int32 for name in _TURN_INT_FIELDS},
                **{name: tfds.features.Text() for name in _TURN_TEXT_FIELDS},
                "extras_json": tfds.features.Text(),
            }
        ),
        # {"extras", "data_dict_extras", "cxrtrek_extras", "messages", "abs_images"}
        "study_json": tfds.features.Text(),
    }
)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def encode_stored_image(path: str | os.PathLike) -> bytes:
    """The bytes to store for one image file: PNG/JPEG as they are (after checking
    they decode), DICOM decoded (`load_image_bytes`) and re-encoded as 16-bit PNG.
    Raises ImageLoadError naming the file."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageLoadError(f"{name}: cannot read file: {e}") from e
    image = load_image_bytes(data, name)
    return encode_png16(image) if is_dicom(data) else data


def study_to_example(study: Study, encoded_images: list[bytes]) -> dict[str, Any]:
    """A Study and its stored image bytes (same order as `study.images`) -> a FEATURES dict."""
    if len(encoded_images) != len(study.images):
        raise ValueError(
            f"study {study.key!r}: {len(encoded_images)} encoded image(s) for {len(study.images)} path(s)"
        )
    rest = {
        "extras": thaw(study.extras),
        "data_dict_extras": thaw(study.data_dict_extras),
        "cxrtrek_extras": thaw(study.cxrtrek_extras),
        "messages": None
        if study.messages is None
        else [{"role": m.role, "content": m.content, "extras": thaw(m.extras)} for m in study.messages],
        "abs_images": None if study.abs_images is None else list(study.abs_images),
    }
    return {
        **{name: getattr(study, name) for name in _TEXT_FIELDS},
        "image_paths": list(study.images),
        "images": list(encoded_images),
        "num_images": len(study.images),
        "turns": [
            {
                **{name: getattr(item, name) for name in _TURN_INT_FIELDS + _TURN_TEXT_FIELDS},
                "extras_json": _dumps(thaw(item.extras)),
            }
            for item in study.items
        ],
        "study_json": _dumps(rest),
    }


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def example_to_study(example: Mapping[str, Any]) -> Study:
    """An example read back (e.g. from `tfds.data_source`) -> the source Study."""
    turns = example["turns"]
    n_turns = len(turns["stage"])
    items = tuple(
        QAItem(
            **{name: int(turns[name][i]) for name in _TURN_INT_FIELDS},
            **{name: _text(turns[name][i]) for name in _TURN_TEXT_FIELDS},
            extras=freeze(json.loads(_text(turns["extras_json"][i]))),
        )
        for i in range(n_turns)
    )
    rest = json.loads(_text(example["study_json"]))
    messages = rest["messages"]
    return Study(
        **{name: _text(example[name]) for name in _TEXT_FIELDS},
        images=tuple(_text(p) for p in example["image_paths"]),
        abs_images=None if rest["abs_images"] is None else tuple(rest["abs_images"]),
        items=items,
        messages=None
        if messages is None
        else tuple(Message(m["role"], m["content"], extras=freeze(m["extras"])) for m in messages),
        extras=freeze(rest["extras"]),
        data_dict_extras=freeze(rest["data_dict_extras"]),
        cxrtrek_extras=freeze(rest["cxrtrek_extras"]),
    )


def example_images(example: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """The decoded images of an example: float32 [H, W] in [0, 1], air dark, in study order."""
    study_id = _text(example["study_id"])
    return tuple(
        load_image_bytes(bytes(data), f"study {study_id} image {k} ({_text(path)})")
        for k, (data, path) in enumerate(zip(example["images"], example["image_paths"]))
    )


def decode_example(example: Mapping[str, Any]) -> tuple[Study, tuple[np.ndarray, ...]]:
    """(Study, decoded images) of an example read back from the data source."""
    return example_to_study(example), example_images(example)


# ----------------------------------------------------------------------------- example preparation


@dataclasses.dataclass(frozen=True)
class _ExampleTask:
    """One planned sample to turn into an example (picklable: it crosses to worker processes)."""

    json_file: str
    file_index: int
    index: int
    element: Any
    image_root: str


@dataclasses.dataclass(frozen=True)
class _ExampleOutcome:
    """An example (`key`, `example`, which image list it used) or the problems that reject it."""

    json_file: str
    index: int
    study_key: str
    key: str = ""
    example: dict[str, Any] | None = None
    image_list: str = ""
    problems: tuple[Problem, ...] = ()


def _prepare_example(task: _ExampleTask) -> _ExampleOutcome:
    """Parse one planned sample, resolve its image list and read + decode every image."""
    study = parse_study(task.element, index=task.index, path=task.json_file)
    prefix, _ = find_cxrtrek_data(task.element)
    rejected = functools.partial(_ExampleOutcome, task.json_file, task.index, study.key)
    try:
        paths, which = choose_image_list(study.images, study.abs_images, task.image_root)
    except ImagePathError as e:
        return rejected(problems=(Problem(task.index, study.key, "image", str(e)),))
    study = study.replace(images=paths)
    encoded, problems = [], []
    for k, path in enumerate(study.images):
        try:
            encoded.append(encode_stored_image(resolve_image_path(path, task.image_root)))
        except (ImageLoadError, ImagePathError) as e:
            problems.append(Problem(task.index, study.key, f"{prefix}image[{k}]", str(e)))
    if problems:
        return rejected(problems=tuple(problems))
    return rejected(key=f"{task.file_index}:{task.index}", example=study_to_example(study, encoded), image_list=which)


# ----------------------------------------------------------------------------- builder


class CXRTrekBuilder(tfds.core.GeneratorBasedBuilder):
    """CXRTrek studies with their images; see the module docstring.

    Build with `build_dataset` (or `options=` plus `download_and_prepare` with
    the image root as manual dir); read with only `data_dir`.
    """

    name = DATASET_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Studies, turns and encoded images; patient-level splits."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the image root (the folder that the relative cxrtrek_data.image paths live under) "
        "as the manual dir: DownloadConfig(manual_dir=IMAGE_ROOT)."
    )

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9.10 looks builders inside packages up through the
        # `importlib_resources` backport, which it only installs for Python < 3.9.
        return epath.Path(__file__)

    def __init__(self, *, options: BuildOptions | None = None, **kwargs: Any):
        self._options = options
        self._assignment: dict[tuple[int, int], str] = {}
        self._dropped: list[DroppedSample] = []
        self._warnings = 0
        self._written: collections.Counter[str] = collections.Counter()
        self._image_lists: collections.Counter[str] = collections.Counter()
        self._patients_in_several_splits: tuple[str, ...] = ()
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="CXRTrek staged chest X-ray question answering: one example per study.",
            features=FEATURES,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        if self._options is None:
            raise ValueError(f"{type(self).__name__} was built without options; it can only read existing data")
        image_root = os.fspath(dl_manager.manual_dir)
        planned = self._plan(image_root)
        return {
            split: self._generate_examples(split=split, image_root=image_root, planned=planned[split])
            for split in SPLIT_NAMES
            if planned[split]
        }

    def _reject(self, json_file: str, index: int, study_id: str, problems: list[Problem]) -> None:
        if not self._options.skip_invalid:
            listed = "; ".join(f"{p.field or 'sample'}: {p.message}" for p in problems)
            raise InvalidSampleError(
                f"{json_file}: sample {index} (study {study_id!r}) is invalid: {listed} "
                "(use skip_invalid / --skip-invalid to drop such samples)"
            )
        self._dropped.append(DroppedSample(json_file, index, study_id, tuple(problems)))

    def _plan(self, image_root: str) -> dict[str, int]:
        """Validates every sample and assigns the valid ones to splits."""
        options = self._options
        validator = StudyValidator(image_root)
        patient_splits: dict[str, set[str]] = collections.defaultdict(set)
        for file_index, json_file in enumerate(options.json_files):
            for index, element in enumerate(iter_elements(json_file)):
                check = validator.check(element, index, source=json_file)
                self._warnings += len(check.warnings)
                problems = list(check.errors)
                split = None
                if check.ok:
                    prefix, _ = find_cxrtrek_data(element)
                    split, failure = _split_of(check.study, prefix, options.split)
                    if failure is not None:
                        problems.append(Problem(index, check.study.key, *failure))
                study_id = problems[0].study_id if problems else check.study.key
                if problems:
                    self._reject(json_file, index, study_id, problems)
                    continue
                self._assignment[(file_index, index)] = split
                if check.study.pat_id:  # a patient is (source, pat_id)
                    patient_splits[study_key(check.study.source, check.study.pat_id, "")].add(split)
        self._patients_in_several_splits = tuple(sorted(p for p, s in patient_splits.items() if len(s) > 1))
        counts = collections.Counter(self._assignment.values())
        if not counts:
            raise InvalidSampleError(f"no valid samples in {', '.join(options.json_files)}; nothing to build")
        return {split: counts.get(split, 0) for split in SPLIT_NAMES}

    def _generate_examples(self, split: str, image_root: str, planned: int) -> Iterator[tuple[str, dict]]:
        tasks = (
            _ExampleTask(json_file, file_index, index, element, image_root)
            for file_index, json_file in enumerate(self._options.json_files)
            for index, element in enumerate(iter_elements(json_file))
            if self._assignment.get((file_index, index)) == split
        )
        for outcome in ordered_map(_prepare_example, tasks, self._options.processes):
            if outcome.problems:
                self._reject(outcome.json_file, outcome.index, outcome.study_key, list(outcome.problems))
                continue
            self._written[split] += 1
            self._image_lists[outcome.image_list] += 1
            yield outcome.key, outcome.example
        if self._written[split] == 0:
            raise InvalidSampleError(
                f"split {split!r}: all {planned} planned example(s) were dropped for unreadable images"
            )

    def build_summary(self) -> BuildSummary:
        """The summary of the last `download_and_prepare` of this builder."""
        return BuildSummary(
            dataset_dir=os.fspath(self.data_dir),
            examples={split: self._written.get(split, 0) for split in SPLIT_NAMES},
            dropped=tuple(self._dropped),
            warnings=self._warnings,
            patients_in_several_splits=self._patients_in_several_splits,
            image_lists={k: self._image_lists[k] for k in IMAGE_LISTS if self._image_lists[k]},
        )


def build_dataset(
    options: BuildOptions,
    image_root: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> BuildSummary:
    """Builds the `cxrtrek` data set under `data_dir` and writes `build_summary.json`
    next to its files. An existing build of the same version is an error
    (FileExistsError) unless `overwrite`, which deletes that version's folder first."""
    builder = CXRTrekBuilder(data_dir=os.fspath(data_dir), options=options)
    if os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        if not overwrite:
            raise FileExistsError(f"{builder.data_dir} already holds a built data set; pass overwrite=True to rebuild")
        shutil.rmtree(builder.data_dir)
        builder = CXRTrekBuilder(data_dir=os.fspath(data_dir), options=options)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(image_root))
    )
    summary = builder.build_summary()
    with open(os.path.join(builder.data_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary.to_json(), f, indent=2)
    return summary
