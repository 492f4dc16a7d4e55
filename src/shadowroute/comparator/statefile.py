"""One state file, one config: the comparator refuses to mix aggregates of different configs.

The state file (``comparator.state_path``, by default ``./shadowroute-state.sqlite`` in the
working directory) records the fingerprint of the config that wrote it: route names, tasks and
model names (``core.revision.fingerprint``). URLs, versions and revisions are not part of it:
those are kept apart inside the file, per revision. A file written before fingerprints has
one inferred from the routes and candidates of its stored aggregates.

``check_state_file`` runs before a comparator opens the file. When the fingerprints differ,
``comparator.on_state_mismatch`` (or ``--state-mode``) decides: ``refuse`` raises
``StateMismatch`` whose message names what differs and the choices; ``keep`` records the new
fingerprint and goes on (aggregates of routes and models the config no longer has are ignored);
``reset`` moves the file aside to ``<path>.<UTC time>.bak`` and starts a fresh one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from shadowroute.comparator.state import CAND, PART
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config
from shadowroute.core.revision import differences, fingerprint, split_slot

__all__ = ["StateMismatch", "check_state_file", "record_fingerprint"]

log = logging.getLogger("shadowroute.comparator")

_KEY = "fingerprint"


class StateMismatch(RuntimeError):
    """The state file belongs to another config; ``str()`` says what differs and what to do."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"the state file {path} was written for another config:\n{lines}\n"
            "Its aggregates are not mixed with this config's. Choose one:\n"
            "  --state-mode keep   use the file anyway (entries of routes and models no longer "
            "configured are ignored) and record this config\n"
            f"  --state-mode reset  move the file aside to {path}.<time>.bak and start fresh\n"
            "  or give this config a file of its own: comparator.state_path\n"
            "(comparator.on_state_mismatch: keep|reset in the config does the same as the flag)"
        )


def _inferred(store: Store) -> dict[str, Any] | None:
    """The fingerprint of a file written before fingerprints, from its stored aggregates;
    None when it holds none."""
    routes: dict[str, dict[str, Any]] = {}
    for kind, route, cand in store.state_names():
        if kind == PART or not route:
            continue
        entry = routes.setdefault(route, {"candidates": []})
        if kind == CAND:
            name = split_slot(cand)[0]
            if name not in entry["candidates"]:
                entry["candidates"].append(name)
    if not routes:
        return None
    for entry in routes.values():
        entry["candidates"].sort()
    return {"routes": routes}


def check_state_file(
    config: Config, path: str | Path | None = None, mode: str | None = None
) -> None:
    """Make sure the state file at ``path`` (default: the config's) is this config's; see the
    module docstring. Raises ``StateMismatch`` under ``refuse``."""
    target = str(path or config.comparator.state_path)
    mode = mode or config.comparator.on_state_mismatch
    current = fingerprint(config)
    encoded = orjson.dumps(current, option=orjson.OPT_SORT_KEYS)
    store = Store(target)
    try:
        raw = store.meta(_KEY)
        stored = orjson.loads(raw) if raw is not None else _inferred(store)
        problems = [] if stored is None else differences(stored, current, inferred=raw is None)
        if not problems:
            if raw != encoded:
                store.put_meta(_KEY, encoded)
            return
        if mode == "keep":
            log.warning(
                "state file %s was written for another config (%s); keeping it as asked",
                target, "; ".join(problems),
            )  # fmt: skip
            store.put_meta(_KEY, encoded)
            return
        if mode != "reset":
            raise StateMismatch(target, problems)
    finally:
        store.close()
    aside = f"{target}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.bak"
    for suffix in ("-wal", "-shm"):
        if os.path.exists(target + suffix):
            os.replace(target + suffix, aside + suffix)
    os.replace(target, aside)
    log.warning("state file %s was written for another config; moved it to %s", target, aside)
    fresh = Store(target)
    try:
        fresh.put_meta(_KEY, encoded)
    finally:
        fresh.close()


def record_fingerprint(store: Store, config: Config) -> None:
    """Make ``config`` the state file's config: after a reload (``runtime.reload``) added or
    removed routes and candidates, a restart with the reloaded file finds its own fingerprint.
    Aggregates of what the reload removed stay in the file, ignored by the read side."""
    store.put_meta(_KEY, orjson.dumps(fingerprint(config), option=orjson.OPT_SORT_KEYS))
