"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import uvloop

from kafka_harness import KafkaBroker, started_broker

# --- the event loop: uvloop, as in production -------------------------------------------------


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Every async test runs on uvloop, the loop `shadowroute serve` uses."""
    return {"uvloop": uvloop.new_event_loop}


# --- real Apache Kafka (tests marked `kafka`) --------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """host:port of a real broker: $SHADOWROUTE_TEST_KAFKA if set, else one started here for
    the session. A broker that cannot start fails the test (never a skip)."""
    external = os.environ.get("SHADOWROUTE_TEST_KAFKA")
    if external:
        yield external
        return
    from kafka_harness import BrokerError, KafkaBroker

    broker = KafkaBroker()
    try:
        broker.start()
    except BrokerError as exc:
        broker.cleanup()
        pytest.fail(f"could not start the Kafka broker: {exc}", pytrace=False)
    try:
        yield broker.bootstrap
    finally:
        broker.cleanup()


@pytest.fixture
def own_broker() -> Iterator[KafkaBroker]:
    """A broker of the test's own, free to stop, restart, pause or kill."""
    with started_broker() as broker:
        yield broker


# --- a real MLflow tracking server (tests marked `mlflow`) ---------------------------------


@pytest.fixture(scope="session")
def mlflow_url() -> Iterator[str]:
    """Base URL of a real MLflow tracking server: $SHADOWROUTE_TEST_MLFLOW if set, else
    `mlflow server` (SQLite backend) started here for the session. A server that cannot start
    fails the test (never a skip)."""
    external = os.environ.get("SHADOWROUTE_TEST_MLFLOW")
    if external:
        yield external.rstrip("/")
        return
    from mlflow_harness import MlflowError, MlflowServer

    server = MlflowServer()
    try:
        server.start()
    except MlflowError as exc:
        server.cleanup()
        pytest.fail(f"could not start the MLflow tracking server: {exc}", pytrace=False)
    try:
        yield server.url
    finally:
        server.cleanup()
