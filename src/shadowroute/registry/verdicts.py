"""Verdicts written into the model registry: ``VerdictWriter.on_event`` acts on
``io.shadowroute.verdict.changed`` CloudEvents and ignores every other type.

For a candidate bound in ``registry.models`` it resolves the registered model version (a fixed
``version``, or the one its ``alias`` names now), sets the version's tags (``TAG_KEYS``) and,
only when the binding has ``promote_alias`` and the verdict is ``promote``, points that alias
at the version. Idempotent: the same event again sets the same tags, and an alias that already
names the version is not set again. An event older than the one whose tags the version carries
(``shadowroute.time``) changes nothing.

``on_event`` never raises into its caller (but for cancellation): a malformed event, an
unbound candidate, a registry refusal or a registry that stays down is logged and counted
(``EventStats``). The parsing and the tag values are pure functions (``parse_verdict_event``,
``verdict_tags``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from prometheus_client.registry import CollectorRegistry

from shadowroute.core.config import Config, Registry, RegistryBinding
from shadowroute.core.stats.policy import primary_metric
from shadowroute.registry.collector import RegistryCollector
from shadowroute.registry.mlflow import MlflowClient, ModelVersion, RegistryError
from shadowroute.registry.stats import EventStats, RequestStats

log = logging.getLogger("shadowroute.registry")
ops_log = logging.getLogger("shadowroute.ops")

__all__ = [
    "TAG_KEYS",
    "VERDICT_CHANGED",
    "EventError",
    "VerdictChange",
    "VerdictWriter",
    "parse_verdict_event",
    "registry_writer",
    "verdict_tags",
]

VERDICT_CHANGED = "io.shadowroute.verdict.changed"
VERDICTS = ("promote", "hold", "reject")
TAG_KEYS = (
    "shadowroute.verdict",
    "shadowroute.interval",
    "shadowroute.evidence",
    "shadowroute.revision",
    "shadowroute.time",
)
MAX_TAG_VALUE = 5000
"""MLflow guarantees tag values up to 5000 bytes."""
SEEN_IDS = 4096


class EventError(ValueError):
    """A verdict.changed event that does not follow the contract (docs/registry.md)."""


@dataclass(frozen=True)
class VerdictChange:
    id: str
    time: datetime
    time_text: str
    route: str
    candidate: str
    revision: str | None
    previous: str | None
    verdict: str
    decision: Mapping[str, Any]


def _text(data: Mapping[str, Any], key: str, where: str = "data") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise EventError(f"{where}.{key} must be a non-empty string, got {value!r:.80}")
    return value


def parse_verdict_event(event: Mapping[str, Any]) -> VerdictChange | None:
    """The change a ``verdict.changed`` event carries; None for another type; ``EventError``
    when it does not follow the contract."""
    if not isinstance(event, Mapping):
        raise EventError(f"an event is a JSON object, got {type(event).__name__}")
    kind = event.get("type")
    if kind != VERDICT_CHANGED:
        if not isinstance(kind, str):
            raise EventError(f"type must be a string, got {kind!r:.80}")
        return None
    if event.get("specversion") != "1.0":
        raise EventError(f"specversion must be '1.0', got {event.get('specversion')!r:.40}")
    event_id = _text(event, "id", "event")
    time_text = _text(event, "time", "event")
    try:
        when = datetime.fromisoformat(time_text.replace("Z", "+00:00"))
    except ValueError:
        raise EventError(f"event.time is not an RFC 3339 time: {time_text!r:.80}") from None
    if when.tzinfo is None:
        raise EventError(f"event.time has no time zone: {time_text!r:.80}")
    data = event.get("data")
    if not isinstance(data, Mapping):
        raise EventError("data must be a JSON object")
    route, candidate = _text(data, "route"), _text(data, "candidate")
    verdict = data.get("verdict")
    if verdict not in VERDICTS:
        raise EventError(f"data.verdict must be one of {list(VERDICTS)}, got {verdict!r:.40}")
    previous = data.get("previous")
    if previous is not None and previous not in VERDICTS:
        raise EventError(f"data.previous must be null or a verdict, got {previous!r:.40}")
    revision = data.get("revision")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise EventError(f"data.revision must be null or a string, got {revision!r:.80}")
    decision = data.get("decision")
    if not isinstance(decision, Mapping):
        raise EventError("data.decision must be a JSON object (the decision document)")
    return VerdictChange(
        event_id, when, time_text, route, candidate, revision, previous, str(verdict), decision
    )


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return "null"
    return f"{x:.4g}"


def interval_text(decision: Mapping[str, Any], metric: str | None) -> str:
    """The decision's interval for ``metric`` (else its first metric), compact:
    ``accuracy 0.031 [0.012, 0.05] n=1200``; ``none`` when the decision has no metric."""
    metrics = decision.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        return "none"
    name = metric if metric in metrics else next(iter(metrics))
    m = metrics[name]
    if not isinstance(m, Mapping):
        return f"{name} null"
    n = m.get("n")
    count = f" n={n}" if isinstance(n, int) and not isinstance(n, bool) else ""
    return (
        f"{name} {_num(m.get('estimate'))} [{_num(m.get('lower'))}, {_num(m.get('upper'))}]{count}"
    )


def evidence_url(base: str, route: str, candidate: str, revision: str | None) -> str:
    """The decision's URL on the API, about ``revision`` when it is known."""
    url = f"{base.rstrip('/')}/v1/routes/{quote(route, safe='')}/candidates/"
    url += f"{quote(candidate, safe='')}/decision"
    return url if revision is None else f"{url}?revision={quote(revision, safe='')}"


def verdict_tags(change: VerdictChange, base_url: str, metric: str | None) -> dict[str, str]:
    """The model version tags for ``change`` (``TAG_KEYS``), each within ``MAX_TAG_VALUE``."""
    tags = {
        "shadowroute.verdict": change.verdict,
        "shadowroute.interval": interval_text(change.decision, metric),
        "shadowroute.evidence": evidence_url(
            base_url, change.route, change.candidate, change.revision
        ),
        "shadowroute.revision": change.revision or "",
        "shadowroute.time": change.time_text,
    }
    return {k: v.encode()[:MAX_TAG_VALUE].decode(errors="ignore") for k, v in tags.items()}


class VerdictWriter:
    """Holds the registry config and client; ``on_event`` is what the event bus calls."""

    def __init__(
        self,
        config: Config,
        client: MlflowClient,
        stats: EventStats | None = None,
    ) -> None:
        assert config.registry is not None, "VerdictWriter needs a registry section"
        self.config = config
        self.registry: Registry = config.registry
        self.client = client
        self.stats = stats or EventStats()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = asyncio.Lock()

    @property
    def requests(self) -> RequestStats:
        return self.client.stats

    async def on_event(self, event: Mapping[str, Any]) -> None:
        """Act on one event; never raises (but for cancellation)."""
        try:
            outcome = await self._handle(event)
        except asyncio.CancelledError:
            raise
        except EventError as exc:
            log.error("registry: refused a malformed event %s: %s", _event_id(event), exc)
            outcome = "invalid"
        except RegistryError as exc:
            log.error("registry: event %s not written: %s", _event_id(event), exc)
            outcome = "failed"
        except Exception:
            log.exception("registry: event %s not written", _event_id(event))
            outcome = "failed"
        self.stats.events[outcome] += 1

    async def _handle(self, event: Mapping[str, Any]) -> str:
        change = parse_verdict_event(event)
        if change is None:
            return "ignored"
        binding = self.registry.binding(change.route, change.candidate)
        if binding is None:
            log.info(
                "registry: %s/%s has no registry binding (registry.models): event %s not written",
                change.route, change.candidate, change.id,
            )  # fmt: skip
            return "unbound"
        async with self._lock:  # one event at a time: an alias move is read-then-write
            return await self._apply(change, binding)

    async def _apply(self, change: VerdictChange, binding: RegistryBinding) -> str:
        name = binding.registered_model
        mv = await self._version(binding)
        if _newer(mv.tags.get("shadowroute.time"), change.time):
            log.info(
                "registry: event %s (%s) is older than the evidence on %s version %s: skipped",
                change.id, change.time_text, name, mv.version,
            )  # fmt: skip
            return "stale"
        if change.id in self._seen and mv.tags.get("shadowroute.time") == change.time_text:
            return "duplicate"  # delivered again after it was written: nothing to do
        route = self.config.route(change.route)
        metric = None
        if route is not None:
            with contextlib.suppress(ValueError):
                metric = primary_metric(route.policy, route.task)
        tags = verdict_tags(change, self.registry.public_base_url, metric)
        for key, value in tags.items():
            if mv.tags.get(key) != value:
                await self.client.set_model_version_tag(name, mv.version, key, value)
        if change.verdict == "promote" and binding.promote_alias is not None:
            await self._promote(name, binding.promote_alias, mv.version, change)
        self._seen[change.id] = None
        while len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        log.info(
            "registry: %s version %s tagged %s (%s/%s, event %s)",
            name, mv.version, change.verdict, change.route, change.candidate, change.id,
        )  # fmt: skip
        return "applied"

    async def _version(self, binding: RegistryBinding) -> ModelVersion:
        if binding.version is not None:
            return await self.client.get_model_version(binding.registered_model, binding.version)
        assert binding.alias is not None
        return await self.client.get_model_version_by_alias(binding.registered_model, binding.alias)

    async def _promote(self, name: str, alias: str, version: str, change: VerdictChange) -> None:
        aliases = await self.client.get_aliases(name)
        before = aliases.get(alias)
        if before == version:
            return
        await self.client.set_alias(name, alias, version)
        self.stats.alias_moves += 1
        ops_log.info(
            "registry: %s@%s now names version %s (was %s): %s/%s promoted (event %s)",
            name, alias, version, before or "none", change.route, change.candidate, change.id,
        )  # fmt: skip


def _newer(tag: str | None, when: datetime) -> bool:
    """Whether the time on the version (``shadowroute.time``) is later than ``when``."""
    if not tag:
        return False
    try:
        seen = datetime.fromisoformat(tag.replace("Z", "+00:00"))
    except ValueError:
        return False
    return seen.tzinfo is not None and seen > when


def _event_id(event: object) -> str:
    if isinstance(event, Mapping) and isinstance(event.get("id"), str):
        return repr(event["id"][:80])
    return "(no id)"


@contextlib.asynccontextmanager
async def registry_writer(
    config: Config, metrics: CollectorRegistry | None = None
) -> AsyncIterator[VerdictWriter | None]:
    """The ``VerdictWriter`` for ``config.registry`` for the block's length (None when the
    config has no registry); its counters go to ``metrics`` when given."""
    reg = config.registry
    if reg is None:
        yield None
        return
    async with MlflowClient(
        reg.tracking_uri, reg.token_value(), reg.timeout_s, reg.retries, reg.backoff_s
    ) as client:
        writer = VerdictWriter(config, client)
        collector = RegistryCollector(writer.stats, client.stats)
        if metrics is not None:
            metrics.register(collector)
        try:
            yield writer
        finally:
            if metrics is not None:
                metrics.unregister(collector)
