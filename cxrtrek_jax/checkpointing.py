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
on one mesh restores onto any other. A step that cannot be read (a missing or truncated file)
is skipped with a warning and moved to `<directory>/unreadable/` once an older step restores,
so later saves can reuse its number; leftover Orbax temporary directories are reported and
ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from grain import checkpoint as grain_checkpoint
from jax.sharding import Mesh, NamedSharding, Sharding

from cxrtrek_jax import sharding as sharding_lib

__all__ = [
    "ITEM_PARAMS",
    "ITEM_OPT_STATE",
    "ITEM_METADATA",
    "ITEM_DATA_ITERATOR",
    "CheckpointConfig",
    "RestoredCheckpoint",
    "Checkpointer",
    "NoRestorableCheckpointError",
    "abstract_arrays",
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


class NoRestorableCheckpointError(RuntimeError):
    """Checkpoints exist but none could be restored."""


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

    def __init__(self, config: CheckpointConfig):
        self.config = config
        self.directory = epath.Path(config.directory).absolute()
        _warn_about_temporary_dirs(self.directory)
        self._manager = _open_manager(self.directory, create=True, config=config)

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
        self._manager.save(
            int(step),
            args=ocp.args.Composite(**items),
            metrics=dict(metrics) if metrics else None,
            force=True,
        )

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

        Unreadable steps are skipped with a warning; once an older step restores they are moved
        to `unreadable/`. If steps exist but none restores, raises NoRestorableCheckpointError
        listing each step's error (nothing is moved: the cause may be a changed model config).
        """
        failures: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            try:
                restored = self.restore(
                    step,
                    abstract_params=abstract_params,
                    abstract_opt_state=abstract_opt_state,
                    data_iterator=data_iterator,
                )
            except Exception as err:  # Orbax/TensorStore raise many types for damaged files.
                reason = f"{type(err).__name__}: {err}"
                log.warning("checkpoint step %d in %s is unreadable, skipping it: %s",
                            step, self.directory, reason)
                failures.append((step, reason))
                continue
            for bad_step, _ in failures:
                self._move_aside(bad_step)
            return restored
        if failures:
            details = "; ".join(f"step {s}: {r}" for s, r in failures)
            raise NoRestorableCheckpointError(
                f"no checkpoint in {self.directory} could be restored ({details})"
            )
        return None

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            target_dir = self.directory / UNREADABLE_DIR
            target_dir.mkdir(parents=True, exist_ok=True)
            target = target_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            (self.directory / str(step)).rename(target)
            log.warning("moved unreadable checkpoint step %d to %s", step, target)
        self._manager.reload()

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
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
