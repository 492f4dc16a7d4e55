"""Which model revision a piece of evidence is about, and which config a state file belongs to.

A model's revision identity is ``(url, version, revision)``: the base URL it was reached at
(without user info), its declared ``version``, and the ``revision`` deploy tooling gives (config
field or ``PUT .../revision``). Pair records carry all three on each side; the comparator keeps
a candidate's evidence per *revision id*, a digest of both sides' identities, so a change of
either model starts fresh evidence and old evidence never counts for the new revision.

>>> cand = ("http://c:8000", "8", "sha256:ab")
>>> prod = ("http://p:8000", "7", None)
>>> rid = revision_id(cand, prod)
>>> len(rid), rid == revision_id(cand, ("http://p:8000", "7", "x"))
(12, False)
>>> slot_name("fraud-v8", rid) == "fraud-v8@" + rid, split_slot("fraud-v8@" + rid)[1] == rid
(True, True)
>>> matches("sha256:ab", rid, cand), matches("8", rid, cand), matches(rid, rid, cand)
(True, False, True)

The state fingerprint is what a state file's aggregates are about: every route's name, task and
model names. ``differences`` names what differs between a stored and a current one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import orjson

from shadowroute.core.config import Config, Model

__all__ = [
    "SLOT_SEP",
    "Identity",
    "LiveRevisions",
    "describe",
    "differences",
    "fingerprint",
    "identity",
    "matches",
    "public_url",
    "revision_id",
    "slot_name",
    "split_slot",
]

Identity = tuple[str | None, str | None, str | None]
"""(url, version, revision) of one model."""

SLOT_SEP: Final = "@"
"""Separates a candidate's name from its revision id in the comparator's state keys (model
names cannot contain it)."""
_ID_LEN: Final = 12


def public_url(url: str) -> str:
    """The URL without user info (a password must not reach records)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def identity(model: Model, revision: str | None = None) -> Identity:
    """A configured model's identity; ``revision`` (set at run time) wins over the config's."""
    return public_url(model.url), model.version, revision or model.revision


def revision_id(cand: Identity | None, prod: Identity) -> str:
    """12 hex digits naming (candidate identity, production identity); production's own
    when ``cand`` is None."""
    data = orjson.dumps([list(cand) if cand is not None else None, list(prod)])
    return hashlib.sha256(data).hexdigest()[:_ID_LEN]


def slot_name(candidate: str, rid: str) -> str:
    return f"{candidate}{SLOT_SEP}{rid}"


def split_slot(slot: str) -> tuple[str, str | None]:
    """(candidate, revision id); the id is None for state written before revisions."""
    name, sep, rid = slot.partition(SLOT_SEP)
    return name, (rid if sep else None)


def describe(ident: Identity | None) -> dict[str, str | None] | None:
    if ident is None:
        return None
    return {"url": ident[0], "version": ident[1], "revision": ident[2]}


def matches(query: str, rid: str | None, cand: Identity | None) -> bool:
    """Does ``?revision=query`` name this evidence? The revision id, or the candidate's
    deploy revision, or (when it has none) its version."""
    if rid is not None and query == rid:
        return True
    if cand is None:
        return False
    if cand[2] is not None:
        return query == cand[2]
    return cand[1] is not None and query == cand[1]


class LiveRevisions:
    """Each model's revision: the config's, or the one deploy tooling set at run time.

    >>> from shadowroute.core.config import parse_config
    >>> prod = {"name": "p", "url": "http://u:pw@p:1"}
    >>> cand = {"name": "c", "url": "http://c:1", "revision": "a"}
    >>> route = {"name": "r", "jsonpath": "$.y", "production": prod, "candidates": [cand]}
    >>> cfg = parse_config({"routes": [route]}, environ={})
    >>> live = LiveRevisions(cfg)
    >>> live.set("r", "c", "b"); live.identity("r", "c"), live.stamps()[("r", "p")]
    (('http://c:1', None, 'b'), ('http://p:1', None))
    >>> live.set("r", "c", None); live.get("r", "c")
    'a'
    """

    def __init__(self, config: Config) -> None:
        self._models: dict[tuple[str, str], Model] = {
            (r.name, m.name): m for r in config.routes for m in (r.production, *r.candidates)
        }
        self._set: dict[tuple[str, str], str] = {}

    def reconfigure(self, config: Config) -> None:
        """A reloaded config's models; revisions set at run time are kept for the models it
        still has."""
        self._models = {
            (r.name, m.name): m for r in config.routes for m in (r.production, *r.candidates)
        }
        self._set = {k: v for k, v in self._set.items() if k in self._models}

    def known(self, route: str, model: str) -> bool:
        return (route, model) in self._models

    def get(self, route: str, model: str) -> str | None:
        """The model's revision now (``KeyError`` for an unknown model)."""
        m = self._models[(route, model)]
        return self._set.get((route, model), m.revision)

    def source(self, route: str, model: str) -> str:
        """``api`` when set at run time, else ``config``."""
        return "api" if (route, model) in self._set else "config"

    def set(self, route: str, model: str, revision: str | None) -> None:
        """Set a model's revision; None goes back to the config's (``KeyError`` if unknown)."""
        key = (route, model)
        if key not in self._models:
            raise KeyError(key)
        if revision is None:
            self._set.pop(key, None)
        else:
            self._set[key] = revision

    def identity(self, route: str, model: str) -> Identity:
        return identity(self._models[(route, model)], self._set.get((route, model)))

    def stamps(self) -> dict[tuple[str, str], tuple[str, str | None]]:
        """(url, revision) per (route, model): what the data plane writes into records."""
        out: dict[tuple[str, str], tuple[str, str | None]] = {}
        for key in self._models:
            ident = self.identity(*key)
            out[key] = (ident[0] or "", ident[2])
        return out


def fingerprint(config: Config) -> dict[str, Any]:
    """What the aggregates of a state file are about: routes, their task and model names."""
    return {
        "routes": {
            r.name: {
                "task": r.task,
                "production": r.production.name,
                "candidates": sorted(c.name for c in r.candidates),
            }
            for r in config.routes
        }
    }


def differences(
    stored: Mapping[str, Any], current: Mapping[str, Any], *, inferred: bool = False
) -> list[str]:
    """What differs between two fingerprints, one line each (empty when they agree). An
    ``inferred`` stored fingerprint (from the aggregates of an older file) only knows what it
    holds: only what it holds and the config lacks is a difference.

    >>> old = {"routes": {"a": {"task": "text", "production": "p", "candidates": []}}}
    >>> new = {"routes": {"a": {"task": "text", "production": "p", "candidates": ["c"]}}}
    >>> differences(old, new)
    ["route 'a': candidate 'c' is in the config, not in the state file"]
    >>> differences(old, new, inferred=True), differences(new, old, inferred=True)[0][-36:]
    ([], 'in the state file, not in the config')
    """
    old: Mapping[str, Any] = stored.get("routes") or {}
    new: Mapping[str, Any] = current.get("routes") or {}
    out: list[str] = []
    for name in sorted(set(old) - set(new)):
        out.append(f"route {name!r} is in the state file, not in the config")
    if not inferred:
        for name in sorted(set(new) - set(old)):
            out.append(f"route {name!r} is in the config, not in the state file")
    for name in sorted(set(old) & set(new)):
        a, b = old[name], new[name]
        if "task" in a and a.get("task") != b.get("task"):
            out.append(
                f"route {name!r}: task {a.get('task')!r} in the state file, "
                f"{b.get('task')!r} in the config"
            )
        if "production" in a and a.get("production") != b.get("production"):
            out.append(
                f"route {name!r}: production {a.get('production')!r} in the state file, "
                f"{b.get('production')!r} in the config"
            )
        ca, cb = set(a.get("candidates") or []), set(b.get("candidates") or [])
        for c in sorted(ca - cb):
            out.append(f"route {name!r}: candidate {c!r} is in the state file, not in the config")
        for c in [] if inferred else sorted(cb - ca):
            out.append(f"route {name!r}: candidate {c!r} is in the config, not in the state file")
    return out
