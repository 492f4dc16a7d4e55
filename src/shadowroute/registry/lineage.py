"""Which registry version each bound model is, for ``/v1/models/{model}/lineage``.

``RegistryLineage`` reads every ``registry.models`` binding at start and again every
``refresh_s`` (a version by number, or the one its alias names now: the live version is read
from the alias), in the background; ``lookup(route, model)`` answers from the last read and
never calls the registry, so a request to the API never waits for it. A failed read keeps the
last good one and says so (``error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from shadowroute.comparator.documents import RegistryVersion
from shadowroute.core.config import Registry, RegistryBinding
from shadowroute.registry.collector import LineageCollector
from shadowroute.registry.mlflow import MlflowClient, ModelVersion, RegistryError

log = logging.getLogger("shadowroute.registry")

__all__ = ["RegistryLineage", "lineage_entry"]


def lineage_entry(
    binding: RegistryBinding,
    tracking_uri: str,
    mv: ModelVersion | None,
    read_at: float | None,
    error: str | None,
) -> RegistryVersion:
    """The ``registry`` object of a lineage document (docs/api.md) for one read."""
    return {
        "kind": "mlflow",
        "registered_model": binding.registered_model,
        "alias": binding.alias,
        "version": None if mv is None else mv.version,
        "run_id": (mv.run_id or None) if mv is not None else None,
        "source": None if mv is None else (mv.source or None),
        "aliases": [] if mv is None else list(mv.aliases),
        "tags": {}
        if mv is None
        else {k: v for k, v in mv.tags.items() if k.startswith("shadowroute.")},
        "url": None
        if mv is None
        else (
            f"{tracking_uri.rstrip('/')}/#/models/{quote(binding.registered_model, safe='')}"
            f"/versions/{mv.version}"
        ),
        "read_at": read_at,
        "error": error,
    }


class RegistryLineage:
    """The last read of every binding, refreshed in the background while ``running()``."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.reads = {"ok": 0, "failed": 0}
        self._entries: dict[tuple[str, str], RegistryVersion] = {
            (b.route, b.model): lineage_entry(b, registry.tracking_uri, None, None, "not read yet")
            for b in registry.models
        }

    def lookup(self, route: str, model: str) -> RegistryVersion | None:
        """The registry object for a model's lineage; None when the model is not bound."""
        entry = self._entries.get((route, model))
        return None if entry is None else entry.copy()

    def collector(self) -> LineageCollector:
        return LineageCollector(self.reads)

    async def refresh(self, client: MlflowClient) -> None:
        """Read every binding once."""
        for b in self.registry.models:
            key = (b.route, b.model)
            try:
                if b.version is not None:
                    mv = await client.get_model_version(b.registered_model, b.version)
                else:
                    assert b.alias is not None
                    mv = await client.get_model_version_by_alias(b.registered_model, b.alias)
            except RegistryError as exc:
                self.reads["failed"] += 1
                log.warning("registry: lineage of %s/%s not read: %s", b.route, b.model, exc)
                self._entries[key] = {**self._entries[key], "error": str(exc)}
                continue
            self.reads["ok"] += 1
            self._entries[key] = lineage_entry(b, self.registry.tracking_uri, mv, time.time(), None)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RegistryLineage]:
        """Reads now and every ``refresh_s`` for the block's length."""
        reg = self.registry
        # Lineage reads are retried by the next refresh, not within one.
        async with MlflowClient(
            reg.tracking_uri, reg.token_value(), reg.timeout_s, 0, reg.backoff_s
        ) as client:
            task = asyncio.create_task(self._loop(client), name="registry-lineage")
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self, client: MlflowClient) -> None:
        while True:
            try:
                await self.refresh(client)
            except Exception:
                log.exception("registry: lineage refresh failed")
            await asyncio.sleep(self.registry.refresh_s)

    def attach(
        self,
        app_cleanup: list[Callable[[web.Application], AsyncIterator[None]]],
        metrics: CollectorRegistry,
    ) -> None:
        """Run while an aiohttp app runs (its ``cleanup_ctx``), counters in ``metrics``."""
        metrics.register(self.collector())

        async def ctx(app: web.Application) -> AsyncIterator[None]:
            async with self.running():
                yield

        app_cleanup.append(ctx)
