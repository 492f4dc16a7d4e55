"""Live control of mirroring at the edge: the state file, and the settings applied to the data
plane(s) of a process.

The state file (``control.state_path``) is JSON: ``{"version": 1, "mirroring": bool|null,
"candidates": [{"route", "candidate", "enabled", "fraction"}], "changes": [...]}`` — the
overrides the API set and the bounded change log (``core.mirror_control``). It is read once
at start, over the config's values, and written on every change: to a temporary file, synced,
then renamed over the old one, so a crash leaves the old file or the new one, never half of
one. A file that cannot be read as such is a start error that says so (ignoring it would
silently undo what an operator set, a candidate switched off for a reason among it); stored
settings of a candidate the config no longer has are dropped with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from shadowroute.api.app import ControlContext
from shadowroute.api.control import control_routes
from shadowroute.core.config import Config
from shadowroute.core.families import Family, describe
from shadowroute.core.mirror_control import (
    CandidateMirror,
    Change,
    MirrorSettings,
    StoredState,
    parse_state,
)
from shadowroute.runtime.lifecycle import StartError
from shadowroute.runtime.reload import Reloads, ReloadsCollector

log = logging.getLogger("shadowroute.control")

_FRACTION = Family(
    "shadowroute_mirror_fraction",
    "Each candidate's live mirror fraction (0 while it is off), as the config and the API set it.",
    "gauge",
    ("route", "candidate"),
)
_STATE_WRITE_FAILURES = Family(
    "shadowroute_control_state_write_failures",
    "Writes of the control state file (control.state_path) that failed.",
    "counter",
)

__all__ = [
    "ControlCollector",
    "LiveControl",
    "attach",
    "open_settings",
    "read_state",
    "state_path",
    "write_state",
]


def state_path(config: Config) -> str:
    return config.control.path(config.comparator.state_path)


def read_state(path: str) -> StoredState | None:
    """The stored state, None when there is no file; ``StartError`` when it is not one."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StartError(f"control.state_path: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return parse_state(orjson.loads(data))
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise StartError(
            f"control.state_path: {path} is not a valid control state file ({exc}); fix it, "
            "or move it aside to start from the config's mirroring settings"
        ) from None


def write_state(path: str, doc: object) -> None:
    """Write ``doc`` to ``path`` atomically (temporary file, fsync, rename)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def open_settings(config: Config) -> MirrorSettings:
    """The settings at start: the config's, with the state file's over them."""
    path = state_path(config)
    settings = MirrorSettings(config, read_state(path))
    if settings.ignored:
        log.warning(
            "%s: mirroring settings of %s dropped: no longer in the config",
            path, ", ".join(settings.ignored),
        )  # fmt: skip
    return settings


def _now_ms() -> int:
    return int(time.time() * 1000)


class LiveControl:
    """The settings of one serving process, the state file they are kept in, and where they
    are applied: ``apply_fraction(route, candidate, effective fraction)`` and
    ``apply_mirroring(enabled)`` (the data plane, or every worker)."""

    def __init__(
        self,
        config: Config,
        settings: MirrorSettings,
        apply_fraction: Callable[[str, str, float], None],
        apply_mirroring: Callable[[bool], None],
    ) -> None:
        self.config = config
        self.settings = settings
        self.path = state_path(config)
        self.apply_fraction = apply_fraction
        self.apply_mirroring = apply_mirroring
        self.save_failures = 0
        """State file writes that failed (the change was refused, or for the global switch,
        applied but not kept)."""
        self.reloads = Reloads()
        """Config reloads applied and refused (``runtime.reload.Reloader`` counts them)."""
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()

    async def save(self) -> None:
        """Write the settings now (``OSError`` when the file cannot be written)."""
        async with self._lock:
            doc = self.settings.to_state()
            try:
                await asyncio.to_thread(write_state, self.path, doc)
            except OSError:
                self.save_failures += 1
                raise

    async def set_candidate(
        self, route: str, candidate: str, value: CandidateMirror | None
    ) -> Change:
        """Keep a candidate's new settings (None: the config's), then apply them; when the
        state file cannot be written nothing changes (``OSError``)."""
        before = self.settings.to_state()
        change = self.settings.set(route, candidate, value, at_ms=_now_ms())
        try:
            await self.save()
        except OSError:
            self.settings = MirrorSettings(self.config, parse_state(before))
            raise
        self.apply_fraction(route, candidate, self.settings.get(route, candidate).effective)
        log.info(
            "mirroring of %s/%s set to %s (was %s)", route, candidate, change.after, change.before
        )
        return change

    def set_mirroring(self, enabled: bool) -> None:
        """The global switch: applied at once, kept in the background (a failed write is
        logged and counted)."""
        self.settings.set_mirroring(enabled, at_ms=_now_ms())
        self.apply_mirroring(enabled)
        log.info("mirroring switched %s", "on" if enabled else "off")
        self._save_soon()

    def rebase(self, config: Config) -> list[Change]:
        """A reloaded config: the settings follow it (``MirrorSettings.rebase``); the caller
        hands ``settings.effective()`` to the data plane(s) with the new config."""
        self.config = config
        changes = self.settings.rebase(config, at_ms=_now_ms())
        self._save_soon()
        return changes

    def _save_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._save_logged())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _save_logged(self) -> None:
        try:
            await self.save()
        except OSError as exc:
            log.error("cannot write %s: %s; the change holds until a restart", self.path, exc)


def attach(ctx: ControlContext, control: LiveControl) -> None:
    """The control API on a process's admin plane; ``/v1/mirroring`` through ``control`` too
    (kept across restarts, in the change log)."""
    ctx.get_mirroring = lambda: control.settings.mirroring
    ctx.set_mirroring = control.set_mirroring
    ctx.fractions = control.settings.effective
    ctx.extra_routes = [*ctx.extra_routes, *control_routes(control)]
    ctx.registry.register(ControlCollector(control))
    ctx.registry.register(ReloadsCollector(control.reloads))


class ControlCollector(Collector):
    """``shadowroute_mirror_fraction{route,candidate}`` and
    ``shadowroute_control_state_write_failures_total``."""

    def __init__(self, control: LiveControl) -> None:
        self._control = control

    FAMILIES = (_FRACTION, _STATE_WRITE_FAILURES)

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        control = self._control
        fraction = _FRACTION.gauge()
        for (route, cand), f in sorted(control.settings.effective().items()):
            fraction.add_metric([route, cand], f)
        yield fraction
        yield _STATE_WRITE_FAILURES.counter(control.save_failures)
