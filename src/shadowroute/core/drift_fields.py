"""A tiny JSON path evaluator for pulling monitored values out of request bodies.

Supported syntax (a subset of JSONPath, enough to address model inputs)::

    $.features.age            object member
    $.instances[*].amount     every element of an array, then a member
    $.inputs[0].data[*]       an array index (negative counts from the end)
    $['odd key'].x            a quoted member name
    features.age              a leading ``$.`` may be left out

A path is compiled once (``compile_path``) and the compiled ``FieldPath`` is reused for every
body. ``FieldPath.values(doc)`` returns a flat list: missing members and out-of-range indices
yield nothing, and a leaf that is itself an array contributes its elements, flattened, so
``$.inputs[0].data`` over a nested tensor gives every number in it.

>>> p = compile_path("$.instances[*].amount")
>>> p.values({"instances": [{"amount": 1.5}, {"amount": 2}, {}]})
[1.5, 2]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["FieldPath", "PathError", "PathSet", "compile_path", "flatten_scalars"]

_WILDCARD = object()
_MISSING = object()
_TOKEN = re.compile(
    r"""\.(?P<name>[A-Za-z_][A-Za-z0-9_\-]*|\*)
      | \[\s*(?P<index>-?\d+)\s*\]
      | \[\s*(?P<star>\*)\s*\]
      | \[\s*'(?P<sq>(?:[^'\\]|\\.)*)'\s*\]
      | \[\s*"(?P<dq>(?:[^"\\]|\\.)*)"\s*\]""",
    re.VERBOSE,
)

Step = str | int | object


class PathError(ValueError):
    """A path that cannot be compiled; the message names the path and the position."""


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A compiled path. ``steps`` holds member names (str), indices (int) or the wildcard."""

    text: str
    steps: tuple[Step, ...]

    def values(self, doc: Any) -> list[Any]:
        """Every value the path selects in ``doc``, in document order, leaf arrays flattened."""
        nodes: list[Any] = [doc]
        for step in self.steps:
            nodes = _apply(step, nodes)
            if not nodes:
                return nodes
        out: list[Any] = []
        for node in nodes:
            if isinstance(node, list):
                _flatten(node, out)
            else:
                out.append(node)
        return out

    def nodes(self, doc: Any) -> list[Any]:
        """Every value the path selects in ``doc``, in document order, arrays kept whole (an
        embedding vector stays one value)."""
        nodes: list[Any] = [doc]
        for step in self.steps:
            nodes = _apply(step, nodes)
            if not nodes:
                break
        return nodes


class _Node:
    __slots__ = ("children", "leaves", "outputs")

    def __init__(self) -> None:
        self.children: dict[Step, _Node] = {}
        self.outputs: list[int] = []
        # member-name children that end paths and go no further: (name, output indices)
        self.leaves: list[tuple[str, list[int]]] = []

    def seal(self) -> None:
        for step, child in list(self.children.items()):
            if isinstance(step, str) and not child.children:
                self.leaves.append((step, child.outputs))
                del self.children[step]
            else:
                child.seal()


class PathSet:
    """Several compiled paths evaluated together: a shared prefix is walked once.

    >>> ps = PathSet(["$.instances[*].a", "$.instances[*].b"])
    >>> ps.values({"instances": [{"a": 1, "b": 2}, {"a": 3}]})
    [[1, 3], [2]]
    """

    __slots__ = ("_root", "paths")

    def __init__(self, paths: list[str]) -> None:
        self.paths = [compile_path(p) for p in paths]
        self._root = _Node()
        for i, path in enumerate(self.paths):
            node = self._root
            for step in path.steps:
                node = node.children.setdefault(step, _Node())
            node.outputs.append(i)
        self._root.seal()

    def values(self, doc: Any) -> list[list[Any]]:
        """One list per path, in the order given, as ``FieldPath.values`` would return."""
        out: list[list[Any]] = [[] for _ in self.paths]
        _walk(self._root, [doc], out)
        return out

    def extend(self, doc: Any, out: list[list[Any]]) -> None:
        """Append each path's values to ``out[i]`` (one list per path) without new lists."""
        _walk(self._root, [doc], out)


def _walk(node: _Node, nodes: list[Any], out: list[list[Any]]) -> None:
    for i in node.outputs:
        _emit(nodes, out[i])
    for name, outputs in node.leaves:
        for n in nodes:
            if isinstance(n, dict):
                v = n.get(name, _MISSING)
                if v is _MISSING:
                    continue
                if isinstance(v, list):
                    for i in outputs:
                        _flatten(v, out[i])
                else:
                    for i in outputs:
                        out[i].append(v)
    for step, child in node.children.items():
        selected = _apply(step, nodes)
        if selected:
            _walk(child, selected, out)


def _emit(nodes: list[Any], dst: list[Any]) -> None:
    for n in nodes:
        if isinstance(n, list):
            _flatten(n, dst)
        else:
            dst.append(n)


def _apply(step: Step, nodes: list[Any]) -> list[Any]:
    if isinstance(step, str):
        return [n[step] for n in nodes if isinstance(n, dict) and step in n]
    if isinstance(step, int):
        out: list[Any] = []
        for n in nodes:
            if isinstance(n, list) and -len(n) <= step < len(n):
                out.append(n[step])
        return out
    out = []
    for n in nodes:
        if isinstance(n, list):
            out.extend(n)
        elif isinstance(n, dict):
            out.extend(n.values())
    return out


def _flatten(items: list[Any], out: list[Any]) -> None:
    for item in items:
        if isinstance(item, list):
            _flatten(item, out)
        else:
            out.append(item)


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")


def _member(prefix: str, name: str) -> str:
    if _PLAIN_NAME.match(name):
        return prefix + "." + name
    return prefix + "['" + name.replace("\\", "\\\\").replace("'", "\\'") + "']"


def flatten_scalars(doc: Any, max_depth: int, out: dict[str, list[Any]]) -> int:
    """Every scalar (number, string, bool) of ``doc`` under the path that selects it: object
    members as ``.name`` (``['odd name']`` when quoted), array elements as ``[*]``, so the
    paths compile with ``compile_path`` and select the same values. Values deeper than
    ``max_depth`` steps are left out; returns how many were (``None`` values are skipped).

    >>> out: dict[str, list[Any]] = {}
    >>> flatten_scalars({"a": 1, "b": {"c": "x"}, "d": [{"e": 2}, {"e": 3}]}, 4, out)
    0
    >>> out
    {'$.a': [1], '$.b.c': ['x'], '$.d[*].e': [2, 3]}
    """
    return _flatten_into(doc, "$", max_depth, out)


def _flatten_into(node: Any, path: str, depth: int, out: dict[str, list[Any]]) -> int:
    if isinstance(node, dict):
        if depth == 0:
            return _leaves(node)
        deep = 0
        for k, v in node.items():
            if v is None:
                continue
            deep += _flatten_into(v, _member(path, str(k)), depth - 1, out)
        return deep
    if isinstance(node, list):
        if depth == 0:
            return _leaves(node)
        deep = 0
        child = path + "[*]"
        for v in node:
            if v is not None:
                deep += _flatten_into(v, child, depth - 1, out)
        return deep
    if path == "$":
        return 0  # a bare scalar body has no field
    values = out.get(path)
    if values is None:
        out[path] = [node]
    else:
        values.append(node)
    return 0


def _leaves(node: Any) -> int:
    """How many scalars are inside ``node`` (the values too deep to watch)."""
    if isinstance(node, dict):
        return sum([_leaves(v) for v in node.values()])
    if isinstance(node, list):
        return sum([_leaves(v) for v in node])
    return 0 if node is None else 1


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def compile_path(path: str) -> FieldPath:
    """Compile ``path`` once; raise ``PathError`` naming the offending position."""
    text = path.strip()
    if not text:
        raise PathError("empty path")
    body = text[1:] if text.startswith("$") else "." + text
    steps: list[Step] = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None:
            raise PathError(f"cannot parse path {path!r} at position {pos + len(text) - len(body)}")
        if m.group("name") is not None:
            name = m.group("name")
            steps.append(_WILDCARD if name == "*" else name)
        elif m.group("index") is not None:
            steps.append(int(m.group("index")))
        elif m.group("star") is not None:
            steps.append(_WILDCARD)
        else:
            quoted = m.group("sq") if m.group("sq") is not None else m.group("dq")
            steps.append(_unescape(quoted))
        pos = m.end()
    return FieldPath(text=text, steps=tuple(steps))
