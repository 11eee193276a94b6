"""Typed settings: ``--set key=value`` strings and JSON config values coerced to the
declared type of a dataclass field (or of a constructor parameter), unknown keys refused.

A leaf module (it imports nothing of the package but :mod:`mmrecun_ray.errors`), used by
every room that takes settings.

Coercion rules, by declared type:

- ``bool``: ``true/false``, ``True/False``, ``yes/no``, ``on/off``, ``1/0`` (strings, any
  case) or a JSON boolean; anything else is refused (``"False"`` is never truthy);
- ``int`` / ``float``: numbers or numeric strings (``1e-3``); an ``int`` field refuses
  ``2.5`` and ``float`` refuses ``"abc"``;
- ``X | None``: ``null`` / ``None`` / ``none`` give None, else ``X``'s rule;
- ``float | str`` (e.g. ``forget_target``): a number when it parses as one, else the
  string (a field may restrict strings with ``choices``);
- ``str``: as given; ``tuple[int, ...]``: a JSON list or ``10,20,50``;
  ``dict``: a JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

from mmrecun_ray.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"null", "none"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"setting {key}={value!r}: expected true or false")


def _as_number(value: Any, tp: type, key: str) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(f"setting {key}={value!r}: expected {tp.__name__}, got a boolean")
    v = value
    if isinstance(value, str):
        try:
            v = json.loads(value.strip())
        except json.JSONDecodeError:
            raise ConfigError(f"setting {key}={value!r}: expected {tp.__name__}") from None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ConfigError(f"setting {key}={value!r}: expected {tp.__name__}")
    if tp is int:
        if float(v) != int(v):
            raise ConfigError(f"setting {key}={value!r}: expected an integer")
        return int(v)
    return float(v)


def _json(value: Any, key: str, want: type) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"setting {key}={value!r}: expected JSON {want.__name__}") from None
    if not isinstance(value, want):
        raise ConfigError(f"setting {key}={value!r}: expected {want.__name__}")
    return value


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (a string from the command line or a JSON value) as type ``tp``.

    Raises:
        ConfigError: naming ``key`` and the expected type.
    """
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str)
                                                     and value.strip().lower() in _NONE)):
            return None
        rest = [a for a in args if a is not type(None)]
        errors = []
        for a in sorted(rest, key=lambda a: a is str):  # strings last: "1.5" is a number
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"setting {key}={value!r}: expected "
                          f"{' or '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"setting {key}={value!r}: expected one of {list(choices)}")
    if tp is bool:
        return _as_bool(value, key)
    if tp in (int, float):
        return _as_number(value, tp, key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"setting {key}={value!r}: expected a string")
        return value
    if origin is tuple or tp is tuple:
        if isinstance(value, str) and not value.strip().startswith("["):
            value = [v for v in value.split(",") if v.strip()]
        items = _json(value, key, list) if isinstance(value, str) else list(value)
        inner = (typing.get_args(tp) or (Any,))[0]
        return tuple(coerce(v, inner, key) for v in items)
    if origin is list or tp is list:
        items = _json(value, key, list)
        inner = (typing.get_args(tp) or (Any,))[0]
        return [coerce(v, inner, key) for v in items]
    if origin is dict or tp is dict:
        return _json(value, key, dict)
    return value


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type annotations of a dataclass's public fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if not f.name.startswith("_")}


def typed(values: Mapping[str, Any], types_: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``values`` coerced with :func:`coerce` to ``types_``; a key ``types_`` lacks is a
    ConfigError naming it and listing the known keys."""
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; known: {sorted(types_)}")
    return {k: coerce(v, types_[k], k) for k, v in values.items()}


def build(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """A ``cls`` dataclass from ``values`` (typed, unknown keys refused)."""
    return cls(**typed(values, field_types(cls), what))


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["lr=0.01", "name=x"]`` -> ``{"lr": "0.01", "name": "x"}`` (values stay strings:
    :func:`typed` coerces them against the settings they belong to)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out
