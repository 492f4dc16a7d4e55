"""Assessment records (schema v1): what the judge and the embedding similarity said of one
pair, written by the comparator's assessor and scored by the engine (docs/records.md).

An assessment names its pair by request id, route, candidate and the candidate's revision id
(``core.revision.revision_id`` of both sides' identities), so the engine adds it to the same
evidence as the pair, in whatever order the two arrive. It is keyed (in Kafka) by its request
id, so it lands in its pair's partition.

>>> rec = AssessmentRecord("r1", "chat", "small", "0123456789ab", 5, judge="win",
...                        orders=("win", "win"), similarity=0.9)
>>> decode_assessment(encode_assessment(rec)) == rec
True
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from shadowroute.core.judging import JUDGE_RESULTS
from shadowroute.core.records import SCHEMA_VERSION, RecordError, is_valid_id, parse_record

__all__ = [
    "ASSESS_ERRORS",
    "EMBED_SKIPS",
    "MAX_EMBED_FIELDS",
    "MAX_EMBED_VALUES",
    "ORDER_RESULTS",
    "AssessmentRecord",
    "EmbedJob",
    "EmbeddingRecord",
    "decode_any",
    "decode_assessment",
    "decode_embedding",
    "encode_assessment",
    "encode_embedding",
]

ORDER_RESULTS: Final = ("win", "tie", "loss", "unparseable", "failed")
"""What one order's call may come to, seen from the candidate."""
ASSESS_ERRORS: Final = (
    "timeout",  # no complete answer within timeout_s
    "connect",  # the connection could not be made
    "http_4xx",  # the endpoint answered 4xx
    "http_5xx",  # the endpoint answered 5xx (or another non-2xx status)
    "bad_response",  # a 2xx answer that is not JSON or not of the OpenAI shape
)
"""Why a judge or embeddings call failed (the closed set of ``judge_error`` and
``similarity_error``)."""
EMBED_SKIPS: Final = ("rate_limited", "budget_exhausted", "circuit_open", "too_large")
"""Why an embedding drift call was not made (``error`` of an embedding record, besides
``ASSESS_ERRORS``)."""
MAX_EMBED_FIELDS: Final = 64
"""Fields at most in one embedding record."""
MAX_EMBED_TEXTS: Final = 1024
"""Texts (and vectors) at most per field of one embedding record (``max_items``' bound)."""
MAX_EMBED_DIMS: Final = 4096
"""Dimensions at most of a vector in an embedding record (``dims``' bound)."""
MAX_EMBED_VALUES: Final = 65_536
"""Numbers at most in one embedding record (about 650 kB of JSON: under Kafka's default
1 MB message); a request whose texts would need more is not sent (``too_large``)."""
_REVISION: Final = re.compile(r"^[0-9a-f]{12}$")
_MAX_CALLS: Final = 16


@dataclass(frozen=True, slots=True)
class AssessmentRecord:
    """One pair's assessment. ``judge``: the two orders combined (``win``, ``tie``,
    ``loss``, ``unparseable`` when an order's reply could not be parsed, ``failed`` when a
    call failed; None: not judged). ``orders``: each call's result in the order made.
    ``similarity``: cosine of the two answers' embeddings (None: not measured or failed)."""

    id: str
    route: str
    candidate: str
    revision: str
    ts: int
    judge: str | None = None
    orders: tuple[str, str] | None = None
    inconsistent: bool = False
    judge_error: str | None = None
    similarity: float | None = None
    similarity_error: str | None = None
    judge_calls: int = 0
    similarity_calls: int = 0


def encode_assessment(rec: AssessmentRecord) -> bytes:
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "kind": "assessment",
            "id": rec.id,
            "route": rec.route,
            "candidate": rec.candidate,
            "revision": rec.revision,
            "ts": rec.ts,
            "judge": rec.judge,
            "orders": None if rec.orders is None else list(rec.orders),
            "inconsistent": rec.inconsistent,
            "judge_error": rec.judge_error,
            "similarity": rec.similarity,
            "similarity_error": rec.similarity_error,
            "calls": {"judge": rec.judge_calls, "similarity": rec.similarity_calls},
        }
    )


def decode_assessment(value: bytes) -> AssessmentRecord:
    """Parse and validate an assessment record; raises ``RecordError`` with the reason."""
    obj = _versioned(value)
    if obj.get("kind", "assessment") != "assessment":
        raise RecordError("bad_value:kind")
    return _assessment(obj)


def _rid(obj: dict[str, Any]) -> str:
    rid = _req(obj, "id")
    if not is_valid_id(rid):
        raise RecordError("bad_type:id" if not isinstance(rid, str) else "bad_value:id")
    return str(rid)


def _assessment(obj: dict[str, Any]) -> AssessmentRecord:
    rid = _rid(obj)
    route, cand = _text(obj, "route"), _text(obj, "candidate")
    revision = _req(obj, "revision")
    if not isinstance(revision, str):
        raise RecordError("bad_type:revision")
    if not _REVISION.match(revision):
        raise RecordError("bad_value:revision")
    ts = _req(obj, "ts")
    if type(ts) is not int:
        raise RecordError("bad_type:ts")
    if not 0 <= ts < 1 << 63:
        raise RecordError("bad_value:ts")
    judge = _choice(obj, "judge", JUDGE_RESULTS)
    orders_v = obj.get("orders")
    orders: tuple[str, str] | None = None
    if orders_v is not None:
        if not isinstance(orders_v, list) or len(orders_v) != 2:
            raise RecordError("bad_type:orders")
        if not all(isinstance(o, str) and o in ORDER_RESULTS for o in orders_v):
            raise RecordError("bad_value:orders")
        orders = (orders_v[0], orders_v[1])
    if judge in ("win", "tie", "loss") and orders is None:
        raise RecordError("missing_field:orders")
    inconsistent = obj.get("inconsistent", False)
    if type(inconsistent) is not bool:
        raise RecordError("bad_type:inconsistent")
    sim = obj.get("similarity")
    if sim is not None:
        if not isinstance(sim, int | float) or isinstance(sim, bool):
            raise RecordError("bad_type:similarity")
        if not (math.isfinite(sim) and -1.0 <= sim <= 1.0):
            raise RecordError("bad_value:similarity")
        sim = float(sim)
    calls = obj.get("calls")
    if calls is None:
        calls = {}
    if not isinstance(calls, dict):
        raise RecordError("bad_type:calls")
    counts = []
    for kind in ("judge", "similarity"):
        n = calls.get(kind, 0)
        if type(n) is not int:
            raise RecordError(f"bad_type:calls.{kind}")
        if not 0 <= n <= _MAX_CALLS:
            raise RecordError(f"bad_value:calls.{kind}")
        counts.append(n)
    return AssessmentRecord(
        id=rid,
        route=route,
        candidate=cand,
        revision=revision,
        ts=ts,
        judge=judge,
        orders=orders,
        inconsistent=inconsistent,
        judge_error=_choice(obj, "judge_error", ASSESS_ERRORS),
        similarity=sim,
        similarity_error=_choice(obj, "similarity_error", ASSESS_ERRORS),
        judge_calls=counts[0],
        similarity_calls=counts[1],
    )


def _req(obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise RecordError(f"missing_field:{key}")
    return obj[key]


def _text(obj: dict[str, Any], key: str) -> str:
    value = _req(obj, key)
    if not isinstance(value, str) or not value:
        raise RecordError(f"bad_type:{key}")
    if len(value) > 256:
        raise RecordError(f"bad_value:{key}")
    return value


def _choice(obj: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"bad_type:{key}")
    if value not in allowed:
        raise RecordError(f"bad_value:{key}")
    return value


# --- embedding records: the vectors of embedding drift's endpoint (docs/records.md) ----------


@dataclass(frozen=True, slots=True)
class EmbedJob:
    """The texts of one request that embedding drift sends to its route's endpoint: per
    field (``embedding:<path>``, ``embedding:output``), in order. ``ts`` is the request's
    record time: its vectors go to the window of that time."""

    id: str
    route: str
    ts: int
    fields: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def texts(self) -> int:
        return sum(len(t) for _, t in self.fields)


@dataclass(frozen=True, slots=True)
class EmbeddingRecord:
    """What the endpoint gave for one request's texts: per field, the texts sent and their
    vectors (in order; none when the call failed or was skipped: ``error`` says why)."""

    id: str
    route: str
    ts: int
    fields: tuple[tuple[str, int, tuple[tuple[float, ...], ...]], ...]
    """(field name, texts sent, vectors)."""
    error: str | None = None
    calls: int = 0

    @classmethod
    def of(
        cls,
        job: EmbedJob,
        vectors: list[list[float]] | None,
        error: str | None = None,
        calls: int = 0,
    ) -> EmbeddingRecord:
        """The record of ``job``: ``vectors`` one per text of the job, in order (None: failed
        or skipped, ``error`` says why)."""
        out: list[tuple[str, int, tuple[tuple[float, ...], ...]]] = []
        at = 0
        for name, texts in job.fields:
            got: tuple[tuple[float, ...], ...] = ()
            if vectors is not None:
                got = tuple(tuple(v) for v in vectors[at : at + len(texts)])
            at += len(texts)
            out.append((name, len(texts), got))
        return cls(job.id, job.route, job.ts, tuple(out), error, calls)


def encode_embedding(rec: EmbeddingRecord) -> bytes:
    """Numbers rounded to 6 decimals (the engine uses unit vectors: an error below 1e-6 per
    component), which keeps a record of 16 texts × 1,024 dimensions under 200 kB."""
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "kind": "embedding",
            "id": rec.id,
            "route": rec.route,
            "ts": rec.ts,
            "fields": {
                name: {"texts": n, "vectors": [[round(x, 6) for x in v] for v in vectors]}
                for name, n, vectors in rec.fields
            },
            "error": rec.error,
            "calls": rec.calls,
        }
    )


def decode_any(value: bytes) -> AssessmentRecord | EmbeddingRecord:
    """A record of the assessments topic: an assessment or an embedding record (by
    ``kind``); raises ``RecordError`` with the reason."""
    obj = _versioned(value)
    kind = obj.get("kind", "assessment")
    if kind == "embedding":
        return _embedding(obj)
    if kind != "assessment":
        raise RecordError("bad_value:kind")
    return _assessment(obj)


def decode_embedding(value: bytes) -> EmbeddingRecord:
    """Parse and validate an embedding record; raises ``RecordError`` with the reason."""
    obj = _versioned(value)
    if obj.get("kind") != "embedding":
        raise RecordError("bad_value:kind")
    return _embedding(obj)


def _embedding(obj: dict[str, Any]) -> EmbeddingRecord:
    rid = _rid(obj)
    route = _text(obj, "route")
    ts = _req(obj, "ts")
    if type(ts) is not int:
        raise RecordError("bad_type:ts")
    if not 0 <= ts < 1 << 63:
        raise RecordError("bad_value:ts")
    error = _choice(obj, "error", (*ASSESS_ERRORS, *EMBED_SKIPS))
    calls = obj.get("calls", 0)
    if type(calls) is not int:
        raise RecordError("bad_type:calls")
    if not 0 <= calls <= _MAX_CALLS:
        raise RecordError("bad_value:calls")
    fields_v = _req(obj, "fields")
    if not isinstance(fields_v, dict):
        raise RecordError("bad_type:fields")
    if len(fields_v) > MAX_EMBED_FIELDS:
        raise RecordError("bad_value:fields")
    values = 0
    fields: list[tuple[str, int, tuple[tuple[float, ...], ...]]] = []
    for name, f in fields_v.items():
        if not name or len(name) > 256:
            raise RecordError("bad_value:fields")
        if not isinstance(f, dict):
            raise RecordError("bad_type:fields.field")
        n = f.get("texts")
        if type(n) is not int:
            raise RecordError("bad_type:fields.texts")
        if not 0 <= n <= MAX_EMBED_TEXTS:
            raise RecordError("bad_value:fields.texts")
        vecs = f.get("vectors", [])
        if not isinstance(vecs, list):
            raise RecordError("bad_type:fields.vectors")
        if len(vecs) > n or (error is not None and vecs):
            raise RecordError("bad_value:fields.vectors")
        rows: list[tuple[float, ...]] = []
        for v in vecs:
            if not isinstance(v, list) or not v:
                raise RecordError("bad_type:fields.vectors")
            if len(v) > MAX_EMBED_DIMS:
                raise RecordError("bad_value:fields.vectors")
            values += len(v)
            if values > MAX_EMBED_VALUES:
                raise RecordError("bad_value:fields.vectors")
            if not all(_finite(x) for x in v):
                raise RecordError("bad_value:fields.vectors")
            rows.append(tuple(float(x) for x in v))
        fields.append((name, n, tuple(rows)))
    return EmbeddingRecord(rid, route, ts, tuple(fields), error, calls)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _versioned(value: bytes) -> dict[str, Any]:
    obj = parse_record(value)
    if not isinstance(obj, dict):
        raise RecordError("bad_type:record")
    if "v" not in obj:
        raise RecordError("missing_field:v")
    v = obj["v"]
    if type(v) is not int:
        raise RecordError("bad_type:v")
    if v != SCHEMA_VERSION:
        raise RecordError("schema_version")
    return obj
