"""The assessor: judge and embedding calls for the pairs of routes that have them, in the
comparator's process, off the proxy's path (docs/llm.md).

``offer`` sees every pair record the comparator gets (embedded: from the in-process channel;
``shadowroute compare``: from the pairs topic) and keeps, without parsing it, a record whose
request id is in a sample (``core.judging.assess_sampled``); a bounded queue holds them for a
few workers (beyond ``max_queue`` the record is skipped and counted, ``queue_full``). A worker
parses the record, asks the judge (both orders at once) and the embeddings endpoint, within
each one's rate limit, budget, timeout and breaker, and hands the ``AssessmentRecord`` to
``emit``: the embedded comparator's buffer, or the assessments topic. A call that fails is
recorded as such and counted; nothing waits for it, and no other metric's verdict depends
on it.

Embedding drift with an endpoint (kind ``embedding_drift``): the engine selects, once per
request, the texts to embed and hands them on as ``EmbedJob``s once their batch is committed
(``offer_embedding``); a worker sends each request's texts in one ``/v1/embeddings`` call and
emits an ``EmbeddingRecord`` with the vectors (or the reason there are none) through the same
path as the assessments.

Counters per (route, kind) are ``stats()`` (served by the API and as Prometheus metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import orjson
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from shadowroute.comparator.reading import Pair, read_pair
from shadowroute.comparator.state import CAND, PROD_STATE, StateKey
from shadowroute.core.assessments import (
    MAX_EMBED_VALUES,
    AssessmentRecord,
    EmbeddingRecord,
    EmbedJob,
    encode_assessment,
    encode_embedding,
)
from shadowroute.core.config import Config, EmbeddingEndpoint, Judge, Route, Similarity
from shadowroute.core.families import Family, describe
from shadowroute.core.judging import (
    Breaker,
    Budget,
    Outcome,
    TokenBucket,
    assess_sampled,
    candidate_first,
    clip,
    combine,
    cosine,
    judge_messages,
    parse_verdict,
    prompt_text,
    seen_from_candidate,
)
from shadowroute.core.records import RecordError
from shadowroute.core.revision import revision_id

__all__ = [
    "KINDS",
    "Assessor",
    "AssessorCollector",
    "CallFailed",
    "KindStats",
    "calls_recorded",
    "needs_assessor",
]

log = logging.getLogger("shadowroute.assessor")

KINDS: Final = ("judge", "similarity", "embedding_drift")
_PAIR_KINDS: Final = ("judge", "similarity")
"""The kinds that assess pair records (``offer``); ``embedding_drift`` takes the engine's
jobs (``offer_embedding``)."""
MAX_REPLY_BYTES: Final = 1 << 20
"""Largest answer read from the judge or the embeddings endpoint (beyond: ``bad_response``)."""
MAX_DIMS: Final = 65_536
"""Most dimensions an embedding may have (more: ``bad_response``)."""

Emit = Callable[[Sequence[bytes]], Awaitable[None]]


class CallFailed(Exception):
    """A judge or embeddings call that gave no usable answer; ``reason`` is one of
    ``core.assessments.ASSESS_ERRORS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class KindStats:
    """What one route's judge (or similarity) did, since the process started."""

    sampled: int = 0
    """Pairs in its sample (candidate pairs of the route only)."""
    assessed: int = 0
    """Pairs it was asked about (calls made)."""
    calls: int = 0
    unparseable: int = 0
    """Judge replies that could not be parsed (per call)."""
    inconsistent: int = 0
    """Judged pairs whose two orders disagreed."""
    truncated: int = 0
    """Texts cut to ``max_chars``."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Pairs of the sample not assessed, by reason: ``rate_limited``, ``budget_exhausted``,
    ``circuit_open``, ``no_text`` (a side has no text answer), ``no_input`` (judge: the
    record carries no request)."""
    failures: Counter[str] = field(default_factory=Counter)
    """Failed calls by reason (``core.assessments.ASSESS_ERRORS``)."""


@dataclass
class _Limits:
    bucket: TokenBucket
    budget: Budget
    breaker: Breaker
    stats: KindStats = field(default_factory=KindStats)

    def admit(self, calls: int, now: float) -> str | None:
        """None when ``calls`` calls may be made now (tokens and budget spent), else why not."""
        if not self.breaker.allow(now):
            return "circuit_open"
        if not self.bucket.take(calls, now):
            self._undo_probe()
            return "rate_limited"
        if not self.budget.take(calls):
            self._undo_probe()
            return "budget_exhausted"
        return None

    def _undo_probe(self) -> None:
        self.breaker.probing = False


def needs_assessor(config: Config) -> bool:
    """Whether some route has a judge, a similarity or an embedding drift endpoint."""
    return any(
        r.judge is not None or r.similarity is not None or _endpoint(r) is not None
        for r in config.routes
    )


def _endpoint(route: Route) -> EmbeddingEndpoint | None:
    emb = route.drift.embedding
    return emb.endpoint if emb is not None else None


def calls_recorded(snapshot: Mapping[StateKey, Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """Calls recorded in the committed state, by (route, kind): what the budgets start from."""
    out: dict[tuple[str, str], int] = {}
    for key, state in snapshot.items():
        if key.kind == PROD_STATE:
            n = int((state.get("counts") or {}).get("embedding_drift_calls", 0))
            if n:
                k = (key.route, "embedding_drift")
                out[k] = out.get(k, 0) + n
            continue
        if key.kind != CAND:
            continue
        counts = state.get("counts") or {}
        for kind, name in (("judge", "judge_calls"), ("similarity", "embed_calls")):
            n = int(counts.get(name, 0))
            if n:
                out[(key.route, kind)] = out.get((key.route, kind), 0) + n
    return out


def _status_reason(status: int) -> str:
    return "http_4xx" if 400 <= status < 500 else "http_5xx"


class Assessor:
    """Judge and embedding calls for the configured routes; see the module docstring."""

    def __init__(
        self,
        config: Config,
        emit: Emit,
        *,
        spent: Mapping[tuple[str, str], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_queue: int = 1000,
    ) -> None:
        self.emit = emit
        self.clock = clock
        self.routes: dict[str, Route] = {
            r.name: r
            for r in config.routes
            if r.judge is not None or r.similarity is not None or _endpoint(r) is not None
        }
        spent = spent or {}
        self.limits: dict[tuple[str, str], _Limits] = {}
        self._dims_told: set[str] = set()
        """Routes whose endpoint answered vectors of another length than ``dims`` (told
        once in the log)."""
        for r in self.routes.values():
            parts = (("judge", r.judge), ("similarity", r.similarity), ("embedding_drift",
                     _endpoint(r)))  # fmt: skip
            for kind, part in parts:
                if part is None:
                    continue
                self.limits[(r.name, kind)] = _Limits(
                    TokenBucket(part.rate_per_s, max(2.0, part.rate_per_s)),
                    Budget(part.max_calls, spent.get((r.name, kind), 0)),
                    Breaker(part.breaker.failures, part.breaker.open_s),
                )
        self._fraction = {
            kind: max(
                (
                    p.sample_fraction
                    for r in self.routes.values()
                    if (p := r.judge if kind == "judge" else r.similarity) is not None
                ),
                default=0.0,
            )
            for kind in _PAIR_KINDS
        }
        judges = [r.judge.concurrency for r in self.routes.values() if r.judge is not None]
        self.workers = max(judges, default=4)
        self.max_queue = max_queue
        self.queue_full = 0
        """Sampled records skipped because the queue was full."""
        self.emit_failed = 0
        """Assessments that could not be handed on (logged)."""
        self._queue: asyncio.Queue[tuple[str, bytes] | EmbedJob] = asyncio.Queue(max_queue)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._tasks = [
                asyncio.create_task(self._work(), name=f"assessor-{i}") for i in range(self.workers)
            ]

    async def close(self, grace_s: float = 2.0) -> None:
        """Let queued work finish (``grace_s`` at most), then stop the workers: what is
        still queued or in flight is not assessed."""
        if self._session is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace_s)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self._session.close()
        self._session = None

    async def drain(self) -> None:
        """Until every record offered so far is assessed (and handed to ``emit``)."""
        await self._queue.join()

    # --- input ------------------------------------------------------------------------------

    def offer(self, batch: Sequence[tuple[bytes, bytes]]) -> None:
        """Pair records (key: the request id; value): keep those in a sample. Cheap: one
        hash of the key per kind, no parsing."""
        fj, fs = self._fraction["judge"], self._fraction["similarity"]
        for key, value in batch:
            rid = key.decode("ascii", "replace")
            if not (
                (fj > 0 and assess_sampled(rid, fj, "judge"))
                or (fs > 0 and assess_sampled(rid, fs, "similarity"))
            ):
                continue
            try:
                self._queue.put_nowait((rid, value))
            except asyncio.QueueFull:
                self.queue_full += 1

    def offer_embedding(self, jobs: Sequence[EmbedJob]) -> None:
        """Texts the engine selected for embedding drift's endpoints (committed batches):
        queued, or skipped and counted when the queue is full."""
        for job in jobs:
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:
                self.queue_full += 1

    # --- work -------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            rid = item.id if isinstance(item, EmbedJob) else item[0]
            try:
                out: bytes | None = None
                if isinstance(item, EmbedJob):
                    emb = await self.embed(item)
                    out = None if emb is None else encode_embedding(emb)
                else:
                    rec = await self.assess(rid, item[1])
                    out = None if rec is None else encode_assessment(rec)
                if out is not None:
                    try:
                        await self.emit([out])
                    except Exception:
                        self.emit_failed += 1
                        log.exception("could not hand on an assessment of %s", rid)
            except Exception:
                log.exception("assessing %s failed", rid)
            finally:
                self._queue.task_done()

    async def embed(self, job: EmbedJob) -> EmbeddingRecord | None:
        """One request's texts through its route's embeddings endpoint: the record with the
        vectors, or with the reason there are none (a failed or skipped call)."""
        route = self.routes.get(job.route)
        ep = _endpoint(route) if route is not None else None
        if route is None or ep is None or route.drift.embedding is None:
            return None  # a route reloaded away meanwhile
        dims = route.drift.embedding.dims
        lim = self.limits[(route.name, "embedding_drift")]
        st = lim.stats
        st.sampled += 1
        texts = [t for _, ts in job.fields for t in ts]
        why = "too_large" if len(texts) * dims > MAX_EMBED_VALUES else None
        why = why or lim.admit(1, self.clock())
        if why is not None:
            st.skipped[why] += 1
            return EmbeddingRecord.of(job, None, why)
        st.assessed += 1
        st.calls += 1
        sent = []
        for t in texts:
            c, cut = clip(t, ep.max_chars)
            st.truncated += cut
            sent.append(c)
        try:
            doc = await self._post(ep, "/v1/embeddings", {"model": ep.model, "input": sent})
            vectors = _vectors(doc, len(sent))
            if vectors is None:
                raise CallFailed("bad_response")
            if any(len(v) != dims for v in vectors):
                self._tell_dims(route.name, dims, len(vectors[0]))
                raise CallFailed("bad_response")
        except CallFailed as exc:
            lim.breaker.failure(self.clock())
            st.failures[exc.reason] += 1
            return EmbeddingRecord.of(job, None, exc.reason, calls=1)
        lim.breaker.success()
        return EmbeddingRecord.of(job, vectors, calls=1)

    def _tell_dims(self, route: str, dims: int, got: int) -> None:
        if route in self._dims_told:
            return
        self._dims_told.add(route)
        log.error(
            "route %r: the embeddings endpoint answered %d-dimensional vectors but "
            "routes[].drift.embedding.dims is %d: set dims to the model's dimension; until "
            "then its answers are counted as bad_response and not added",
            route,
            got,
            dims,
        )

    async def assess(self, rid: str, value: bytes) -> AssessmentRecord | None:
        """One pair record's assessment, or None when nothing was asked about it."""
        try:
            pair = read_pair(value)
        except RecordError:
            return None  # the engine dead-letters it
        route = self.routes.get(pair.route)
        if route is None or pair.candidate is None:
            return None
        judge, sim = route.judge, route.similarity
        do_judge = judge is not None and assess_sampled(rid, judge.sample_fraction, "judge")
        do_sim = sim is not None and assess_sampled(rid, sim.sample_fraction, "similarity")
        if not (do_judge or do_sim):
            return None
        texts = _texts(pair)
        now = self.clock()
        jobs: dict[str, Awaitable[Any]] = {}
        if judge is not None and do_judge:
            lim = self.limits[(route.name, "judge")]
            lim.stats.sampled += 1
            why = (
                "no_text" if texts is None else ("no_input" if pair.input is None else None)
            ) or lim.admit(2, now)
            if why is not None:
                lim.stats.skipped[why] += 1
            else:
                assert texts is not None
                jobs["judge"] = self._judge(judge, lim, rid, pair.input, *texts)
        if sim is not None and do_sim:
            lim = self.limits[(route.name, "similarity")]
            lim.stats.sampled += 1
            why = ("no_text" if texts is None else None) or lim.admit(1, now)
            if why is not None:
                lim.stats.skipped[why] += 1
            else:
                assert texts is not None
                jobs["similarity"] = self._similarity(sim, lim, *texts)
        if not jobs:
            return None
        results = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
        rec = AssessmentRecord(
            id=pair.id,
            route=pair.route,
            candidate=pair.candidate,
            revision=revision_id(pair.cand_ident, pair.prod_ident),
            ts=pair.ts,
        )
        fields: dict[str, Any] = {}
        if "judge" in results:
            fields.update(results["judge"])
            fields["judge_calls"] = 2
        if "similarity" in results:
            fields.update(results["similarity"])
            fields["similarity_calls"] = 1
        return _with(rec, fields)

    async def _judge(
        self, j: Judge, lim: _Limits, rid: str, doc: Any, prod: str, cand: str
    ) -> dict[str, Any]:
        st = lim.stats
        st.assessed += 1
        st.calls += 2
        request, cut = prompt_text(doc, j.max_chars)
        p, cut_p = clip(prod, j.max_chars)
        c, cut_c = clip(cand, j.max_chars)
        st.truncated += cut + cut_p + cut_c
        cand_a = candidate_first(rid)
        first = judge_messages(j.rubric, request, c if cand_a else p, p if cand_a else c)
        second = judge_messages(j.rubric, request, p if cand_a else c, c if cand_a else p)
        got = await asyncio.gather(
            self._one_order(j, first, cand_a), self._one_order(j, second, not cand_a)
        )
        errors = [e for _, e in got if e is not None]
        orders = (got[0][0], got[1][0])
        out: dict[str, Any] = {"orders": orders}
        if errors:
            lim.breaker.failure(self.clock())
            for e in errors:
                st.failures[e] += 1
            out |= {"judge": "failed", "judge_error": errors[0]}
            return out
        lim.breaker.success()
        st.unparseable += sum(1 for o in orders if o == "unparseable")
        if "unparseable" in orders:
            out["judge"] = "unparseable"
            return out
        result, inconsistent = combine(_outcome(orders[0]), _outcome(orders[1]))
        st.inconsistent += inconsistent
        return out | {"judge": result, "inconsistent": inconsistent}

    async def _one_order(
        self, j: Judge, messages: list[dict[str, str]], cand_is_a: bool
    ) -> tuple[str, str | None]:
        """One call: (the result seen from the candidate, or ``unparseable`` / ``failed``;
        the failure's reason)."""
        body = {"model": j.model, "messages": messages, "temperature": 0}
        try:
            doc = await self._post(j, "/v1/chat/completions", body)
        except CallFailed as exc:
            return "failed", exc.reason
        reply = _chat_content(doc)
        if reply is None:
            return "failed", "bad_response"
        verdict = parse_verdict(reply)
        if verdict is None:
            return "unparseable", None
        return seen_from_candidate(verdict, cand_is_a), None

    async def _similarity(
        self, s: Similarity, lim: _Limits, prod: str, cand: str
    ) -> dict[str, Any]:
        st = lim.stats
        st.assessed += 1
        st.calls += 1
        p, cut_p = clip(prod, s.max_chars)
        c, cut_c = clip(cand, s.max_chars)
        st.truncated += cut_p + cut_c
        try:
            doc = await self._post(s, "/v1/embeddings", {"model": s.model, "input": [p, c]})
            vectors = _embeddings(doc)
            sim = cosine(*vectors) if vectors is not None else None
            if sim is None:
                raise CallFailed("bad_response")
        except CallFailed as exc:
            lim.breaker.failure(self.clock())
            st.failures[exc.reason] += 1
            return {"similarity_error": exc.reason}
        lim.breaker.success()
        return {"similarity": sim}

    async def _post(
        self, part: Judge | Similarity | EmbeddingEndpoint, path: str, body: dict[str, Any]
    ) -> Any:
        """POST ``body`` to the endpoint; its JSON answer, or ``CallFailed``."""
        assert self._session is not None, "start() first"
        url = part.url.rstrip("/") + path
        headers = {**part.headers, **part.secret_header_values()}
        timeout = aiohttp.ClientTimeout(total=part.timeout_s)
        try:
            async with self._session.post(
                url, data=orjson.dumps(body), headers={"content-type": "application/json",
                **headers}, timeout=timeout,
            ) as resp:  # fmt: skip
                if not 200 <= resp.status < 300:
                    raise CallFailed(_status_reason(resp.status))
                raw = await resp.content.read(MAX_REPLY_BYTES + 1)
                if len(raw) > MAX_REPLY_BYTES:
                    raise CallFailed("bad_response")
        except TimeoutError:
            raise CallFailed("timeout") from None
        except aiohttp.ClientResponseError:
            raise CallFailed("bad_response") from None
        except aiohttp.ClientError:
            raise CallFailed("connect") from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CallFailed("bad_response") from None

    # --- reading ----------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per route and kind: the counters, the budget left and the breaker's state."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (route, kind), lim in sorted(self.limits.items()):
            st = lim.stats
            out.setdefault(route, {})[kind] = {
                "sampled": st.sampled,
                "assessed": st.assessed,
                "calls": st.calls,
                "unparseable": st.unparseable,
                "inconsistent": st.inconsistent,
                "truncated": st.truncated,
                "skipped": dict(sorted(st.skipped.items())),
                "failures": dict(sorted(st.failures.items())),
                "budget": lim.budget.limit,
                "budget_spent": lim.budget.spent,
                "budget_left": lim.budget.left,
                "breaker": lim.breaker.state,
                "breaker_opened": lim.breaker.opened,
            }
        return out


_RK: Final = ("route", "kind")


class AssessorCollector(Collector):
    """The assessor's counters (process-local: since this process started; the budget
    counts the calls recorded before it) as Prometheus metric families."""

    FAMILIES = (
        Family(
            "shadowroute_assess_sampled",
            "Candidate pairs in the judge's or the similarity's sample (embedding_drift: "
            "requests with texts to embed).",
            "counter",
            _RK,
        ),
        Family("shadowroute_assess_calls", "Judge or embeddings calls made.", "counter", _RK),
        Family(
            "shadowroute_assess_skipped",
            "Sampled pairs (or requests) not assessed, by reason (rate_limited, "
            "budget_exhausted, circuit_open, no_text, no_input, too_large).",
            "counter",
            (*_RK, "reason"),
        ),
        Family(
            "shadowroute_assess_failures",
            "Failed judge or embeddings calls, by reason.",
            "counter",
            (*_RK, "reason"),
        ),
        Family(
            "shadowroute_assess_unparseable",
            "Judge replies that could not be parsed.",
            "counter",
            _RK,
        ),
        Family(
            "shadowroute_assess_truncated",
            "Texts cut to max_chars before they were sent.",
            "counter",
            _RK,
        ),
        Family(
            "shadowroute_assess_budget_left",
            "Calls left in the budget (max_calls; absent without a limit).",
            "gauge",
            _RK,
        ),
        Family(
            "shadowroute_assess_circuit_open",
            "1 while the judge's or the similarity's breaker is open.",
            "gauge",
            _RK,
        ),
        Family(
            "shadowroute_assess_queue_full",
            "Sampled pair records skipped because the assessor's queue was full.",
            "counter",
        ),
    )

    def __init__(self, assessor: Assessor) -> None:
        self._assessor = assessor

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        f = self.FAMILIES
        sampled, calls, skipped, failures = (
            f[0].counter(),
            f[1].counter(),
            f[2].counter(),
            f[3].counter(),
        )
        unparseable, truncated = f[4].counter(), f[5].counter()
        budget, circuit = f[6].gauge(), f[7].gauge()
        for route, kinds in self._assessor.stats().items():
            for kind, st in kinds.items():
                lab = [route, kind]
                sampled.add_metric(lab, st["sampled"])
                calls.add_metric(lab, st["calls"])
                unparseable.add_metric(lab, st["unparseable"])
                truncated.add_metric(lab, st["truncated"])
                for reason, n in st["skipped"].items():
                    skipped.add_metric([*lab, reason], n)
                for reason, n in st["failures"].items():
                    failures.add_metric([*lab, reason], n)
                if st["budget_left"] is not None:
                    budget.add_metric(lab, st["budget_left"])
                circuit.add_metric(lab, 0.0 if st["breaker"] == "closed" else 1.0)
        yield from (sampled, calls, skipped, failures, unparseable, truncated, budget, circuit)
        yield f[8].counter(self._assessor.queue_full)


def _texts(pair: Pair) -> tuple[str, str] | None:
    """(production's, the candidate's) answer: the first instance of each, when both are
    text."""
    po, co = pair.prod_output, pair.cand_output
    if not po or not co:
        return None
    p, c = po[0], co[0]
    if not isinstance(p, str) or not isinstance(c, str):
        return None
    return p, c


def _outcome(result: str) -> Outcome:
    assert result in ("win", "tie", "loss")
    return "win" if result == "win" else ("tie" if result == "tie" else "loss")


def _chat_content(doc: Any) -> str | None:
    """``choices[0].message.content`` of a chat completion, when it is a string."""
    if not isinstance(doc, dict):
        return None
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    return content if isinstance(content, str) else None


def _embeddings(doc: Any) -> tuple[list[float], list[float]] | None:
    """The two vectors of an embeddings answer (``data[].embedding``, by ``index``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        return None
    data = doc["data"]
    if len(data) != 2 or not all(isinstance(d, dict) for d in data):
        return None
    items = sorted(data, key=lambda d: d.get("index", 0) if type(d.get("index")) is int else 0)
    vecs: list[list[float]] = []
    for d in items:
        v = d.get("embedding")
        if not isinstance(v, list) or not 0 < len(v) <= MAX_DIMS:
            return None
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            return None
        vecs.append([float(x) for x in v])
    return vecs[0], vecs[1]


def _vectors(doc: Any, n: int) -> list[list[float]] | None:
    """The ``n`` vectors of an embeddings answer (``data[].embedding``, ordered by ``index``,
    which must be 0..n-1), all of one length, finite numbers; None for anything else."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        return None
    data = doc["data"]
    if len(data) != n or not all(isinstance(d, dict) for d in data):
        return None
    if [d.get("index", i) for i, d in enumerate(data)] != list(range(n)):
        items = sorted(data, key=lambda d: d.get("index") if type(d.get("index")) is int else -1)
        if [d.get("index") for d in items] != list(range(n)):
            return None
        data = items
    out: list[list[float]] = []
    for d in data:
        v = d.get("embedding")
        if not isinstance(v, list) or not 0 < len(v) <= MAX_DIMS:
            return None
        if out and len(v) != len(out[0]):
            return None
        if not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v
        ):
            return None
        out.append([float(x) for x in v])
    return out


def _with(rec: AssessmentRecord, fields: Mapping[str, Any]) -> AssessmentRecord:
    from dataclasses import replace

    return replace(rec, **fields)
