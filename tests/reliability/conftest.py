"""Fixtures and settings for the reliability suite (tests/reliability)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

from kafka_harness import KafkaBroker


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], Any]]:
    """Run these tests on uvloop, the event loop the data plane runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def own_broker() -> Iterator[KafkaBroker]:
    """A broker of the test's own, free to stop, restart, pause or kill."""
    broker = KafkaBroker()
    try:
        broker.start()
    except Exception as exc:
        broker.cleanup()
        pytest.fail(f"could not start a Kafka broker: {exc}", pytrace=False)
    yield broker
    broker.cleanup()
