"""Config reload on SIGHUP, for ``serve``, ``serve --workers N`` and ``compare``.

The file is read and checked again exactly as at start (``preflight.check_file``, without the
port probes: the ports are this process's own); a file with any problem, or one that changes
anything but ``routes`` (``core.reload.refusals``), is refused with one log line naming every
problem, and the running config stays. A good one is handed to ``apply``:

- the comparator, where the process has one (embedded, or ``compare``), takes the new routes
  between two batches (``Engine.reconfigure``): new routes and candidates are scored, and the
  verdicts, the score API and the events follow the new routes;
- then the data plane, where the process has one, swaps its routes (``DataPlane.reload``):
  connections stay open, requests in flight finish on the routes they were planned with, the
  next ones use the new routes (``reload_in_order``).

One reload runs at a time; a SIGHUP during one runs another after it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from shadowroute.core.config import Config
from shadowroute.core.families import Family, describe
from shadowroute.core.reload import refusals, route_changes

log = logging.getLogger("shadowroute.reload")

__all__ = [
    "RELOADS",
    "Loader",
    "Reconfigurable",
    "Reloader",
    "Reloads",
    "ReloadsCollector",
    "file_loader",
    "reload_in_order",
]

RELOADS = Family(
    "shadowroute_config_reloads",
    "Config reloads (SIGHUP): applied, or refused (the running config stayed).",
    "counter",
    ("outcome",),
)

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


class Reconfigurable(Protocol):
    """A comparator that takes a reloaded config's routes (``Engine.reconfigure``)."""

    async def reconfigure(self, config: Config) -> None: ...


async def reload_in_order(
    old: Config,
    new: Config,
    comparator: Reconfigurable | None,
    serve: Callable[[Config], None],
) -> None:
    """Apply ``new``: the comparator (if this process has one) learns its routes before the
    data plane (``serve``) sends any pair of them, so none arrives unknown. When the data
    plane cannot take them, the comparator goes back to ``old``'s routes (what ``new``
    added stays known to it, retired: nothing already sent is refused) and the error
    propagates: the running config stays."""
    if comparator is not None:
        await comparator.reconfigure(new)
    try:
        serve(new)
    except BaseException:
        if comparator is not None:
            await comparator.reconfigure(old)
        raise


@dataclass
class Reloads:
    """Reloads done and refused since start."""

    applied: int = 0
    refused: int = 0


class ReloadsCollector(Collector):
    """``shadowroute_config_reloads_total{outcome}``."""

    FAMILIES = (RELOADS,)

    def __init__(self, counts: Reloads) -> None:
        self._counts = counts

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        metric = RELOADS.counter()
        metric.add_metric(["applied"], self._counts.applied)
        metric.add_metric(["refused"], self._counts.refused)
        yield metric


class Reloader:
    """Runs ``load`` → check → ``apply`` on each ``request()`` (the SIGHUP handler)."""

    def __init__(
        self,
        load: Loader,
        current: Callable[[], Config],
        apply: Callable[[Config], Awaitable[None]],
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
        await self.apply(config)
        self.counts.applied += 1
        log.info(
            "config reloaded: routes added %s, changed %s, removed %s",
            changes["added"], changes["changed"], changes["removed"],
        )  # fmt: skip
        return True
