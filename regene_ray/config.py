"""Typed configs: dataclasses built from dicts/YAML with strict, readable validation.

Every config in regene-ray is a dataclass. `from_dict` turns a plain dict (from YAML, JSON or
flags) into one, and fails on an unknown key or a wrong type with a message that names the key
and the file it came from, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from regene_ray.storage import atomic_write_bytes

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


# A saved model folder (written and loaded by regene_ray.checkpoint): its config, then its weights.
MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"


def parse_config(text: str | bytes, name: str) -> dict:
    """A model's config.json, from its text; a corrupt one is named by `name`."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{name} is corrupt ({e}); retrain with jobs/train.py") from e


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; allow int -> float and list -> tuple only."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key, source)
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, key, source)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping of {tp.__name__} fields")
        return from_dict(tp, value, source=source, prefix=f"{key}.")
    return _coerce_scalar(value, tp, key, source)


def _coerce_union(value: Any, tp: Any, key: str, source: str) -> Any:
    """`X | None` and other unions: None where allowed, else the first member that accepts it."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key, source)
        except ConfigError:
            pass
    raise ConfigError(
        f"{source}: key '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )


def _coerce_sequence(value: Any, tp: Any, key: str, source: str) -> list | tuple:
    """list[X] / tuple[X, ...]: a list or tuple whose items each check against X."""
    if not isinstance(value, list | tuple):
        raise ConfigError(
            f"{source}: key '{key}' must be a list, got {value!r} ({type(value).__name__})"
        )
    args = typing.get_args(tp)
    inner = args[0] if args else Any
    items = [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return tuple(items) if typing.get_origin(tp) is tuple else items


def _coerce_scalar(value: Any, tp: Any, key: str, source: str) -> Any:
    """float (an int is widened), int, bool and str; a bool is never a number. Other
    annotations pass the value through unchecked."""
    got = f"got {value!r} ({type(value).__name__})"
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: key '{key}' must be a number, {got}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}' must be an integer, {got}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}' must be true or false, got {value!r}")
        return value
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{source}: key '{key}' must be a string, {got}")
    return value


def from_dict(cls: type[T], data: dict, *, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types.

    Args:
        cls: the dataclass type.
        data: a plain mapping, e.g. parsed YAML.
        source: where `data` came from (a file path), quoted in every error.
        prefix: key prefix for nested dataclasses, so errors read `classifier.depth`.
    Returns:
        An instance of `cls`; its `__post_init__` validation has run.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys are: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, source) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from e


def to_dict(cfg: Any) -> dict:
    """A dataclass as plain JSON/YAML-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with a clear error for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}); fix the syntax") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def save_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path = Path(path)
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
