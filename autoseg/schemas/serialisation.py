"""Dataclasses <-> JSON: ``to_dict``, ``from_dict`` (unknown or missing keys rejected, naming the file and
key), ``stable_hash``, ``save_json``/``load_json``, and the migration helper for old keys."""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import types
import typing
from typing import Any, Literal, TypeVar, Union

from ..errors import SchemaError

SCHEMA_VERSION = 1

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    """Recursively turn dataclasses, enums, tuples into JSON-ready plain data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return None
    if hasattr(obj, "item") and callable(obj.item) and type(obj).__module__ == "numpy":
        return obj.item()  # a numpy scalar slipped through: store the Python value
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise SchemaError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        last_err: Exception | None = None
        for a in non_none:
            try:
                return _convert(a, value, where)
            except SchemaError as e:
                last_err = e
        raise last_err or SchemaError(f"{where}: cannot read {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, found {type(value).__name__}")
        return _from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise SchemaError(f"{where}: {value!r} is not one of {allowed}") from None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"{where}: expected a list, found {type(value).__name__}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        conv = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(conv) if origin is tuple else conv
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, found {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, f"{where}.key") if kt is not str else str(k): _convert(vt, v, f"{where}.{k}")
                for k, v in value.items()}
    if tp is float:
        if value is None:
            return float("nan")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string, found {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected true/false, found {value!r}")
        return value
    return value


def _renamed(data: dict, **renames: str) -> dict:
    """``data`` with keys of an older autoseg renamed (old=new), for a class's ``_migrate``."""
    return {renames.get(k, k) if renames.get(k) not in data else k: v for k, v in data.items()}


def _from_dict(cls: type[T], data: dict, where: str) -> T:
    migrate = getattr(cls, "_migrate", None)
    if migrate is not None:
        data = migrate(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SchemaError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
                          f"the file was written by another autoseg version or edited by hand")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise SchemaError(f"{where}: missing key '{name}' for {cls.__name__}")
        kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
    return cls(**kwargs)


def from_dict(cls: type[T], data: Any, where: str = "<data>") -> T:
    """Build ``cls`` from plain data; ``where`` (usually a file name) prefixes every error."""
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a JSON object for {cls.__name__}")
    if getattr(cls, "_migrate", None) is not None:
        data = cls._migrate(data)  # type: ignore[attr-defined]
    version = data.get("schema_version")
    if "schema_version" in {f.name for f in dataclasses.fields(cls)} and version != SCHEMA_VERSION:
        raise SchemaError(f"{where}: schema_version {version!r}, this autoseg reads {SCHEMA_VERSION}; "
                          f"rerun the stage that wrote it with --overwrite")
    return _from_dict(cls, data, where)


def stable_hash(data: Any) -> str:
    """Short content hash of JSON-able data (key order independent)."""
    blob = json.dumps(to_dict(data), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_json(obj: Any, path: Any) -> None:
    """Write a dataclass (or plain data) as JSON atomically."""
    from ..atomic import atomic_write_json

    atomic_write_json(path, to_dict(obj))


def load_json(cls: type[T], path: Any) -> T:
    """Read and validate a JSON artifact."""
    from ..atomic import read_json

    return from_dict(cls, read_json(path), where=str(path))

