"""``POST /v1/labels``: ground truth intake.

The body is a JSON array, JSON lines or CSV (by Content-Type, sniffed when absent). Good
records are always accepted and written, even when other lines are bad: the answer is 202
when every line was good, and 400 naming each bad line (with the count that was accepted)
otherwise. A record must also meet the label rules (``core.label_rules``: ``ts`` near the
time of receipt, a bounded value), or it is refused by id with the reason.

With the embedded comparator the answer comes after the labels are committed, and says what
became of each one that was not simply taken (``labels``: a duplicate, a conflict with the
label already kept, or refused because the route's backlog of waiting labels is full: 429),
and how many of the accepted ones matched a request seen so far (``matched``) and how many
wait for their pair (``waiting``, with a few of their ids in ``waiting_ids``). A label is
keyed by the request id the proxy returned (``x-request-id``): labels under one's own row ids
match nothing and wait until ``label_ttl_s`` ends.

With the Kafka transport the labels go to the labels topic and the comparator, another
process, joins them later: the answer can only say they were written (``committed: false``,
``matched`` and ``waiting`` null); the comparator's ``labels.waiting`` per route
(``GET /v1/routes/{route}/production``) and ``shadowroute_labels_waiting`` tell how many wait.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from aiohttp import web

from shadowroute.api.app import CONTEXT, GUARD, check_token, error, json_response
from shadowroute.core.label_rules import LabelRules
from shadowroute.core.records import (
    LabelRecord,
    encode_label,
    label_partition_key,
    parse_label_batch,
)
from shadowroute.stream.sink import Sink

MAX_REPORTED_ERRORS = 1000
MAX_WAITING_IDS = 5
"""How many ids of labels kept waiting the answer names (``waiting_ids``): enough to see
whether they look like the proxy's request ids."""
NONE_MATCHED_HINT = (
    "none of these ids matched a request seen so far; they wait for their pair until "
    "label_ttl_s ends. Use the x-request-id the proxy returned with each answer (or sent it "
    "on the request), not your own row ids"
)
KAFKA_NOTE = (
    "written to the labels topic; the comparator matches them with their pairs later, so "
    "how many matched is not known here: see labels.waiting in "
    "GET /v1/routes/{route}/production on the comparator's API, or the "
    "shadowroute_labels_waiting metric"
)
CONTENT_TYPES = (
    "application/json",
    "application/x-ndjson",
    "application/jsonl",
    "application/json-lines",
    "text/csv",
)
"""The media types a label batch may be sent as. Any other (``text/plain``, form bodies, none)
is refused with 415: those are what a web page can post cross-site without a preflight."""


class LabelWriter(Protocol):
    async def write_labels(self, labels: Sequence[LabelRecord]) -> Sequence[str] | None:
        """Write labels durably; returns what became of each (``Engine.label_outcomes``)
        when that is known now, ``None`` when the comparator decides later."""
        ...


@runtime_checkable
class AckedSink(Protocol):
    async def write_acked(self, batch: Sequence[tuple[bytes, bytes]]) -> int: ...


class SinkLabelWriter:
    """Labels to a record sink (the Kafka labels topic), keyed by request id so that a label
    lands in its pair's partition (``X`` for an instance label ``X#i``). A sink that can
    (``KafkaSink.write_acked``) returns only once the broker acknowledged the labels or they
    are in the spool, so a label answered 202 survives a crash."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def write_labels(self, labels: Sequence[LabelRecord]) -> Sequence[str] | None:
        batch = [(label_partition_key(lab.id), encode_label(lab)) for lab in labels]
        if isinstance(self.sink, AckedSink):
            await self.sink.write_acked(batch)
        else:
            await self.sink.write(batch)
        return None


def label_routes(writer: LabelWriter, rules: LabelRules | None = None) -> list[web.RouteDef]:
    """``POST /v1/labels`` writing to ``writer``, under ``rules`` (default: from the app's
    config)."""

    async def post_labels(request: web.Request) -> web.Response:
        denied = check_token(request)
        if denied is not None:
            return denied
        media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        refused_counts = request.app[GUARD].labels_refused
        if media not in CONTENT_TYPES:
            refused_counts["content_type"] += 1
            return error(
                415,
                f"labels must be sent as one of {', '.join(CONTENT_TYPES)} "
                f"(got {media or 'no Content-Type'})",
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, "label batch too large; send it in several requests")
        now_ms = int(time.time() * 1000)
        parsed, bad = parse_label_batch(body, request.headers.get("Content-Type"), now_ms)
        checks = rules if rules is not None else LabelRules.of(request.app[CONTEXT].config)
        good, refused = checks.split(parsed, now_ms)
        outcomes: Sequence[str] | None = None
        if good:
            try:
                outcomes = await writer.write_labels(good)
            except Exception as exc:  # answered: nothing of this batch was kept
                return error(503, f"labels not stored, send them again: {exc}")
        answer, reasons = _answer(good, bad, refused, outcomes)
        refused_counts.update(reasons)
        return answer

    return [web.post("/v1/labels", post_labels)]


def _answer(
    good: Sequence[LabelRecord],
    bad: Sequence[tuple[int, str]],
    refused: list[tuple[str, str]],
    outcomes: Sequence[str] | None,
) -> tuple[web.Response, list[str]]:
    """The answer to a batch: 202 when no record was bad or refused (``accepted`` counts
    the new labels kept; duplicates and conflicts are counted and named apart); 400 when lines
    were bad or records refused by the rules; 429 when the only refusals were a full backlog.
    Good records are written in every case. Also returns the reason of each refusal."""
    statuses: list[dict[str, str]] = [
        {"id": i, "status": "refused", "reason": r} for i, r in refused
    ]
    counts = {"duplicate": 0, "conflict": 0, "refused": len(refused), "backlog": 0}
    waiting: list[str] = []
    for lab, outcome in zip(good, outcomes or (), strict=False):
        if outcome == "accepted":
            continue
        if outcome == "waiting":
            waiting.append(lab.id)
            continue
        if outcome in ("duplicate", "conflict"):
            counts[outcome] += 1
            statuses.append({"id": lab.id, "status": outcome})
        else:
            reason = outcome.removeprefix("refused:")
            counts["backlog" if reason == "backlog_full" else "refused"] += 1
            statuses.append({"id": lab.id, "status": "refused", "reason": reason})
    not_kept = counts["refused"] - len(refused) + counts["backlog"]
    accepted = len(good) - not_kept - counts["duplicate"] - counts["conflict"]
    result: dict[str, object] = {
        "accepted": accepted,
        "rejected": len(bad) + counts["refused"] + counts["backlog"],
        "duplicates": counts["duplicate"],
        "conflicts": counts["conflict"],
    }
    if outcomes is None:
        result["committed"] = False  # the comparator reads them from Kafka and decides
        result["matched"] = result["waiting"] = None
        if good:
            result["note"] = KAFKA_NOTE
    else:
        result["matched"] = accepted - len(waiting)
        result["waiting"] = len(waiting)
        if waiting:
            result["waiting_ids"] = waiting[:MAX_WAITING_IDS]
        if waiting and accepted == len(waiting):
            result["hint"] = NONE_MATCHED_HINT
    if statuses:
        result["labels"] = statuses[:MAX_REPORTED_ERRORS]
    reasons = ["bad_record"] * len(bad) + [x["reason"] for x in statuses if "reason" in x]
    if bad or counts["refused"]:
        errors = [{"line": n, "reason": r} for n, r in bad[:MAX_REPORTED_ERRORS]]
        message = (
            f"{len(bad) + counts['refused']} bad or refused label record(s); "
            f"{result['accepted']} good one(s) were accepted"
        )
        return error(400, message, **result, errors=errors), reasons
    if counts["backlog"]:
        message = f"{counts['backlog']} label(s) refused: too many labels wait for their pair"
        return error(429, message, **result), reasons
    if not good:
        return error(400, "no label records in the body", **result), reasons
    return json_response(result, status=202), reasons
