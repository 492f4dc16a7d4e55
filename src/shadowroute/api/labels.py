"""``POST /v1/labels``: ground truth intake.

The body is a JSON array, JSON lines or CSV (by Content-Type, sniffed when absent). Good
records are always accepted and written, even when other lines are bad: the answer is 202
when every line was good, and 400 naming each bad line (with the count that was accepted)
otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from shadowroute.api.app import check_token, error, json_response
from shadowroute.core.records import (
    LabelRecord,
    encode_label,
    label_partition_key,
    parse_label_batch,
)
from shadowroute.stream.sink import Sink

MAX_REPORTED_ERRORS = 1000


class LabelWriter(Protocol):
    async def write_labels(self, labels: Sequence[LabelRecord]) -> None: ...


class SinkLabelWriter:
    """Labels to a record sink (the Kafka labels topic), keyed by request id so that a label
    lands in its pair's partition (``X`` for an instance label ``X#i``)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def write_labels(self, labels: Sequence[LabelRecord]) -> None:
        await self.sink.write([(label_partition_key(lab.id), encode_label(lab)) for lab in labels])


def label_routes(writer: LabelWriter) -> list[web.RouteDef]:
    async def post_labels(request: web.Request) -> web.Response:
        denied = check_token(request)
        if denied is not None:
            return denied
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, "label batch too large; send it in several requests")
        now_ms = int(time.time() * 1000)
        good, bad = parse_label_batch(body, request.headers.get("Content-Type"), now_ms)
        if good:
            await writer.write_labels(good)
        result = {"accepted": len(good), "rejected": len(bad)}
        if not bad:
            if not good:
                return error(400, "no label records in the body", **result)
            return json_response(result, status=202)
        errors = [{"line": n, "reason": r} for n, r in bad[:MAX_REPORTED_ERRORS]]
        return error(
            400,
            f"{len(bad)} bad label record(s); {len(good)} good one(s) were accepted",
            **result,
            errors=errors,
        )

    return [web.post("/v1/labels", post_labels)]
