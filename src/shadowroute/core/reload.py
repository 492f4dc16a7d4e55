"""What a config reload (SIGHUP) may change while serving, and what it changed.

Only ``routes`` is applied live: routes and candidates added, changed or removed, except a
kept route's task or production model (the comparator's evidence for the route is about
them), a route's ``judge`` or ``similarity`` added or changed and its
``drift.embedding.endpoint`` added, changed or removed (the comparator's assessor reads them
at start). Every other section (the ports, the transport, the admin plane and its
token, the proxy's limits, the record queue, the comparator) is read once at start by objects
that live as long as the process; a reloaded file that changes any of them is refused whole,
saying which, and the running config stays.

>>> from shadowroute.core.config import parse_config
>>> def cfg(port, cands):
...     route = {"name": "r", "jsonpath": "$.y", "production": {"name": "p", "url": "http://p:1"},
...              "candidates": [{"name": c, "url": "http://c:1"} for c in cands]}
...     return parse_config({"listen": {"port": port}, "routes": [route]}, environ={})
>>> refusals(cfg(8080, ["a"]), cfg(8081, ["a"]))
['listen.port changed (8080 -> 8081): it cannot change while serving; restart to apply it']
>>> route_changes(cfg(8080, ["a"]), cfg(8080, ["b"]))
{'added': [], 'changed': ['r'], 'removed': []}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SecretStr

from shadowroute.core.config import Config, EmbeddingEndpoint, Route

__all__ = ["LIVE_SECTIONS", "refusals", "route_changes"]

LIVE_SECTIONS = frozenset({"routes"})
"""The config's sections a reload applies."""


def _differences(prefix: str, old: Any, new: Any, out: list[str]) -> None:
    if isinstance(old, BaseModel) and type(old) is type(new):
        for name in type(old).model_fields:
            _differences(f"{prefix}.{name}", getattr(old, name), getattr(new, name), out)
    elif old != new:
        if isinstance(old, SecretStr) or isinstance(new, SecretStr):
            shown = ""  # a secret is never written out
        else:
            shown = f" ({old!r} -> {new!r})"
        out.append(f"{prefix} changed{shown}: it cannot change while serving; restart to apply it")


def refusals(old: Config, new: Config) -> list[str]:
    """Why ``new`` cannot replace ``old`` while serving, one line each (empty: it can)."""
    out: list[str] = []
    for name in type(old).model_fields:
        if name not in LIVE_SECTIONS:
            _differences(name, getattr(old, name), getattr(new, name), out)
    after = {r.name: r for r in new.routes}
    before = {r.name: r for r in old.routes}
    for i, route in enumerate(new.routes):
        prev = before.get(route.name)
        for part in ("judge", "similarity"):
            now, then = getattr(route, part), getattr(prev, part) if prev is not None else None
            if now is not None and now != then:
                out.append(
                    f"routes[{i}].{part} {'added' if then is None else 'changed'} on route "
                    f"{route.name!r}: the comparator's assessor reads it at start; restart to "
                    "apply it"
                )
        then_ep = _embedding_endpoint(prev) if prev is not None else None
        now_ep = _embedding_endpoint(route)
        if now_ep != then_ep:
            what = "added" if then_ep is None else "removed" if now_ep is None else "changed"
            out.append(
                f"routes[{i}].drift.embedding.endpoint {what} on route {route.name!r}: the "
                "comparator's assessor reads it at start (and the field's sums restart); "
                "restart to apply it"
            )
    for i, route in enumerate(old.routes):
        kept = after.get(route.name)
        if kept is None:
            continue
        for what, was, now in (
            ("task", route.task, kept.task),
            ("production.name", route.production.name, kept.production.name),
        ):
            if was != now:
                out.append(
                    f"routes[{i}].{what} changed ({was!r} -> {now!r}) on route {route.name!r}: "
                    "its evidence so far is about the old one; restart to apply it "
                    "(comparator.on_state_mismatch decides what becomes of the state file)"
                )
    return out


def _embedding_endpoint(route: Route) -> EmbeddingEndpoint | None:
    emb = route.drift.embedding
    return emb.endpoint if emb is not None else None


def route_changes(old: Config, new: Config) -> dict[str, list[str]]:
    """The routes ``new`` adds, changes (anything in the route or its candidates) and
    removes, by name."""
    before = {r.name: r for r in old.routes}
    after = {r.name: r for r in new.routes}
    return {
        "added": sorted(set(after) - set(before)),
        "changed": sorted(n for n in set(before) & set(after) if before[n] != after[n]),
        "removed": sorted(set(before) - set(after)),
    }
