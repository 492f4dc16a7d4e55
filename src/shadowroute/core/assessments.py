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
    "ORDER_RESULTS",
    "AssessmentRecord",
    "decode_assessment",
    "encode_assessment",
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
    if obj.get("kind", "assessment") != "assessment":
        raise RecordError("bad_value:kind")
    rid = _req(obj, "id")
    if not is_valid_id(rid):
        raise RecordError("bad_type:id" if not isinstance(rid, str) else "bad_value:id")
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
