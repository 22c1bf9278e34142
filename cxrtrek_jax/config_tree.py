"""Typed, frozen config dataclasses as trees: JSON round trip and dotted overrides.

Used by every config of the project (model presets, experiments, pipeline,
optimiser): `to_dict(cfg)` / `from_dict(d, cls)` round-trip through JSON, and
`override(cfg, {"text.num_layers": "4"})` replaces fields by dotted key, parsing
command-line strings to each field's declared type. Imports no JAX.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["to_dict", "from_dict", "override"]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type inside `hint` (itself, or X of `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """`value` converted to the field type `hint`; strings are parsed.

    The strings "none"/"null" mean None only for optional fields (a `str` field
    keeps them as text, e.g. the context mode "none")."""
    nested = _dataclass_in(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if optional and isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    if value is None:
        if optional:
            return None
        raise ValueError(f"config key {key!r} cannot be None")
    if optional and nested is None:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if nested is not None:
        if isinstance(value, nested):
            return value
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {key!r} needs a mapping of {nested.__name__} fields, got {value!r}")
        return from_dict(value, nested, _prefix=f"{key}.")
    if hint is bool:
        if isinstance(value, str):
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"config key {key!r} needs a boolean, got {value!r}")
            return lowered in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} needs a boolean, got {value!r}")
        return value
    if hint in (int, float, str):
        try:
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if hint is not str and isinstance(value, bool):
                raise ValueError
            return hint(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key {key!r} needs a {hint.__name__}, got {value!r}") from None
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part] if not value.startswith("[") else json.loads(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} needs a list, got {value!r}")
        (item_hint, _) = typing.get_args(hint)
        return tuple(_coerce(item_hint, item, key) for item in value)
    raise TypeError(f"config key {key!r} has an unsupported field type {hint!r}")


def from_dict(data: Mapping[str, Any], cls: type, *, _prefix: str = "") -> Any:
    """Build config dataclass `cls` from `data` (as written by `to_dict`).

    Unknown keys are an error; missing keys take the field default (a missing
    field without default is an error naming it).
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"config {_prefix or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config keys {[_prefix + k for k in unknown]} for {cls.__name__}; "
                         f"known: {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"config {cls.__name__} is missing required keys {[_prefix + k for k in missing]}")
    kwargs = {name: _coerce(hints[name], value, _prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def override(cfg: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of `cfg` with fields replaced by dotted key, e.g. {"text.num_layers": 4}.

    All overrides are applied before the config is validated, so dependent
    fields may change together. A whole nested config may be given as a
    mapping (e.g. {"lora": {"rank": 4}}), which is how an optional config
    that is None gets set.
    """
    data = dataclasses.asdict(cfg)
    for key, value in overrides.items():
        _set_dotted(data, type(cfg), key, value)
    return from_dict(data, type(cfg))


def _set_dotted(data: dict, cls: type, key: str, value: Any) -> None:
    parts = key.split(".")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ValueError(f"unknown config key {key!r}: {cls.__name__} has no field {part!r}; fields: {names}")
        if depth == len(parts) - 1:
            data[part] = value
            return
        nested = _dataclass_in(_field_types(cls)[part])
        if nested is None or not isinstance(data.get(part), dict):
            raise ValueError(f"config key {key!r}: {part!r} is {data.get(part)!r}, not a nested config; "
                             f"set it whole first, e.g. {{{part!r}: {{...}}}}")
        data, cls = data[part], nested
