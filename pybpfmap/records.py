"""Typed records to and from JSON.

Every command defines its results as dataclasses and renders them itself;
these two functions are how they travel: printed by ``--json``, brought back
from the test VM, stored in a report's ``results.json`` and read again by
``report --merge``.  :func:`from_json` is strict: a key the record type does
not know is an error, so a format drift shows up at once instead of as an
empty table cell.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def to_json(obj: Any) -> Any:
    """Dataclasses, enums (their value, or ``label`` when they have one),
    paths, tuples, lists and dicts to JSON-ready values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return getattr(obj, "label", obj.value)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, float)) else k: to_json(v)
                for k, v in obj.items()}
    return obj


class RecordError(ValueError):
    """JSON that does not fit the record type."""


def from_json(cls: type[T], data: Any) -> T:
    """Build a ``cls`` (a dataclass) from what :func:`to_json` made of one."""
    return _convert(cls, data, cls.__name__)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except (RecordError, TypeError, ValueError) as e:
                errors.append(str(e))
        raise RecordError(f"{where}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(_convert(a, v, f"{where}[{i}]")
                         for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        ktype, vtype = (typing.get_args(tp) or (Any, Any))
        return {_key(ktype, k): _convert(vtype, v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object for {tp.__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - set(fields)
        if unknown:
            raise RecordError(f"{where}: {tp.__name__} has no field(s) "
                              f"{', '.join(sorted(unknown))}")
        kwargs = {name: _convert(hints[name], value[name], f"{where}.{name}")
                  for name in fields if name in value}
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise RecordError(f"{where}: {e}") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if getattr(member, "label", member.value) == value:
                return member
        raise RecordError(f"{where}: {value!r} is not a {tp.__name__}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise RecordError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def _key(ktype: Any, key: str) -> Any:
    if ktype is int:
        return int(key)
    return key
