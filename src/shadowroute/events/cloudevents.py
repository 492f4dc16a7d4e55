"""CloudEvents 1.0 documents, structured JSON mode: the event types shadowroute emits and
their constructors (pure: the id and the time are handed in or drawn here, no I/O).

Every event is one JSON object::

    {"specversion": "1.0", "id": "<uuid4>", "source": "/shadowroute/<instance>",
     "type": "io.shadowroute.verdict.changed", "time": "2026-12-05T04:00:00.123Z",
     "subject": "<route>/<candidate or 'production'>",
     "datacontenttype": "application/json", "data": {...}}

``id`` is also the delivery's idempotency key (a webhook's ``webhook-id``). The ``data`` of
each type is documented in docs/events.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypedDict

__all__ = [
    "CIRCUIT_CLOSED",
    "CIRCUIT_OPENED",
    "CONTENT_TYPE",
    "DRIFT_EXCEEDED",
    "DRIFT_RECOVERED",
    "EVENT_TYPES",
    "LABELS_RESUMED",
    "LABELS_STALE",
    "PRODUCTION_DEGRADED",
    "PRODUCTION_RECOVERED",
    "VERDICT_CHANGED",
    "CloudEvent",
    "make_event",
    "rfc3339",
]

VERDICT_CHANGED: Final = "io.shadowroute.verdict.changed"
DRIFT_EXCEEDED: Final = "io.shadowroute.drift.exceeded"
DRIFT_RECOVERED: Final = "io.shadowroute.drift.recovered"
PRODUCTION_DEGRADED: Final = "io.shadowroute.production.degraded"
PRODUCTION_RECOVERED: Final = "io.shadowroute.production.recovered"
LABELS_STALE: Final = "io.shadowroute.labels.stale"
LABELS_RESUMED: Final = "io.shadowroute.labels.resumed"
CIRCUIT_OPENED: Final = "io.shadowroute.circuit.opened"
CIRCUIT_CLOSED: Final = "io.shadowroute.circuit.closed"

EVENT_TYPES: Final = (
    VERDICT_CHANGED,
    DRIFT_EXCEEDED,
    DRIFT_RECOVERED,
    PRODUCTION_DEGRADED,
    PRODUCTION_RECOVERED,
    LABELS_STALE,
    LABELS_RESUMED,
    CIRCUIT_OPENED,
    CIRCUIT_CLOSED,
)
"""Every ``type`` shadowroute emits (docs/events.md)."""

CONTENT_TYPE: Final = "application/cloudevents+json"
"""The media type of a CloudEvent in structured mode (the webhook body's, untemplated)."""


class CloudEvent(TypedDict):
    """A CloudEvents 1.0 event in structured JSON mode."""

    specversion: str
    id: str
    source: str
    type: str
    time: str
    subject: str
    datacontenttype: str
    data: dict[str, Any]


def rfc3339(t: float) -> str:
    """RFC 3339 UTC time with milliseconds, ``Z`` suffix.

    >>> rfc3339(0.0)
    '1970-01-01T00:00:00.000Z'
    """
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def make_event(
    kind: str,
    *,
    instance: str,
    route: str,
    model: str,
    data: Mapping[str, Any],
    at: float,
    event_id: str | None = None,
) -> CloudEvent:
    """An event of type ``kind`` about ``route``/``model`` (a candidate, or ``production``)
    at wall-clock time ``at`` (seconds since the epoch).

    >>> e = make_event(VERDICT_CHANGED, instance="a", route="r", model="c", data={},
    ...                at=0.0, event_id="x")
    >>> e["source"], e["subject"], e["time"]
    ('/shadowroute/a', 'r/c', '1970-01-01T00:00:00.000Z')
    """
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    return CloudEvent(
        specversion="1.0",
        id=event_id or str(uuid.uuid4()),
        source=f"/shadowroute/{instance}",
        type=kind,
        time=rfc3339(at),
        subject=f"{route}/{model}",
        datacontenttype="application/json",
        data=dict(data),
    )
