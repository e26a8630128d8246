"""Typed settings from JSON: read a file, build nested dataclasses from a partial dict.

``build(cls, data, where)`` fills the dataclass ``cls`` from ``data`` — only the keys it names,
the rest keep their defaults — checking every value against the field's type hint: ``bool``,
``int`` (a whole float such as ``4.0`` counts), ``float``, ``str``, ``Any``, ``T | None`` (each
member tried in turn), ``list[T]``, ``tuple[T, ...]`` or fixed ``tuple[A, B]`` (from a JSON list),
``dict`` and nested dataclasses. Unknown keys, missing required fields and wrong types are an
``InputError`` located at the key (``("optim", "lr")`` reads ``optim.lr``). Range rules are the
configs' own (their ``validate``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from typing import Any, TypeVar, Union

from .errors import InputError, Location

__all__ = ["read_json", "build"]

T = TypeVar("T")


def read_json(path: str | os.PathLike[str], argument: str | Location) -> Any:
    """The JSON document in ``path``; a missing or malformed file is an ``InputError`` naming
    ``argument`` (the flag or field that gave the path)."""
    if not os.path.isfile(path):
        raise InputError(argument, "file does not exist", str(path))
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(argument, f"not valid JSON ({err})", str(path)) from None


def build(cls: type[T], data: Any, where: Location = ()) -> T:
    """``cls`` (a dataclass) from the dict ``data``; errors located under ``where``."""
    if not isinstance(data, dict):
        raise InputError(where or "config", "must be a JSON object", type(data).__name__)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise InputError((*where, unknown[0]), f"unknown key (known: {known})", data[unknown[0]])
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        if name not in data:
            raise InputError(where or "config", f"needs a '{name}'", data)
    values = {name: _coerce(hints[name], value, (*where, name)) for name, value in data.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, where: Location) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where)
            except InputError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise InputError(where, "must be true or false", value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(where, "must be an integer", value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(where, "must be a number", value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise InputError(where, "must be a string", value)
    if origin is list:
        if not isinstance(value, list):
            raise InputError(where, "must be a list", value)
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(item, v, (*where, i)) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(hint)
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise InputError(where, f"must be a list of {len(items)} values", value)
        return tuple(_coerce(t, v, (*where, i)) for i, (t, v) in enumerate(zip(items, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(where, "must be a JSON object", value)
        return dict(value)
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # a bug in the config class
