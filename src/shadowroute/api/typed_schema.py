"""JSON Schema (OpenAPI 3.1) of a TypedDict: the documents of ``comparator.documents`` become
``components.schemas`` without being written twice.

``schema_of(T, refs)`` maps ``int`` to integer, ``float`` to number, ``str``, ``bool``,
``None`` to null, ``Literal`` to ``const``/``enum``, unions to a ``type`` list (or ``anyOf``
when a member is not a plain type), ``list[X]`` to an array, ``dict[str, X]`` to an object
with ``additionalProperties`` (``object`` values: any object), a TypedDict to an object with
its ``required`` keys (not ``NotRequired``), ``Annotated[X, "text"]`` to a ``description``, a
TypedDict's docstring to the object's description. A TypedDict named in ``refs`` becomes a
``$ref`` to ``#/components/schemas/<name>``. Pure; runs when the document is built.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["components", "schema_of"]

_PLAIN: dict[object, str] = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    type(None): "null",
    None: "null",
}


def components(documents: Collection[type]) -> dict[str, dict[str, Any]]:
    """``components.schemas`` of ``documents``, each by its class name, referring to each
    other by ``$ref``."""
    names = {d.__name__ for d in documents}
    return {d.__name__: _typeddict(d, names) for d in documents}


def schema_of(tp: object, refs: Collection[str] = ()) -> dict[str, Any]:
    """The JSON Schema of the type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        inner = schema_of(args[0], refs)
        text = next((a for a in args[1:] if isinstance(a, str)), None)
        if text is None:
            return inner
        if "$ref" in inner:  # siblings of $ref are allowed in 3.1, kept apart for old readers
            return {"allOf": [inner], "description": text}
        return {**inner, "description": text}
    if origin in (typing.NotRequired, typing.Required):
        return schema_of(args[0], refs)
    if tp in _PLAIN:
        return {"type": _PLAIN[tp]}
    if tp is object or tp is Any:
        return {}
    if origin is typing.Literal:
        return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return _union(args, refs)
    if origin is list:
        return {"type": "array", "items": schema_of(args[0], refs)}
    if origin is dict or origin is Mapping:
        if args[0] is not str:
            raise TypeError(f"JSON object keys are strings, not {args[0]!r}")
        values = schema_of(args[1], refs)
        return (
            {"type": "object"}
            if not values
            else {
                "type": "object",
                "additionalProperties": values,
            }
        )
    if isinstance(tp, type) and typing.is_typeddict(tp):
        if tp.__name__ in refs:
            return {"$ref": f"#/components/schemas/{tp.__name__}"}
        return _typeddict(tp, refs)
    raise TypeError(f"no JSON Schema for {tp!r}")


def _union(args: tuple[object, ...], refs: Collection[str]) -> dict[str, Any]:
    members = [schema_of(a, refs) for a in args]
    if all(set(m) == {"type"} for m in members):
        kinds: list[str] = []
        for m in members:
            kinds += m["type"] if isinstance(m["type"], list) else [m["type"]]
        return {"type": kinds}
    plain = [m for m in members if set(m) == {"type"} and m["type"] != "object"]
    others = [m for m in members if m not in plain]
    if len(others) == 1 and "type" in others[0] and "$ref" not in others[0]:
        # a nullable object: {"type": ["object", "null"], "properties": ...}
        one = dict(others[0])
        one["type"] = [one["type"], *(m["type"] for m in plain)]
        return one
    return {"anyOf": members}


def _typeddict(td: type, refs: Collection[str]) -> dict[str, Any]:
    hints = typing.get_type_hints(td, include_extras=True)
    required_keys: frozenset[str] = td.__required_keys__  # type: ignore[attr-defined]
    out: dict[str, Any] = {"type": "object"}
    doc = td.__doc__
    if doc and doc != inspect.getdoc(dict) and not doc.startswith(f"{td.__name__}("):
        out["description"] = inspect.cleandoc(doc)
    required = [k for k, tp in hints.items() if _required(k, tp, required_keys)]
    if required:
        out["required"] = required
    out["properties"] = {k: schema_of(tp, refs) for k, tp in hints.items()}
    return out


def _required(key: str, tp: object, required_keys: frozenset[str]) -> bool:
    """A key is required unless ``NotRequired`` (read from the hint too: with postponed
    annotations Python 3.11 leaves it out of ``__required_keys__``)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.NotRequired:
        return False
    return typing.get_origin(tp) is typing.Required or key in required_keys
