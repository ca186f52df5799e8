"""Config utilities shared by every stage.

Each stage owns a frozen dataclass (hashable, so it can be a static ``jit`` argument); this
module gives them one way to be overridden from the command line (``--set key=value``),
validated with the list of valid keys, saved as JSON, reloaded, and compared.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad key or value in a config; the message lists what is valid."""


class Registry:
    """Named entries of one kind (methods, planners, sources, codecs): what every registry
    of the library shares. An unknown name is a ``ConfigError`` listing the known ones."""

    def __init__(self, kind: str):
        self.kind, self._entries = kind, {}

    def register(self, name: str, entry: Any) -> Any:
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests register toys and clean up after themselves)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]


def field_names(cfg_type: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg_type)]


def _coerce(cfg_type: type, key: str, value: Any) -> Any:
    """Turn a string (or JSON value) into the field's declared type, or raise ConfigError."""
    hints = typing.get_type_hints(cfg_type)
    typ = hints[key]
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        # A nested config: rebuilt from its JSON form, never from a scalar (``plan=3``).
        if isinstance(value, typ):
            return value
        if isinstance(value, dict):
            return from_dict(typ, value)
        raise ConfigError(f"{key} is a nested {typ.__name__}, not a value: set its fields "
                          f"by name ({', '.join(field_names(typ))})")
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value in (None, "none", "None"):
            return None
        typ = args[0]
    if origin is tuple or typ is tuple:
        args = typing.get_args(typ)
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v]
        inner = args[0] if args else str
        return tuple(_scalar(inner, key, v) for v in value)
    return _scalar(typ, key, value)


def _scalar(typ: type, key: str, value: Any) -> Any:
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a valid {typ.__name__}") from None


def replace(cfg: T, **overrides: Any) -> T:
    """``dataclasses.replace`` with key checking, type coercion and ``validate()``."""
    valid = field_names(type(cfg))
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown {type(cfg).__name__} key(s) {unknown}; valid keys: {', '.join(valid)}"
        )
    coerced = {k: _coerce(type(cfg), k, v) for k, v in overrides.items()}
    new = dataclasses.replace(cfg, **coerced)
    validate = getattr(new, "validate", None)
    if validate is not None:
        validate()
    return new


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def from_dict(cfg_type: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config from JSON data; unknown keys are an error (a file from elsewhere)."""
    return replace(cfg_type(), **data)


def save(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
    tmp.replace(path)


def load(cfg_type: type[T], path: str | Path) -> T:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    return from_dict(cfg_type, data)


def diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two configs of the same type: ``{key: (a, b)}``."""
    return diff_dicts(to_dict(a), to_dict(b))


def diff_dicts(da: dict[str, Any], db: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (a, b)}`` for keys whose JSON-normalised values differ."""
    da, db = json.loads(json.dumps(da, default=list)), json.loads(json.dumps(db, default=list))
    return {k: (da.get(k), db.get(k)) for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)}
