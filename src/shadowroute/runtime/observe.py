"""What an operator sees of a running process, from the same sources as ``/metrics``: the
record flow and its losses, the candidates' circuits, and the operator's log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

from shadowroute.api.metrics import RecordFlow
from shadowroute.core.config import Config
from shadowroute.dataplane.server import DataPlane
from shadowroute.dataplane.stats import DataPlaneStats
from shadowroute.oplog import Sample, Watch, sample_of, startup_lines, watch_loop
from shadowroute.stream.kafka import KafkaSink

ops_log = logging.getLogger("shadowroute.ops")


def dataplane_flow(dp: DataPlane) -> RecordFlow:
    """The data plane's record queue depth and the records it lost (queue full, sink write
    failed, record not built)."""
    q = dp.queue
    flow = RecordFlow(len(q))
    flow.dropped["queue_full"] = q.dropped_total - q.failed_total
    flow.dropped["sink_failed"] = q.failed_total
    flow.dropped["build_failed"] = dp.proxy.recorder.build_failed if dp.proxy else 0
    return flow


def spool_losses(flow: RecordFlow, pair_sinks: Sequence[KafkaSink]) -> RecordFlow:
    """``flow`` plus the pair records the Kafka sinks could not keep (spool full)."""
    for s in pair_sinks:
        flow.dropped["spool_full"] += s.records_dropped
    return flow


def dataplane_circuits(dp: DataPlane) -> list[tuple[str, str, bool]]:
    """(route, candidate, open) for every candidate of the data plane."""
    if dp.proxy is None:
        return []
    return [(t.route, t.name, t.breaker.state != "closed") for t in dp.proxy.targets()]


def ops_sample(
    stats: Callable[[], DataPlaneStats],
    flow: Callable[[], RecordFlow],
    circuits: Callable[[], Iterable[tuple[str, str, bool]]],
) -> Callable[[], Sample]:
    """What the operator's log watches, from the same sources as ``/metrics``."""

    def sample() -> Sample:
        s = stats()
        return sample_of(s.mirrors, s.mirror_errors, flow().dropped, circuits())

    return sample


@contextlib.asynccontextmanager
async def operator_log(
    config: Config, sample: Callable[[], Sample], listen: str, admin: str
) -> AsyncIterator[None]:
    """Say what is served where, then log changes of state until the block ends."""
    for line in startup_lines(config, listen, admin):
        ops_log.info("%s", line)
    o = config.ops_log
    watch = Watch(
        min_mirrors=o.min_mirrors,
        fail_share=o.fail_share,
        recover_share=o.recover_share,
        repeat_s=o.repeat_s,
    )
    task = asyncio.get_running_loop().create_task(
        watch_loop(sample, interval_s=o.interval_s, watch=watch)
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
