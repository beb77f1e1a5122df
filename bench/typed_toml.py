"""TOML tables ↔ frozen dataclasses: a dataclass built from a table with every key and type checked (an error names
the file, the table and the key), and nested dicts of scalars written back as TOML. Config-agnostic: bench.config
describes genbench's tables with it."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line that says what to fix."""


def subtable(raw: dict, key: str, origin: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: {where} must be a table, got {value!r}")
    return value


def check_keys(table: dict, allowed: set[str], origin: str, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{origin}: [{where}] unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")


def build(cls: type, table: dict, origin: str, where: str):
    """Instantiate dataclass `cls` from a TOML table, checking keys and types, naming file/table/key on error."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    check_keys(table, set(names), origin, where)
    kwargs = {}
    for key, value in table.items():
        if dataclasses.is_dataclass(value):  # nested table already built
            kwargs[key] = value
            continue
        try:
            kwargs[key] = coerce(value, hints[key])
        except TypeError as e:
            raise ConfigError(f"{origin}: [{where}] {key} {e}") from None
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs and required(f)]
        raise ConfigError(f"{origin}: [{where}] missing key(s): {', '.join(missing) or e}") from None
    except ValueError as e:
        raise ConfigError(f"{origin}: [{where}] {e}") from None


def required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def coerce(value: Any, hint: Any) -> Any:
    """Check `value` against the annotation `hint`; returns the value in the field's type or raises TypeError."""
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"must be a table, got {value!r}")
        return {str(k): coerce(v, typing.get_args(hint)[1]) for k, v in value.items()}
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if not isinstance(value, list):
            raise TypeError(f"must be a list, got {value!r}")
        return tuple(coerce(v, args[0]) for v in value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return coerce(value, arg)
            except TypeError:
                pass
        raise TypeError(f"has the wrong type: {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in _TYPE_WORDS:
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise TypeError(f"must be {_TYPE_WORDS[hint]}, got {value!r} ({type(value).__name__})")
    return value


def to_toml(data: dict[str, Any]) -> str:
    """A nested dict of scalars and lists as TOML (the `config.toml` artifact), written by tomli-w: any string,
    non-BMP characters included, reads back with tomllib."""
    import tomli_w

    return tomli_w.dumps(_plain(data))


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what a TOML writer takes."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------ field checks and --set values


def parse_value(text: str) -> Any:
    """A `--set KEY=VALUE` value: a TOML value (500, 1e-4, [0, 1], true), or a bare word as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def positive(obj: Any, *keys: str) -> None:
    for key in keys:
        value = getattr(obj, key)
        if not value > 0:
            raise ValueError(f"{key} must be > 0, got {value}")


def one_of(obj: Any, key: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, key)
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
