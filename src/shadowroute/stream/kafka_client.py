"""aiokafka clients: their connection settings, how the sink's producer is built, and how a
producer is stopped within a time bound.

aiokafka's producer is three layers: ``AIOKafkaProducer`` (the API), its ``RecordAccumulator``
(batches per partition, waiting for the sender) and its ``Sender`` (a background task that
drains the accumulator into produce requests and retries them). The sink builds its own
batches (``stream.handover``) and only uses the public API: ``create_batch``, ``send_batch``,
``client.cluster``, ``start`` and ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.helpers import create_ssl_context

from shadowroute.core.config import KafkaSecurity, Transport

log = logging.getLogger("shadowroute.stream.kafka")

FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
    ProducerClosed,
)
"""Producer states no retry with the same producer gets out of: the producer is replaced."""


def security_kwargs(security: KafkaSecurity) -> dict[str, Any]:
    """aiokafka client arguments for TLS and SASL (PLAIN / SCRAM)."""
    kw: dict[str, Any] = {"security_protocol": security.protocol}
    if security.protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = create_ssl_context(
            cafile=security.ssl_cafile,
            certfile=security.ssl_certfile,
            keyfile=security.ssl_keyfile,
        )
    if security.protocol.startswith("SASL_"):
        password = security.sasl_password
        kw["sasl_mechanism"] = security.sasl_mechanism
        kw["sasl_plain_username"] = security.sasl_username
        kw["sasl_plain_password"] = password.get_secret_value() if password else None
    return kw


def new_producer(transport: Transport, topic: str, request_timeout_ms: int) -> AIOKafkaProducer:
    """A producer for the sink of ``topic``: idempotent with ``acks: all``, no lingering of
    its own (the sink lingers ``transport.linger_ms`` before handing batches over)."""
    t = transport
    acks: str | int = "all" if t.acks == "all" else int(t.acks)
    return AIOKafkaProducer(
        bootstrap_servers=t.bootstrap,
        client_id=f"shadowroute-{topic}",
        acks=acks,
        enable_idempotence=t.acks == "all",
        linger_ms=0,
        max_batch_size=t.batch_bytes,
        max_request_size=max(t.batch_bytes, 1 << 20),
        compression_type=None if t.compression == "none" else t.compression,
        request_timeout_ms=request_timeout_ms,
        **security_kwargs(t.security),
    )


async def stop_producer(producer: AIOKafkaProducer, timeout_s: float = 5.0) -> None:
    """Stop a producer, letting it deliver what it holds for up to ``timeout_s``; then stop it
    without delivering (what it did not deliver is the caller's to keep: the sink spools it)."""
    stopping = asyncio.ensure_future(producer.stop())
    await asyncio.wait([stopping], timeout=timeout_s)
    if not stopping.done():
        # Undeliverable batches hold stop() up: end the sender task (it first waits for its
        # requests in flight, at most ``request_timeout_ms``); stop() then closes the rest.
        _cancel_sender(producer)
        await asyncio.wait([stopping], timeout=timeout_s)
    if not stopping.done():
        # Last resort: give up on stop() and close the client's connections and metadata task.
        stopping.cancel()
        closing = asyncio.ensure_future(producer.client.close())
        await asyncio.wait([stopping, closing], timeout=1.0)
    if stopping.done() and not stopping.cancelled() and stopping.exception() is not None:
        log.debug("producer stop: %r", stopping.exception())


def _cancel_sender(producer: AIOKafkaProducer) -> None:
    """Cancel the producer's sender task, so that a ``stop()`` waiting on undeliverable batches
    can finish: the one place the sink reaches past aiokafka's public API (read against
    aiokafka 0.14).

    ``AIOKafkaProducer.stop()`` first waits until either the accumulator has flushed (every
    queued batch resolved) or the sender task has ended, and only then closes the sender and
    the connections. With an idempotent producer a batch is retried until the broker takes
    it, so while the broker is away neither happens and ``stop()`` never returns
    (aio-libs/aiokafka#1101, #1013). The public API offers no way out: ``stop()`` and
    ``flush()`` take no timeout; there is no delivery timeout (a batch expires only while its
    partition has no leader); ``send_batch`` returns ``asyncio.shield(batch.future)``, so
    cancelling the futures the sink holds leaves the batches queued; ``client.close()`` drops
    the connections but the sender reconnects; cancelling ``stop()`` itself leaves the sender
    task running. Ending the sender task is what lets ``stop()`` close the rest, so that is
    what this does, through the sender's public ``sender_task`` property. If a later aiokafka
    renames the attribute, nothing is cancelled and ``stop_producer`` falls back to cancelling
    ``stop()`` after its timeout (tests/test_kafka_client.py then fails)."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is not None:
        task.cancel()
