"""Deploy gate endpoints ``/v1/gates/…``: the decision for the revision a deploy tool asks
about, in the shape the tool reads (``comparator.gates`` decides status and body).

- ``GET /v1/gates/argo/{route}/{candidate}?revision=R`` (Argo Rollouts / Kargo web metric)
- ``GET /v1/gates/spinnaker/{route}/{candidate}?revision=R`` (Spinnaker webhook stage)
- ``GET /v1/gates/check/{route}/{candidate}?revision=R`` (CI: 200 promote, 412 otherwise)
- ``POST /v1/gates/flagger/{route}/{candidate}/{hook}`` (Flagger webhooks; the revision is
  the payload's ``metadata.revision`` or ``checksum``)

Bad input is a 4xx that says what is wrong: unknown route, candidate or hook 404, missing or
unusable revision and malformed Flagger payloads 400, a payload over ``MAX_FLAGGER_BODY`` 413.
Every answer is counted in ``shadowroute_gate_requests_total{gate, outcome}``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

import orjson
from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from shadowroute.api.app import GUARD, error, json_response
from shadowroute.comparator.documents import FlaggerCall
from shadowroute.comparator.gates import (
    FLAGGER_HOOKS,
    GateInputError,
    check_revision,
    flagger_request,
    gate,
)
from shadowroute.comparator.reader import NotFound, ScoresReader
from shadowroute.core.families import Family, describe

__all__ = ["MAX_FLAGGER_BODY", "GateCounts", "GatesCollector", "gate_routes"]

_GATE_REQUESTS = Family(
    "shadowroute_gate_requests",
    "Deploy gate answers by gate (argo, spinnaker, check, flagger-<hook>) and outcome "
    "(pass, fail, hold; bad_request and not_found for refused requests).",
    "counter",
    ("gate", "outcome"),
)
MAX_FLAGGER_BODY: Final = 64 << 10
"""The largest Flagger payload a gate reads (bytes); a larger one is a 413."""
OUTCOMES = ("pass", "fail", "hold", "bad_request", "not_found")

Handler = Callable[[web.Request], Awaitable[web.Response]]


class GateCounts:
    """Gate answers by (gate, outcome): pass, fail, hold, bad_request, not_found."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, kind: str, outcome: str) -> None:
        self.counts[(kind, outcome)] += 1


class GatesCollector(Collector):
    def __init__(self, counts: GateCounts) -> None:
        self._counts = counts

    FAMILIES = (_GATE_REQUESTS,)

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        fam = _GATE_REQUESTS.counter()
        for (kind, outcome), n in sorted(self._counts.counts.items()):
            fam.add_metric([kind, outcome], n)
        yield fam


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def gate_routes(reader: ScoresReader, counts: GateCounts) -> list[web.RouteDef]:
    """The gate endpoints, answered from ``reader``'s decisions."""

    def answer(
        kind: str, route: str, cand: str, revision: str, flagger: FlaggerCall | None = None
    ) -> web.Response:
        try:
            decision = reader.decision(route, cand)
        except NotFound as exc:
            counts.add(kind, "not_found")
            return error(404, str(exc))
        status, body = gate(decision, revision, kind)
        counts.add(kind, body["outcome"])
        if flagger is not None:
            body["flagger"] = flagger
        return json_response(body, status=status)

    def by_query(kind: str) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                revision = check_revision(request.query.get("revision"))
            except GateInputError as exc:
                counts.add(kind, "bad_request")
                return error(400, str(exc))
            info = request.match_info
            return answer(kind, info["route"], info["candidate"], revision)

        return handle

    async def flagger(request: web.Request) -> web.Response:
        hook = request.match_info["hook"]
        kind = f"flagger-{hook}"
        if hook not in FLAGGER_HOOKS:
            counts.add("flagger", "not_found")
            return error(404, f"unknown Flagger hook {hook!r}: one of {', '.join(FLAGGER_HOOKS)}")
        guard = request.app[GUARD]
        if guard.read_tokens and not guard.read_allowed(request.headers.get("Authorization", "")):
            # a gate is a read: with admin.read_token set it needs the token like GET does
            resp = error(401, "missing or wrong bearer token")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="shadowroute"'
            return resp
        if request.content_length is not None and request.content_length > MAX_FLAGGER_BODY:
            counts.add(kind, "bad_request")
            return error(413, f"Flagger payload over {MAX_FLAGGER_BODY} bytes")
        raw = await _read_bounded(request, MAX_FLAGGER_BODY)
        if raw is None:
            counts.add(kind, "bad_request")
            return error(413, f"Flagger payload over {MAX_FLAGGER_BODY} bytes")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            counts.add(kind, "bad_request")
            return error(400, f"Flagger payload is not JSON: {exc}")
        try:
            req = flagger_request(doc)
        except GateInputError as exc:
            counts.add(kind, "bad_request")
            return error(400, str(exc))
        info = request.match_info
        asked: FlaggerCall = {
            "name": req["name"],
            "namespace": req["namespace"],
            "phase": req["phase"],
            "checksum": req["checksum"],
        }
        return answer(kind, info["route"], info["candidate"], req["revision"], asked)

    base = "/{route}/{candidate}"
    return [
        web.get(f"/v1/gates/argo{base}", by_query("argo")),
        web.get(f"/v1/gates/spinnaker{base}", by_query("spinnaker")),
        web.get(f"/v1/gates/check{base}", by_query("check")),
        web.post(f"/v1/gates/flagger{base}/{{hook}}", flagger),
    ]
