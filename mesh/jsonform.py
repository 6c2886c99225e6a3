"""The JSON form of the mesh model, driven by the dataclass field types.

:class:`JsonForm` gives a frozen dataclass ``to_json() -> dict`` and
``from_json(data)``. Keys are the field names, all present; tuples become
lists; string-keyed pair tuples (labels, selectors, container ports) become
objects; other pairs become two-element lists; ``None`` is ``null``; a field
typed as a union of model classes is tagged with the value's ``kind``.
Unknown, missing or mistyped keys raise :class:`ModelError` naming the path
(``Service.ports[0].port``).
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeAlias, Union, get_args, get_origin, get_type_hints

Json: TypeAlias = dict[str, Any]


class ModelError(ValueError):
    """Model data is malformed, or a delta does not fit the snapshot it is applied to."""


# --- JSON, driven by the dataclass field types -------------------------------------------


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The dataclass fields of ``cls`` and their (resolved) types, in order."""
    if cls not in _HINTS:
        hints = get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def _encode(value: Any, hint: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if value is None or origin in (Literal, dict) or hint in (str, int, bool, float):
        return value
    if origin in (Union, types.UnionType) and type(None) in args:
        return _encode(value, next(a for a in args if a is not type(None)))
    if origin in (Union, types.UnionType):  # a Resource, tagged with its kind
        return {"kind": value.kind, "value": value.to_json()}
    if origin is tuple:
        item = args[0]
        if get_origin(item) is tuple and get_args(item)[0] is str:
            return dict(value)
        return [_encode(v, item) for v in value]  # a list, or a pair as a two-element list
    return value.to_json()


def _decode(value: object, hint: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType) and type(None) in args:
        return None if value is None else _decode(value, args[0], where)
    if origin in (Union, types.UnionType):  # a model object, tagged with its kind
        tagged = Tagged._decode(value, where)
        by_kind = {a.kind: a for a in args}
        if tagged.kind not in by_kind:
            raise ModelError(f"{where}.kind: {tagged.kind!r} is not one of {', '.join(by_kind)}")
        return by_kind[tagged.kind]._decode(tagged.value, f"{where}.value")
    if origin is Literal:
        if value not in args:
            raise ModelError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ModelError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ModelError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint in (str, int) or origin is dict:
        if not isinstance(value, origin or hint) or isinstance(value, bool):
            raise ModelError(f"{where}: expected {(origin or hint).__name__}, got {value!r}")
        return value
    if origin is tuple and len(args) == 2 and args[1] is not Ellipsis:  # one pair
        if not (isinstance(value, list) and len(value) == 2):
            raise ModelError(f"{where}: expected a two-element list, got {value!r}")
        return (_decode(value[0], args[0], where), _decode(value[1], args[1], where))
    if origin is tuple:
        item = args[0]
        if get_origin(item) is tuple and get_args(item)[0] is str:
            if not isinstance(value, dict):
                raise ModelError(f"{where}: expected an object, got {value!r}")
            value_type = get_args(item)[1]
            return tuple((str(k), _decode(v, value_type, f"{where}.{k}")) for k, v in value.items())
        if not isinstance(value, list):
            raise ModelError(f"{where}: expected a list, got {value!r}")
        return tuple(_decode(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    return hint._decode(value, where)


class JsonForm:
    """Mixin: ``to_json`` / ``from_json`` for a frozen dataclass of the types above."""

    def to_json(self) -> Json:
        return {name: _encode(getattr(self, name), h) for name, h in _hints(type(self)).items()}

    @classmethod
    def from_json(cls, data: object) -> Self:
        return cls._decode(data, cls.__name__)

    @classmethod
    def _decode(cls, data: object, where: str) -> Self:
        hints = _hints(cls)
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in hints)
        if unknown:
            raise ModelError(
                f"{where}: unknown field {', '.join(unknown)} (fields: {', '.join(hints)})"
            )
        missing = [k for k in hints if k not in data]
        if missing:
            raise ModelError(f"{where}: missing field {', '.join(missing)}")
        values = {k: _decode(data[k], h, f"{where}.{k}") for k, h in hints.items()}
        return cls(**values)


@dataclass(frozen=True)
class Tagged(JsonForm):
    """The JSON envelope of one upsert of a Delta."""

    kind: str
    value: Json
