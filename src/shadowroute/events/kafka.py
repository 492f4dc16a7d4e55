"""The Kafka destination: every event produced to ``<prefix>.events``, keyed by its subject
(``<route>/<candidate>``) so one candidate's events stay in order on one partition; the
value is the CloudEvent (structured JSON), with a ``content-type`` header
``application/cloudevents+json``. The producer uses the transport's security settings; a
broker that cannot be reached is retried like a webhook that does not answer."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shadowroute.core.config import Transport
from shadowroute.events.cloudevents import CONTENT_TYPE, CloudEvent
from shadowroute.events.delivery import DeliveryError, Destination, RetryPolicy
from shadowroute.stream.kafka import security_kwargs, topic_name

__all__ = ["KafkaDestination", "events_topic"]

SEND_TIMEOUT_S = 30.0


def events_topic(prefix: str) -> str:
    return topic_name(prefix, "events")


class KafkaDestination(Destination):
    kind = "kafka"

    def __init__(self, transport: Transport, policy: RetryPolicy | None = None) -> None:
        super().__init__("kafka", events_topic(transport.topic_prefix), policy or RetryPolicy())
        self.transport = transport
        self.topic = events_topic(transport.topic_prefix)
        self._producer: AIOKafkaProducer | None = None

    def _new_producer(self) -> AIOKafkaProducer:
        t = self.transport
        return AIOKafkaProducer(
            bootstrap_servers=t.bootstrap,
            client_id="shadowroute-events",
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(SEND_TIMEOUT_S * 1000),
            **security_kwargs(t.security),
        )

    async def _producer_ready(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self._new_producer()
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise DeliveryError("connect", f"cannot reach Kafka: {exc!r}") from None
            self._producer = producer
        return self._producer

    async def send(self, event: CloudEvent) -> None:
        producer = await self._producer_ready()
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await producer.send_and_wait(
                    self.topic,
                    orjson.dumps(event),
                    key=event["subject"].encode(),
                    headers=[("content-type", CONTENT_TYPE.encode())],
                )
        except (KafkaError, TimeoutError) as exc:
            raise DeliveryError("kafka", repr(exc)) from None

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await producer.stop()
