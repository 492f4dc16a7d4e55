"""``shadowroute serve`` in one process: the data plane, the records backend and the admin
plane. Resources start in order and stop in reverse order."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from shadowroute import build_info
from shadowroute.api.app import ControlContext
from shadowroute.comparator.embedded import Comparator
from shadowroute.core.config import Config
from shadowroute.dataplane.server import DataPlane, listen_socket
from shadowroute.events.bus import EventBus
from shadowroute.oplog import Sample
from shadowroute.runtime.admin import admin_port, admin_server, control_plane, dataplane_context
from shadowroute.runtime.backend import records_backend
from shadowroute.runtime.control import LiveControl, attach, open_settings
from shadowroute.runtime.events import event_service
from shadowroute.runtime.lifecycle import freeze_startup_heap, on_sighup, wait_for_signal
from shadowroute.runtime.observe import (
    dataplane_circuits,
    dataplane_flow,
    operator_log,
    ops_sample,
    spool_losses,
)
from shadowroute.runtime.reload import Loader, Reloader, reload_in_order

log = logging.getLogger("shadowroute")


@dataclass
class Stack:
    """What ``embedded_stack`` runs, with the ports it got."""

    config: Config
    dataplane: DataPlane
    comparator: Comparator | None
    admin_runner: web.AppRunner
    sample: Callable[[], Sample]
    """The counters the operator's log watches."""
    events: EventBus | None = None
    """The process's events (None: ``events.enabled`` is false)."""
    control: LiveControl | None = None
    """Live mirroring settings (the API's)."""
    ctx: ControlContext | None = None
    """The admin plane's context."""

    async def reload(self, config: Config) -> None:
        """Score and serve a reloaded config's routes (checked by ``runtime.reload``)."""
        control, ctx = self.control, self.ctx
        assert control is not None and ctx is not None
        effective = control.settings.effective
        await reload_in_order(
            self.config,
            config,
            self.comparator,
            lambda new: self.dataplane.reload(new, effective(new)),
        )
        control.rebase(config)
        ctx.config = config
        self.config = config

    @property
    def proxy_port(self) -> int:
        return self.dataplane.port

    @property
    def admin_port(self) -> int:
        return admin_port(self.admin_runner)


@contextlib.asynccontextmanager
async def embedded_stack(config: Config) -> AsyncIterator[Stack]:
    """The data plane, its records backend (with the embedded transport the comparator),
    plus the admin plane.

    Start order: backend → data plane → admin. Stop order: readiness off, the data plane
    drains (in-flight requests, mirrors, the record queue into the backend), the backend
    flushes and closes, the admin plane goes last. Ports 0 in the config pick free ports.
    """
    settings = open_settings(config)  # a bad state file stops us before anything starts
    async with records_backend(config) as backend:
        dp = DataPlane(
            config,
            backend.pairs,
            sock=listen_socket(config.listen.host, config.listen.port, reuse_port=False),
        )
        dp.mirroring = settings.mirroring
        dp.fractions = settings.effective()
        await dp.start()  # starts the pair sink; dp.stop() closes it
        try:
            control = LiveControl(config, settings, dp.set_fraction, dp.set_mirroring)
            ctx = dataplane_context(config, dp, backend.pair_kafka)
            attach(ctx, control)
            ctx = control_plane(config, ctx, backend.scores, backend.labels, backend.kafka)
            circuits = lambda: dataplane_circuits(dp)  # noqa: E731
            async with (
                event_service(config, ctx, backend.scores, circuits) as events,
                admin_server(ctx, config.admin.host, config.admin.port) as runner,
            ):
                sample = ops_sample(
                    lambda: dp.stats,
                    lambda: spool_losses(dataplane_flow(dp), backend.pair_kafka),
                    circuits,
                )
                try:
                    yield Stack(
                        config, dp, backend.comparator, runner, sample, events, control, ctx
                    )
                finally:
                    await dp.stop()
        finally:
            await dp.stop()


async def serve(config: Config, reload_from: Loader | None = None) -> None:
    """Run the stack until SIGTERM/SIGINT, then shut down gracefully; on SIGHUP reload the
    config from ``reload_from`` (``runtime.reload``)."""
    async with embedded_stack(config) as stack:
        if reload_from is not None:
            assert stack.control is not None
            counts = stack.control.reloads
            reloader = Reloader(reload_from, lambda: stack.config, stack.reload, counts)
            on_sighup(reloader.request)
        freeze_startup_heap()
        log.info(
            "proxy on %s:%d, admin/API on %s:%d (%s)",
            config.listen.host, stack.proxy_port, config.admin.host, stack.admin_port,
            build_info.describe(),
        )  # fmt: skip
        listen = f"{config.listen.host}:{stack.proxy_port}"
        admin = f"{config.admin.host}:{stack.admin_port}"
        async with operator_log(config, stack.sample, listen, admin):
            await wait_for_signal()
        log.info("shutting down: readiness off, draining")
