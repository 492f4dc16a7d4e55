"""Pairing production and candidate outcomes into records, after the client has its answer.

A ``Pairing`` is made for each mirrored request. Whichever side finishes last completes the
pair; the pair is queued, and a timer ``BUILD_INTERVAL_S`` after the first queued pair extracts
the predictions, encodes the records and puts them on the record queue in one batch. Nothing
here runs before the client's response has been written.

Building a few milliseconds' worth of records at once, rather than once per turn of the event
loop, keeps the per-batch costs (a callback, waking the queue's pump, the sink's write) off each
request; a batch at the proxy's full rate takes a few hundred microseconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from typing import Any, Final

import orjson

from shadowroute.core.config import Route
from shadowroute.core.extraction import ExtractError, extract, over_json_values
from shadowroute.core.llm_timing import llm_facts, prompt_chars
from shadowroute.core.records import encode_pair_fields, redact_input, side_fields
from shadowroute.dataplane.stats import DataPlaneStats
from shadowroute.dataplane.upstream import Outcome
from shadowroute.stream.queue import RecordQueue

log = logging.getLogger("shadowroute.recorder")

BUILD_INTERVAL_S: Final = 0.002
_TOO_MANY: Final[Any] = object()  # ``Recorder._input``: the body holds more instances than allowed


def _ms3(ms: float) -> float:
    """A latency (>= 0) to the microsecond, as ``round(ms, 3)`` but without its decimal
    conversion (a tie may go the other way in the last digit).

    >>> _ms3(0.0142), _ms3(12.3456789), _ms3(0.0)
    (0.014, 12.346, 0.0)
    """
    return math.floor(ms * 1000.0 + 0.5) / 1000.0


def instance_count(obj: object, cap: int) -> int:
    """How many instances a request body holds: the rows of its ``instances`` or ``inputs``
    list (or of an Open Inference tensor's ``data``), or of a top-level list; counting stops
    once past ``cap``.

    >>> instance_count({"instances": [[1], [2]]}, 10), instance_count([1, 2, 3], 10)
    (2, 3)
    >>> instance_count({"inputs": [{"name": "x", "data": [1] * 50}]}, 10)
    50
    """
    if isinstance(obj, list):
        return len(obj)
    if not isinstance(obj, dict):
        return 1
    n = 1
    for key in ("instances", "inputs"):
        rows = obj.get(key)
        if isinstance(rows, list):
            n = max(n, len(rows))
            if n > cap:
                return n
            for row in rows:
                data = row.get("data") if isinstance(row, dict) else None
                if isinstance(data, list):
                    n = max(n, len(data))
        elif isinstance(rows, dict):
            for data in rows.values():
                if isinstance(data, list):
                    n = max(n, len(data))
    return n


class Pairing:
    __slots__ = (
        "_prompt_len",
        "_side",
        "expected",
        "input",
        "monitor",
        "production",
        "prompt",
        "recorder",
        "request_id",
        "route",
        "ts_ms",
        "waiting",
    )

    def __init__(
        self,
        recorder: Recorder,
        route: Route,
        request_id: bytes,
        ts_ms: int,
        body: bytes | None,
        *,
        monitor: bool = False,
    ) -> None:
        self.recorder = recorder
        self.monitor = monitor
        self.expected = 0  # pair records this request will yield
        self.route = route
        self.request_id = request_id
        self.ts_ms = ts_ms
        self.input = body
        self.production: Outcome | None = None
        self.waiting: list[Outcome] = []
        self._side: dict[str, Any] | None = None
        self.prompt: bytes | None = None
        self._prompt_len: int | None = None
        """``openai`` routes: the request body, for the tokens in when an answer has no
        ``usage`` (read off the client's path, by the recorder)."""

    def production_done(self, outcome: Outcome) -> None:
        self.production = outcome
        if self.monitor and self.expected == 0:
            # A pair record carries production's side too; the production-only record is
            # for monitored requests that yield none (not sampled for any candidate).
            self.recorder.submit(self, None)
        for cand in self.waiting:
            self.recorder.submit(self, cand)
        self.waiting.clear()

    def candidate_done(self, outcome: Outcome) -> None:
        if self.production is None:
            self.waiting.append(outcome)
        else:
            self.recorder.submit(self, outcome)

    def production_side(self) -> dict[str, Any]:
        if self._side is None:
            assert self.production is not None
            prod = self.production
            prompt = self.prompt_len() if prod.times is not None else None
            self._side = self.recorder.side(self.route, prod, prompt)
        return self._side

    def prompt_len(self) -> int | None:
        """Characters of the prompt (``llm_timing.prompt_chars``), read once per request."""
        prompt = self.prompt
        if prompt is not None:
            self.prompt = None
            rec = self.recorder
            if len(prompt) > rec.max_body or over_json_values(prompt, rec.max_values):
                rec.stats.limits["prompt_too_large"] += 1  # not parsed: it would hold the loop up
            else:
                self._prompt_len = prompt_chars(prompt)
        return self._prompt_len


class Recorder:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: RecordQueue,
        stats: DataPlaneStats,
        hash_salt: bytes = b"shadowroute",
        *,
        max_body: int = 1 << 20,
        max_predictions: int = 10_000,
        max_instances: int = 10_000,
        max_values: int = 100_000,
    ) -> None:
        self.loop = loop
        self.max_body = max_body  # answers larger are not parsed (``too_large``)
        self.max_predictions = max_predictions
        self.max_instances = max_instances
        self.max_values = max_values
        self.queue = queue
        self.stats = stats
        self.salt = hash_salt
        self._pending: deque[tuple[Pairing, Outcome | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.build_failed = 0
        """Records lost because they could not be built (a record bug): counted as dropped."""
        self._stamps: dict[tuple[str, str], tuple[str, str | None]] = {}
        # The same, by route and then model: a side looks its stamp up without a key tuple.
        self._stamps_by_route: dict[str, dict[str, tuple[str, str | None]]] = {}

    @property
    def stamps(self) -> dict[tuple[str, str], tuple[str, str | None]]:
        """(url, revision) written into each side, by (route, model): the model's revision
        identity with its version (``core.revision``); the data plane keeps it current by
        assigning a new mapping."""
        return self._stamps

    @stamps.setter
    def stamps(self, value: dict[tuple[str, str], tuple[str, str | None]]) -> None:
        by_route: dict[str, dict[str, tuple[str, str | None]]] = {}
        for (route, model), stamp in value.items():
            by_route.setdefault(route, {})[model] = stamp
        self._stamps = value
        self._stamps_by_route = by_route

    @property
    def pending(self) -> int:
        """Pairs submitted and not yet built into records."""
        return len(self._pending)

    def submit(self, pairing: Pairing, candidate: Outcome | None) -> None:
        """Queue a pair record, or a production-only record when ``candidate`` is None."""
        self._pending.append((pairing, candidate))
        if self._timer is None:
            self._timer = self.loop.call_later(BUILD_INTERVAL_S, self.flush)

    def flush(self) -> None:
        """Build and queue the records of every pair submitted so far."""
        timer = self._timer
        if timer is not None:
            timer.cancel()  # a no-op when the timer is what called us
            self._timer = None
        pending = self._pending
        while pending:
            pairing, cand = pending.popleft()
            try:
                self._emit(pairing, cand)
            except Exception:  # a record bug must never reach the data plane
                self.build_failed += 1
                log.exception("could not build a pair record for route %s", pairing.route.name)

    def _emit(self, pairing: Pairing, cand: Outcome | None) -> None:
        route = pairing.route
        prod = pairing.production_side()
        if cand is None:
            cand_side = None
        else:
            prompt = pairing.prompt_len() if cand.times is not None else None
            cand_side = self.side(route, cand, prompt)
        inp = self._input(route, pairing.input)
        if inp is _TOO_MANY:  # the request's instances are over the cap: nothing of it kept
            inp, prod = None, {**prod, "output": None, "error": "too_large"}
            if cand_side is not None:
                cand_side = {**cand_side, "output": None, "error": "too_large"}
        rid = pairing.request_id.decode("ascii")
        try:
            record = encode_pair_fields(rid, route.name, pairing.ts_ms, prod, cand_side, inp)
        except ValueError:
            if inp is None:
                raise
            # The captured input cannot be encoded (nested deeper than orjson goes): the
            # record is kept without it.
            self.stats.limits["input_unencodable"] += 1
            record = encode_pair_fields(rid, route.name, pairing.ts_ms, prod, cand_side, None)
        self.stats.records_built += 1
        self.queue.put(pairing.request_id, record)

    def side(self, route: Route, o: Outcome, prompt_len: int | None = None) -> dict[str, Any]:
        """One side of the pair record (``records.side_fields``), its prediction extracted;
        on ``openai`` routes with a prediction, its streaming facts (``llm_timing``)."""
        output = None
        error = o.error
        if error is None and o.body is not None and len(o.body) > self.max_body:
            error = "too_large"  # parsing it would hold the event loop up
            self.stats.limits["extract_too_large"] += 1
        elif error is None and o.body is not None:
            try:
                output = extract(
                    route,
                    o.body,
                    o.content_encoding.decode("latin-1") if o.content_encoding else None,
                    o.content_type.decode("latin-1") if o.content_type else None,
                    self.max_values,
                )
            except ExtractError as exc:
                if exc.reason == "too_large":  # not parsed: it would hold the event loop up
                    error = "too_large"
                    self.stats.limits["extract_too_large"] += 1
                else:
                    error = "extract_failed"
                    self.stats.extract_failed += 1
                    log.debug("extraction failed for %s/%s: %s", route.name, o.model, exc.reason)
            else:
                if len(output) > self.max_predictions:
                    output, error = None, "too_large"
                    self.stats.limits["predictions_too_large"] += 1
                else:
                    for item in output:
                        if item is not None:
                            break
                    else:  # no instance, or only NaN / infinite ones: no prediction
                        output = None
                        error = "no_prediction"
        models = self._stamps_by_route.get(route.name)
        stamp = None if models is None else models.get(o.model)
        if stamp is None:
            url = revision = None
        else:
            url, revision = stamp
        latency = None if o.latency_ms is None else _ms3(o.latency_ms)
        llm = None
        if o.times is not None and error is None and output is not None and o.body is not None:
            llm = llm_facts(
                o.body,
                o.content_type.decode("latin-1") if o.content_type else None,
                o.content_encoding.decode("latin-1") if o.content_encoding else None,
                o.times,
                latency,
                prompt_len,
            )
        return side_fields(o.model, o.version, o.status, latency, output, error, url, revision, llm)

    def _input(self, route: Route, body: bytes | None) -> Any:
        """The record's ``input``: the request body, redacted. The proxy passes the body only
        for routes that capture input or watch drift (``RouteRuntime.needs_input``)."""
        if body is None:
            return None
        if over_json_values(body, self.max_values):
            # Parsing it would hold the event loop up: the record goes without its input.
            self.stats.limits["input_too_large"] += 1
            return None
        try:
            obj: object = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if instance_count(obj, self.max_instances) > self.max_instances:
            self.stats.limits["instances_too_large"] += 1
            return _TOO_MANY
        return redact_input(obj, route.capture.drop_fields, route.capture.hash_fields, self.salt)
