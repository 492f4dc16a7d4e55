"""Config reload on SIGHUP, for ``serve`` and ``serve --workers N``.

The file is read and checked again exactly as at start (``preflight.check_file``, without the
port probes: the ports are this process's own); a file with any problem, or one that changes
anything but ``routes`` (``core.reload.refusals``), is refused with one log line naming every
problem, and the running config stays. A good one is handed to ``apply``, which swaps the
data plane's routes (``DataPlane.reload``): connections stay open, requests in flight finish
on the routes they were planned with, the next ones use the new routes. One reload runs at a
time; a SIGHUP during one runs another after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from shadowroute.core.config import Config
from shadowroute.core.reload import refusals, route_changes

log = logging.getLogger("shadowroute.reload")

__all__ = ["Loader", "Reloader", "Reloads", "file_loader"]

Loader = Callable[[], tuple[Config | None, list[str]]]
"""Reads the config file again: (the config, or None; every problem, one line each)."""


def file_loader(path: str, adjust: Callable[[Config], Config] = lambda c: c) -> Loader:
    """A loader for the config file at ``path``; ``adjust`` applies what the command line
    overrides (as at start)."""

    def load() -> tuple[Config | None, list[str]]:
        from shadowroute.preflight import check_file

        report = check_file(path, ports=False)
        problems = [str(p) for p in report.problems]
        if report.config is None or problems:
            return None, problems or ["the file is not a valid config"]
        return adjust(report.config), []

    return load


@dataclass
class Reloads:
    """Reloads done and refused since start."""

    applied: int = 0
    refused: int = 0


class Reloader:
    """Runs ``load`` → check → ``apply`` on each ``request()`` (the SIGHUP handler)."""

    def __init__(
        self,
        load: Loader,
        current: Callable[[], Config],
        apply: Callable[[Config], None],
        counts: Reloads | None = None,
    ) -> None:
        self.load = load
        self.current = current
        self.apply = apply
        self.counts = counts or Reloads()
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="config-reload")

    async def wait(self) -> None:
        """Until the reloads asked for so far are done (tests, shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload_once()
            except Exception:
                self.counts.refused += 1
                log.exception("config reload failed; the running config stays")
            if not self._again:
                return

    async def reload_once(self) -> bool:
        """One reload; whether it was applied."""
        config, problems = await asyncio.to_thread(self.load)
        old = self.current()
        if config is not None and not problems:
            problems = refusals(old, config)
        if config is None or problems:
            self.counts.refused += 1
            log.error("config reload refused, the running config stays: %s", "; ".join(problems))
            return False
        changes = route_changes(old, config)
        self.apply(config)
        self.counts.applied += 1
        log.info(
            "config reloaded: routes added %s, changed %s, removed %s",
            changes["added"], changes["changed"], changes["removed"],
        )  # fmt: skip
        return True
