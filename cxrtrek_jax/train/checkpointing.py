"""Orbax checkpoints: one step directory per save, holding separate items.

    <directory>/<step>/params/          the model parameters (nested dict; all inference and
                                        export need, loadable alone with `load_params`)
    <directory>/<step>/opt_state/       the optimizer state
    <directory>/<step>/metadata/        JSON: step, model config, tokenizer path, metrics, the
                                        parameters' logical axis names, ... (`read_metadata`)
    <directory>/<step>/data_iterator/   the Grain iterator state (one JSON file per process)

Saving is asynchronous (Orbax copies device arrays to host, then writes in the background);
Orbax writes into a temporary directory and renames it when complete. Kept: the last
`keep_last` steps plus the `keep_best` steps with the best validation metric.

Restoring takes abstract arrays (`jax.ShapeDtypeStruct` with a sharding), so a checkpoint saved
on one mesh restores onto any other. Leftover Orbax temporary directories are reported and
ignored.

Checksums: once a step's write has finished, process 0 records every file of it (size and
CRC-32) in `<directory>/checksums/<step>.json`. OCDBT checksums only its b-tree nodes, not the
array bytes, so without this a flipped bit in a parameter would restore silently.

`restore_latest` falls back to an older step only when the newest is *proven* corrupt: a file
its checksum manifest lists is missing, has another size or another CRC-32, a file every step has
is missing, or the storage layer reports lost/missing/short data (TensorStore DATA_LOSS,
NOT_FOUND, OUT_OF_RANGE; unparsable JSON; a missing item). The corrupt step is moved to
`<directory>/unreadable/` once an older step restores, so later saves can reuse its number.
Transient errors (OSError such as a timeout or a dropped connection, TensorStore UNAVAILABLE /
DEADLINE_EXCEEDED / ABORTED / RESOURCE_EXHAUSTED) are retried with backoff and, if they persist,
raised: a read error must not roll training back. Any other error of an intact step (e.g. a
changed model config) is raised too, naming the step. Every skip is logged and printed to
stderr. In a multi-process job all processes must restore the same step (checked).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from grain import checkpoint as grain_checkpoint
from jax.sharding import Mesh, NamedSharding, Sharding

from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.train.process_gather import gather_ints
from data_pipeline.files.atomic_write import write_text_atomically

__all__ = [
    "ITEM_PARAMS",
    "ITEM_OPT_STATE",
    "ITEM_METADATA",
    "ITEM_DATA_ITERATOR",
    "CheckpointConfig",
    "RestoredCheckpoint",
    "Checkpointer",
    "NoRestorableCheckpointError",
    "CheckpointRestoreError",
    "StepMismatchError",
    "abstract_arrays",
    "check_same_step",
    "flatten_logical_names",
    "load_params",
    "load_params_into",
    "read_metadata",
    "save_params_only",
]

log = logging.getLogger(__name__)

ITEM_PARAMS = "params"
ITEM_OPT_STATE = "opt_state"
ITEM_METADATA = "metadata"
ITEM_DATA_ITERATOR = "data_iterator"
UNREADABLE_DIR = "unreadable"
CHECKSUMS_DIR = "checksums"
_TMP_MARKER = ".orbax-checkpoint-tmp"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to checkpoint, and what to keep.

    save_every: save every this many optimizer steps (the loop also saves at the end and on
      pre-emption). keep_last: the newest steps always kept. keep_best: additionally keep this
      many steps with the best `best_metric` (passed as `metrics` at save time; `best_mode`
      "min" or "max"); 0 disables it.
    """

    directory: str
    save_every: int = 1000
    keep_last: int = 3
    keep_best: int = 1
    best_metric: str = "val_loss"
    best_mode: str = "min"
    async_save: bool = True

    def __post_init__(self):
        if self.save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {self.save_every}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.keep_best < 0:
            raise ValueError(f"keep_best must be >= 0, got {self.keep_best}")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {self.best_mode!r}")


@dataclasses.dataclass
class RestoredCheckpoint:
    step: int
    params: Any
    opt_state: Any
    metadata: dict[str, Any]
    data_iterator: Any | None


class CheckpointRestoreError(RuntimeError):
    """A checkpoint step that is not proven corrupt could not be restored (a persisting
    transient read error, or an intact step that does not fit the model); nothing was moved."""


class NoRestorableCheckpointError(CheckpointRestoreError):
    """Checkpoints exist but every one is corrupt."""


class StepMismatchError(RuntimeError):
    """The processes of a multi-process job restored different checkpoint steps."""


# TensorStore reports errors as ValueError("<STATUS>: ..."); these statuses mean the bytes are
# lost, absent or short (a checksum failed, a file is missing, a file is truncated).
_CORRUPT_STATUSES = ("DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE")
# ... and these that the storage could not be reached just now.
_TRANSIENT_STATUSES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "RESOURCE_EXHAUSTED")
# Files every finished step has, per item (Orbax's pytree and JSON item layouts).
_REQUIRED_FILES = {
    ITEM_PARAMS: ("_METADATA", "manifest.ocdbt"),
    ITEM_OPT_STATE: ("_METADATA", "manifest.ocdbt"),
    ITEM_METADATA: ("metadata",),
}


def _error_kind(err: BaseException) -> str:
    """"corrupt" (the bytes are missing, short or fail a checksum), "transient" (worth retrying)
    or "other" (e.g. a shape mismatch with the model: the checkpoint is intact)."""
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, json.JSONDecodeError,
                        EOFError)):
        return "corrupt"
    if isinstance(err, KeyError) and "not found in the checkpoint" in str(err):
        return "corrupt"  # Orbax: an item directory is missing
    text = str(err)
    if any(text.startswith(f"{status}:") for status in _CORRUPT_STATUSES):
        return "corrupt"
    if any(text.startswith(f"{status}:") for status in _TRANSIENT_STATUSES):
        return "transient"
    if isinstance(err, PermissionError):
        return "other"  # retrying will not help and the bytes may be fine
    if isinstance(err, (OSError, TimeoutError, ConnectionError)):
        return "transient"
    return "other"


def _file_crc32(path: os.PathLike) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _step_files(step_dir: epath.Path) -> dict[str, os.PathLike]:
    root = os.fspath(step_dir)
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = full
    return out


def _warn(message: str) -> None:
    """A warning on the log and on stderr (absl/logging set-ups may hide the log)."""
    log.warning("%s", message)
    print(f"checkpoint warning: {message}", file=sys.stderr, flush=True)


def _gather_steps(value: int) -> list[int]:
    """[int per process]: `value` of every process (a collective)."""
    return [int(v) for v in gather_ints([value])[:, 0]]


def check_same_step(step: int | None, directory, *, gather=None) -> None:
    """Raise StepMismatchError unless every process restored `step` (None = none restored).
    `gather(int) -> [int per process]` defaults to `process_allgather` (multi-process only)."""
    if gather is None:
        if jax.process_count() == 1:
            return
        gather = _gather_steps
    steps = gather(-1 if step is None else int(step))
    if len(set(steps)) > 1:
        per_process = ", ".join(f"process {i}: {'none' if s < 0 else f'step {s}'}"
                                for i, s in enumerate(steps))
        raise StepMismatchError(
            f"the processes restored different checkpoints from {directory} ({per_process}); they "
            "must start from the same step — check that every process sees the same checkpoint "
            "directory (a shared file system) and that no step was damaged on one host only")


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
    return {
        ITEM_PARAMS: ocp.StandardCheckpointHandler(),
        ITEM_OPT_STATE: ocp.StandardCheckpointHandler(),
        ITEM_METADATA: ocp.JsonCheckpointHandler(),
        ITEM_DATA_ITERATOR: grain_checkpoint.CheckpointHandler(),
    }


def _preservation_policy(config: CheckpointConfig):
    policies = ocp.checkpoint_managers
    keep = [policies.LatestN(n=config.keep_last)]
    if config.keep_best:
        keep.append(
            policies.BestN(
                get_metric_fn=lambda metrics: metrics[config.best_metric],
                # BestN keeps the tail of the sorted list: sort descending to keep minima.
                reverse=config.best_mode == "min",
                n=config.keep_best,
                keep_checkpoints_without_metrics=False,
            )
        )
    return policies.AnyPreservationPolicy(policies=keep)


def _open_manager(directory: str | os.PathLike, *, create: bool, config: CheckpointConfig | None):
    if not create and not epath.Path(directory).is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    options = ocp.CheckpointManagerOptions(
        create=create,
        enable_async_checkpointing=bool(config and config.async_save),
        preservation_policy=_preservation_policy(config) if config else None,
    )
    return ocp.CheckpointManager(
        epath.Path(directory).absolute(), options=options, item_handlers=_item_handlers()
    )


def _warn_about_temporary_dirs(directory: epath.Path) -> None:
    if not directory.exists():
        return
    for path in sorted(directory.iterdir()):
        if _TMP_MARKER in path.name:
            log.warning("ignoring incomplete checkpoint (Orbax temporary directory) %s", path)


def abstract_arrays(tree: Any, shardings: Any) -> Any:
    """`ShapeDtypeStruct`s of `tree`'s leaves carrying `shardings` (a matching pytree, or one
    `Sharding` for all)."""
    if isinstance(shardings, Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def flatten_logical_names(logical_names: Any) -> dict[str, list[str | None] | None]:
    """{"a/b/0/kernel": [names...] or None} for JSON metadata, from a nested dict of tuples."""
    flat = jax.tree_util.tree_flatten_with_path(
        logical_names, is_leaf=lambda n: n is None or isinstance(n, tuple)
    )[0]
    return {_path_str(path): None if names is None else list(names) for path, names in flat}


def _path_str(path) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


class Checkpointer:
    """The training run's checkpoints (params, opt_state, metadata, data iterator) in one
    directory. Use as a context manager, or call `close()` (waits for pending saves)."""

    #: restore attempts per step on a transient error, and the first wait between them (doubling)
    restore_attempts: int = 4
    retry_backoff_s: float = 1.0

    def __init__(self, config: CheckpointConfig):
        self.config = config
        self.directory = epath.Path(config.directory).absolute()
        _warn_about_temporary_dirs(self.directory)
        self._manager = _open_manager(self.directory, create=True, config=config)
        self._unsummed: set[int] = set()  # steps saved here whose checksums are not written yet
        # Checksums are computed with local file reads; on an object store (gs://...) they are off.
        self.checksums = "://" not in str(config.directory)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        *,
        params: Any,
        opt_state: Any,
        metadata: Mapping[str, Any],
        data_iterator: Any | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Start saving `step` (returns once arrays are copied to host; the write continues in
        the background). `metadata` must be JSON-able; `step` and `metrics` are added to it."""
        items = {
            ITEM_PARAMS: ocp.args.StandardSave(params),
            ITEM_OPT_STATE: ocp.args.StandardSave(opt_state),
            ITEM_METADATA: ocp.args.JsonSave(
                dict(metadata, step=int(step), metrics=dict(metrics or {}))
            ),
        }
        if data_iterator is not None:
            items[ITEM_DATA_ITERATOR] = grain_checkpoint.CheckpointSave(data_iterator)
        # Orbax waits for the previous save before starting this one anyway; waiting here first
        # lets that finished step get its checksums.
        self.wait_until_finished()
        self._manager.save(
            int(step),
            args=ocp.args.Composite(**items),
            metrics=dict(metrics) if metrics else None,
            force=True,
        )
        self._unsummed.add(int(step))

    def checksum_path(self, step: int) -> epath.Path:
        """The checksum manifest of `step`: {"files": {relative path: {"size", "crc32"}}}."""
        return self.directory / CHECKSUMS_DIR / f"{int(step)}.json"

    def _write_checksums(self) -> None:
        """Record the checksums of the finished steps saved here; drop those of deleted steps
        (process 0 only)."""
        steps = set(self._manager.all_steps())
        pending, self._unsummed = self._unsummed, set()
        if jax.process_index() != 0 or not self.checksums:
            return
        for step in sorted(pending & steps):
            files = _step_files(self.directory / str(step))
            manifest = {"step": step, "files": {
                rel: {"size": os.path.getsize(full), "crc32": _file_crc32(full)}
                for rel, full in sorted(files.items())}}
            target = self.checksum_path(step)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(target, json.dumps(manifest))
        checksum_dir = self.directory / CHECKSUMS_DIR
        if checksum_dir.exists():
            for path in checksum_dir.glob("*.json"):
                if path.stem.isdigit() and int(path.stem) not in steps:
                    path.unlink()

    def verify_step(self, step: int, *, with_data_iterator: bool = False) -> list[str]:
        """Why `step` is corrupt ([] = no evidence it is): files its checksum manifest lists that
        are missing or differ in size or CRC-32, or (without a manifest, e.g. killed right after
        the write) files every step has that are missing. May raise OSError (transient)."""
        step_dir = self.directory / str(step)
        if not step_dir.is_dir():
            return [f"{step_dir} is missing"]
        problems = []
        items = dict(_REQUIRED_FILES, **({ITEM_DATA_ITERATOR: ()} if with_data_iterator else {}))
        for item, names in items.items():
            if not (step_dir / item).is_dir():
                problems.append(f"item {item!r} is missing")
                continue
            problems += [f"{item}/{name} is missing" for name in names
                         if not (step_dir / item / name).exists()]
        manifest_path = self.checksum_path(step)
        if self.checksums and manifest_path.exists():
            try:
                listed = json.loads(manifest_path.read_text())["files"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                log.warning("ignoring the unreadable checksum manifest %s: %s", manifest_path, err)
                return problems
            files = _step_files(step_dir)
            for rel, want in sorted(listed.items()):
                if rel not in files:
                    problems.append(f"{rel} is missing")
                elif os.path.getsize(files[rel]) != want["size"]:
                    problems.append(f"{rel} has {os.path.getsize(files[rel])} bytes, "
                                    f"{want['size']} when saved")
                elif _file_crc32(files[rel]) != want["crc32"]:
                    problems.append(f"{rel} fails its CRC-32 checksum")
        return sorted(set(problems))

    def restore(
        self,
        step: int,
        *,
        abstract_params: Any,
        abstract_opt_state: Any,
        data_iterator: Any | None = None,
    ) -> RestoredCheckpoint:
        """Restore `step` onto the shardings carried by the abstract arrays; `data_iterator`
        (a Grain iterator) has its state set in place."""
        items = {
            ITEM_PARAMS: ocp.args.StandardRestore(abstract_params),
            ITEM_OPT_STATE: ocp.args.StandardRestore(abstract_opt_state),
            ITEM_METADATA: ocp.args.JsonRestore(),
        }
        if data_iterator is not None:
            items[ITEM_DATA_ITERATOR] = grain_checkpoint.CheckpointRestore(data_iterator)
        out = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        return RestoredCheckpoint(
            step=int(step),
            params=out[ITEM_PARAMS],
            opt_state=out[ITEM_OPT_STATE],
            metadata=dict(out[ITEM_METADATA]),
            data_iterator=out[ITEM_DATA_ITERATOR] if data_iterator is not None else None,
        )

    def restore_latest(
        self,
        *,
        abstract_params: Any,
        abstract_opt_state: Any,
        data_iterator: Any | None = None,
    ) -> RestoredCheckpoint | None:
        """The newest step that restores; None when there is no checkpoint.

        A step proven corrupt (see the module docstring) is skipped with a warning (log and
        stderr) naming the step and the evidence, and moved to `unreadable/` once an older step
        restores. Transient errors are retried `restore_attempts` times with doubling waits,
        then raised as CheckpointRestoreError, as is any other error of an intact step; nothing
        is moved then. If every step is corrupt, raises NoRestorableCheckpointError listing each
        step's evidence (nothing moved). In a multi-process job, raises StepMismatchError
        unless all processes restored the same step.
        """
        corrupt: list[tuple[int, str]] = []
        restored = None
        for step in reversed(self.steps()):
            evidence = self._try_restore(step, abstract_params, abstract_opt_state, data_iterator)
            if isinstance(evidence, RestoredCheckpoint):
                restored = evidence
                break
            _warn(f"skipping checkpoint step {step} in {self.directory}: it is corrupt ({evidence})")
            corrupt.append((step, evidence))
        if corrupt and restored is None:
            details = "; ".join(f"step {s}: {r}" for s, r in corrupt)
            raise NoRestorableCheckpointError(
                f"no checkpoint in {self.directory} could be restored; every step is corrupt ({details})"
            )
        check_same_step(None if restored is None else restored.step, self.directory)
        for bad_step, _ in corrupt:
            self._move_aside(bad_step)
        if corrupt:
            _warn(f"restored step {restored.step} instead; the training since then is redone")
        return restored

    def _try_restore(self, step, abstract_params, abstract_opt_state, data_iterator
                     ) -> RestoredCheckpoint | str:
        """The restored step, or the evidence (text) that it is corrupt; raises
        CheckpointRestoreError when it is neither restorable nor proven corrupt."""
        for attempt in range(1, self.restore_attempts + 1):
            try:
                problems = self.verify_step(step, with_data_iterator=data_iterator is not None)
                if problems:
                    return "; ".join(problems)
                return self.restore(step, abstract_params=abstract_params,
                                    abstract_opt_state=abstract_opt_state, data_iterator=data_iterator)
            except Exception as err:  # Orbax/TensorStore raise many types; classified below
                reason = f"{type(err).__name__}: {err}"
                kind = _error_kind(err)
                if kind == "corrupt":
                    return reason
                if kind == "other":
                    raise CheckpointRestoreError(
                        f"checkpoint step {step} in {self.directory} could not be restored, but it "
                        f"is not corrupt (its files are intact), so no older step is used instead: "
                        f"{reason}. A changed model or optimiser config (shapes, structure) causes "
                        "this; train in a fresh directory or restore the config") from err
                if attempt == self.restore_attempts:
                    raise CheckpointRestoreError(
                        f"checkpoint step {step} in {self.directory} could not be read after "
                        f"{attempt} attempts (transient error: {reason}); not falling back to an "
                        "older step, which would silently redo training — retry when the storage "
                        "is reachable") from err
                wait = self.retry_backoff_s * 2 ** (attempt - 1)
                _warn(f"reading checkpoint step {step} in {self.directory} failed (attempt "
                      f"{attempt} of {self.restore_attempts}, transient: {reason}); retrying in {wait:g}s")
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            target_dir = self.directory / UNREADABLE_DIR
            target_dir.mkdir(parents=True, exist_ok=True)
            target = target_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            (self.directory / str(step)).rename(target)
            if self.checksum_path(step).exists():
                self.checksum_path(step).rename(target / "checksums.json")
            _warn(f"moved corrupt checkpoint step {step} to {target}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
        self._manager.reload()

    def wait_until_finished(self) -> None:
        """Wait for the pending save; then write the checksums of the finished steps."""
        self._manager.wait_until_finished()
        self._write_checksums()

    def close(self) -> None:
        self.wait_until_finished()
        self._manager.close()


def _resolve_step(manager: ocp.CheckpointManager, directory, step: int | None) -> int:
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint steps in {directory}")
    if step is None:
        return max(steps)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint step {step} in {directory}; found {sorted(steps)}")
    return step


def read_metadata(ckpt_dir: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata of `step` (default: the newest)."""
    manager = _open_manager(ckpt_dir, create=False, config=None)
    try:
        step = _resolve_step(manager, ckpt_dir, step)
        out = manager.restore(step, args=ocp.args.Composite(**{ITEM_METADATA: ocp.args.JsonRestore()}))
        return dict(out[ITEM_METADATA])
    finally:
        manager.close()


def _stored_shapes(manager: ocp.CheckpointManager, ckpt_dir, step: int) -> Any:
    """The params item's tree of `ShapeDtypeStruct`s as stored at `step` (int list keys)."""
    stored = manager.item_metadata(step)[ITEM_PARAMS]
    if stored is None:
        raise FileNotFoundError(f"checkpoint step {step} in {ckpt_dir} has no {ITEM_PARAMS!r} item")
    stored = getattr(stored, "tree", stored)  # Orbax wraps the tree in TreeMetadata
    return _int_list_keys(jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), stored))


def load_params(
    ckpt_dir: str | os.PathLike,
    step: int | None = None,
    *,
    shardings: Any | None = None,
    mesh: Mesh | None = None,
    rules: sharding_lib.LogicalRules = sharding_lib.LOGICAL_AXIS_RULES,
) -> Any:
    """Only the parameters of `step` (default: the newest), as a nested dict of jax Arrays.

    Placement: `shardings` (a pytree of `Sharding`s matching the parameters) if given; else on
    `mesh` by the logical axis names stored in the metadata and `rules`; else on the first
    local device. Digit-only dict keys come back as ints (NNX list indices).
    """
    manager = _open_manager(ckpt_dir, create=False, config=None)
    try:
        step = _resolve_step(manager, ckpt_dir, step)
        shapes = _stored_shapes(manager, ckpt_dir, step)
        if shardings is None and mesh is not None:
            shardings = _shardings_from_metadata(ckpt_dir, step, shapes, mesh, rules)
        if shardings is None:
            shardings = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = abstract_arrays(shapes, shardings)
        out = manager.restore(step, args=ocp.args.Composite(**{ITEM_PARAMS: ocp.args.StandardRestore(target)}))
        return out[ITEM_PARAMS]
    finally:
        manager.close()


def load_params_into(
    ckpt_dir: str | os.PathLike,
    fresh_params: Any,
    may_stay_fresh: Any,
    step: int | None = None,
) -> Any:
    """`fresh_params` with every parameter the checkpoint stores loaded in its place.

    For starting a model that adds parameters (LoRA adapters) from a checkpoint of its base.
    fresh_params: the model's full parameter tree (nested dict of placed jax Arrays; each loaded
      parameter takes the sharding and dtype of the fresh one it replaces).
    may_stay_fresh: a matching tree of bools: True where a parameter the checkpoint lacks may
      keep its fresh value. Any other missing parameter, a stored parameter the model lacks, or a
      shape mismatch raises ValueError naming the parameter(s).
    """
    fresh = {_path_str(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(fresh_params)}
    allowed = {_path_str(path) for path, ok in jax.tree_util.tree_leaves_with_path(may_stay_fresh) if ok}
    manager = _open_manager(ckpt_dir, create=False, config=None)
    try:
        step = _resolve_step(manager, ckpt_dir, step)
        shapes = _stored_shapes(manager, ckpt_dir, step)
        stored = {_path_str(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
        problems = [f"{name} is in the checkpoint but not in the model" for name in stored if name not in fresh]
        problems += [f"{name} is missing from the checkpoint" for name in fresh
                     if name not in stored and name not in allowed]
        problems += [f"{name} has shape {stored[name].shape} in the checkpoint, {fresh[name].shape} in the model"
                     for name in stored if name in fresh and tuple(stored[name].shape) != tuple(fresh[name].shape)]
        if problems:
            raise ValueError(f"cannot initialise from {ckpt_dir} step {step}: " + "; ".join(problems))
        target = jax.tree_util.tree_map_with_path(
            lambda path, _: jax.ShapeDtypeStruct(fresh[_path_str(path)].shape, fresh[_path_str(path)].dtype,
                                                 sharding=fresh[_path_str(path)].sharding), shapes)
        out = manager.restore(step, args=ocp.args.Composite(**{ITEM_PARAMS: ocp.args.StandardRestore(target)}))
    finally:
        manager.close()
    loaded = {_path_str(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(out[ITEM_PARAMS])}
    return jax.tree_util.tree_map_with_path(lambda path, leaf: loaded.get(_path_str(path), leaf), fresh_params)


def _int_list_keys(tree: Any) -> Any:
    """Orbax's stored tree structure spells integer dict keys (NNX list indices, as produced by
    `nnx.to_pure_dict`) as strings; turn digit-only keys back into ints."""
    if isinstance(tree, Mapping):
        return {
            (int(k) if isinstance(k, str) and k.isdigit() else k): _int_list_keys(v)
            for k, v in tree.items()
        }
    return tree


def _shardings_from_metadata(ckpt_dir, step, shapes, mesh: Mesh, rules) -> Any:
    names = read_metadata(ckpt_dir, step).get("logical_axis_names") or {}
    if not names:
        log.warning("checkpoint %s step %d stores no logical axis names; replicating parameters", ckpt_dir, step)

    def one(path, shape):
        entry = names.get(_path_str(path))
        spec = sharding_lib.partition_spec(
            None if entry is None else tuple(entry), shape.shape, mesh, rules
        )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, shapes)


def save_params_only(
    ckpt_dir: str | os.PathLike,
    params: Any,
    *,
    model_config: Mapping[str, Any],
    logical_names: Any | None = None,
    tokenizer_path: str | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> int:
    """Write a step-0 checkpoint holding only `params` and metadata (model config, tokenizer
    path, logical axis names) — what `import-hf` produces; training can start from it and
    `load_params` reads it. Refuses a directory that already holds checkpoint steps."""
    manager = _open_manager(ckpt_dir, create=True, config=None)
    try:
        if manager.all_steps():
            raise FileExistsError(
                f"{ckpt_dir} already holds checkpoint steps {sorted(manager.all_steps())}"
            )
        metadata = dict(extra_metadata or {})
        metadata.update(
            step=0,
            model_config=dict(model_config),
            tokenizer_path=tokenizer_path,
            logical_axis_names=None if logical_names is None else flatten_logical_names(logical_names),
            metrics={},
        )
        manager.save(
            0,
            args=ocp.args.Composite(**{
                ITEM_PARAMS: ocp.args.StandardSave(params),
                ITEM_METADATA: ocp.args.JsonSave(metadata),
            }),
            force=True,
        )
        manager.wait_until_finished()
    finally:
        manager.close()
    return 0
