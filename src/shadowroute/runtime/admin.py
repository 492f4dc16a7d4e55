"""The admin plane of every process: its HTTP server, and the routes and collectors a
process adds to its control context. The only module that starts the admin server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web

from shadowroute.api.app import ControlContext, create_app
from shadowroute.api.gates import GateCounts, GatesCollector, gate_routes
from shadowroute.api.labels import LabelWriter, label_routes
from shadowroute.api.metrics import DataPlaneCollector, KafkaSinkCollector, new_registry
from shadowroute.api.scorecard import scorecard_routes
from shadowroute.api.scores import ScoresCollector, score_routes
from shadowroute.comparator.assessor import Assessor, AssessorCollector
from shadowroute.comparator.documents import RegistryVersion
from shadowroute.comparator.reader import ScoresReader
from shadowroute.core.config import Config
from shadowroute.dataplane.server import DataPlane
from shadowroute.registry.lineage import RegistryLineage
from shadowroute.runtime.lifecycle import StartError
from shadowroute.runtime.observe import dataplane_circuits, dataplane_flow, spool_losses
from shadowroute.stream.kafka import KafkaSink


@contextlib.asynccontextmanager
async def admin_server(ctx: ControlContext, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    """The admin/API server on ``host:port`` (0: a free port) for the block's length."""
    runner = web.AppRunner(create_app(ctx), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartError(
            f"admin plane: cannot listen on {host}:{port} (admin.port): {exc.strerror or exc}"
        ) from None
    try:
        yield runner
    finally:
        await runner.cleanup()


def admin_port(runner: web.AppRunner) -> int:
    server = runner.addresses[0]
    return int(server[1])


def dataplane_context(
    config: Config, dp: DataPlane, pair_kafka: Sequence[KafkaSink] = ()
) -> ControlContext:
    """The control context of a process that runs the data plane itself."""
    registry = new_registry()
    registry.register(
        DataPlaneCollector(
            lambda: dp.stats,
            lambda: spool_losses(dataplane_flow(dp), pair_kafka),
            lambda: dp.proxy.mirroring if dp.proxy else False,
            lambda: dataplane_circuits(dp),
        )
    )
    return ControlContext(
        config=config,
        registry=registry,
        ready=lambda: dp.ready,
        get_mirroring=lambda: dp.proxy.mirroring if dp.proxy else False,
        set_mirroring=dp.set_mirroring,
        revisions=dp.revisions,
        set_revision=dp.set_revision,
    )


def kafka_collector(sinks: Sequence[KafkaSink]) -> KafkaSinkCollector:
    collector = KafkaSinkCollector(list(sinks))
    for s in sinks:
        s.latency_hook = collector.hook(s.topic)
    return collector


def control_plane(
    config: Config,
    ctx: ControlContext,
    scores: ScoresReader | None,
    labels: LabelWriter | None,
    kafka: Sequence[KafkaSink] = (),
) -> ControlContext:
    """Add the score API, labels intake, scorecard, comparator and Kafka sink metrics to a
    context; the deploy gates (``/v1/gates/…``) come with the score API."""
    routes = list(ctx.extra_routes)
    if scores is not None:
        routes += score_routes(scores, registry_lineage(config, ctx))
        ctx.registry.register(ScoresCollector(scores))
        assessor = getattr(scores, "assessor", None)  # a Reader whose process judges pairs
        if isinstance(assessor, Assessor):
            ctx.registry.register(AssessorCollector(assessor))
        gate_counts = GateCounts()
        routes += gate_routes(scores, gate_counts)
        ctx.registry.register(GatesCollector(gate_counts))
    if labels is not None:
        routes += label_routes(labels)  # under the rules of the config of the moment
    routes += scorecard_routes()
    ctx.extra_routes = routes
    if kafka:
        ctx.registry.register(kafka_collector(kafka))
    return ctx


def registry_lineage(
    config: Config, ctx: ControlContext
) -> Callable[[str, str], RegistryVersion | None] | None:
    """With a ``registry`` section: the registry versions of lineage, read in the background
    while the admin plane runs."""
    if config.registry is None:
        return None
    lineage = RegistryLineage(config.registry)
    lineage.attach(ctx.cleanup_ctx, ctx.registry)
    return lineage.lookup
