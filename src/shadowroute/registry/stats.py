"""Counters of the registry writer: plain data, read by ``collector`` at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EVENT_OUTCOMES", "OUTCOMES", "EventStats", "RequestStats"]

OUTCOMES = ("ok", "refused", "failed", "oversize")
"""Calls to the registry by outcome: ``ok``; ``refused`` a 4xx (unknown model, version or
alias, a bad token); ``failed`` no usable answer after the retries; ``oversize`` an answer over
``mlflow.MAX_RESPONSE_BYTES``."""

EVENT_OUTCOMES = ("applied", "duplicate", "ignored", "unbound", "stale", "invalid", "failed")
"""What became of each event (``shadowroute_registry_events_total{outcome}``): ``applied``
tags written (and the alias moved when configured); ``duplicate`` an event already written,
delivered again; ``ignored`` another event type; ``unbound`` a route/candidate with no
``registry.models`` binding; ``stale`` older than the evidence the version already carries;
``invalid`` a malformed event; ``failed`` the registry refused (unknown model, version or
alias) or stayed down after the retries."""


@dataclass
class RequestStats:
    """Calls to the registry by outcome (``OUTCOMES``) and the retries made."""

    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    retries: int = 0


@dataclass
class EventStats:
    """Events by outcome (``EVENT_OUTCOMES``) and aliases moved."""

    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_OUTCOMES, 0))
    alias_moves: int = 0
