"""Where a process's records go and where its labels and scores come from, chosen once from
``transport.kind`` for every process shape (``serve``, ``serve --workers``, ``compare``).

- ``embedded``: the comparator runs in this process; pair records reach it over an
  in-process channel, labels are committed to it directly, and it answers the score API.
- ``kafka``: pair records go to the pairs topic; labels posted here go to the labels topic
  (keyed to their pair's partition); scores are served by ``shadowroute compare``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from shadowroute.api.labels import LabelWriter, SinkLabelWriter
from shadowroute.comparator.embedded import Comparator
from shadowroute.comparator.reader import ScoresReader
from shadowroute.core.config import Config
from shadowroute.core.records import LabelRecord
from shadowroute.stream.jsonl import JsonlSink
from shadowroute.stream.kafka import CopartitionError, KafkaSink, check_copartitioned
from shadowroute.stream.sink import ChannelSink, FanoutSink, Sink

log = logging.getLogger("shadowroute")


def pair_sinks(config: Config, extra: list[Sink] | None = None) -> tuple[Sink, list[KafkaSink]]:
    """The sink pair records go to, from the config, and the Kafka sinks among them."""
    sinks: list[Sink] = list(extra or [])
    kafka: list[KafkaSink] = []
    if config.records.jsonl_path:
        sinks.append(
            JsonlSink(
                config.records.jsonl_path,
                max_bytes=config.records.jsonl_max_bytes,
                keep=config.records.jsonl_keep,
            )
        )
    if config.transport.kind == "kafka":
        kafka.append(KafkaSink.for_pairs(config.transport))
        sinks.append(kafka[-1])
    return FanoutSink(sinks), kafka


async def verify_kafka_topics(config: Config, timeout_s: float = 10.0) -> None:
    """At start: pairs and labels must have the same partition count, or labels would not
    meet their pairs; that is a configuration error (``CopartitionError``). A broker that
    cannot be reached, or topics not created yet, are not: records spool until Kafka is
    there, and this is logged."""
    t = config.transport
    assert t.bootstrap is not None
    try:
        async with asyncio.timeout(timeout_s):
            await check_copartitioned(t.bootstrap, t.security, t.topic_prefix)
    except CopartitionError as exc:
        if "missing" in str(exc):
            log.warning("%s; records spool until they exist (`shadowroute topics create`)", exc)
            return
        raise
    except Exception as exc:
        log.warning("cannot check the Kafka topics now (%r); records spool until Kafka is up", exc)


class ComparatorLabelWriter:
    """Labels from ``POST /v1/labels`` straight to the embedded comparator."""

    def __init__(self, comparator: Comparator) -> None:
        self.comparator = comparator

    async def write_labels(self, labels: Sequence[LabelRecord]) -> Sequence[str] | None:
        """Returns once the labels are committed (so a 202 survives a crash)."""
        return await self.comparator.commit_labels(labels)


@contextlib.asynccontextmanager
async def kafka_labels(config: Config) -> AsyncIterator[KafkaSink]:
    """The labels topic's sink, started for the block's length and flushed at its end."""
    sink = KafkaSink.for_labels(config.transport)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.close()


@dataclass
class RecordsBackend:
    """What ``records_backend`` chose, started."""

    pairs: Sink
    """Where pair records go. Not started: whoever writes records into it (the data plane's
    record pump, or the supervisor's) starts it and closes it once its records are in."""
    labels: LabelWriter
    scores: ScoresReader | None
    """The embedded comparator's reader; None with Kafka (``compare`` serves the scores)."""
    comparator: Comparator | None
    pair_kafka: list[KafkaSink] = field(default_factory=list)
    """The Kafka sinks among ``pairs`` (their spool losses count as lost records)."""
    kafka: list[KafkaSink] = field(default_factory=list)
    """Every Kafka sink of the process (pairs and labels), for the metrics."""


@contextlib.asynccontextmanager
async def records_backend(
    config: Config, *, topics_checked: bool = False
) -> AsyncIterator[RecordsBackend]:
    """The records backend of a process that proxies (``serve``, ``serve --workers``).

    Start: with Kafka, the topics' partition counts are checked (unless the caller did,
    ``topics_checked``) and the labels sink starts; embedded, the comparator starts. Stop, in
    reverse: the comparator flushes and closes, or the labels sink flushes. Callers stop their
    writers of pair records before the block ends."""
    extra: list[Sink] = []
    async with contextlib.AsyncExitStack() as stack:
        comparator: Comparator | None = None
        labels: LabelWriter
        label_sinks: list[KafkaSink] = []
        if config.transport.kind == "embedded":
            comparator = Comparator(config)
            await comparator.start()
            stack.push_async_callback(comparator.close)
            extra.append(ChannelSink(comparator))
            labels = ComparatorLabelWriter(comparator)
        else:
            if not topics_checked:
                await verify_kafka_topics(config)
            labels_sink = await stack.enter_async_context(kafka_labels(config))
            label_sinks.append(labels_sink)
            labels = SinkLabelWriter(labels_sink)
        pairs, pair_kafka = pair_sinks(config, extra)
        yield RecordsBackend(
            pairs=pairs,
            labels=labels,
            scores=comparator.reader if comparator is not None else None,
            comparator=comparator,
            pair_kafka=pair_kafka,
            kafka=[*pair_kafka, *label_sinks],
        )
