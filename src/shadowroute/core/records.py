"""Record schema version 1: pair records and label records (``docs/records.md``).

A pair record is one (request, candidate) comparison, written by the proxy:

>>> side = Side(model="fraud-v7", version="7", status=200, latency_ms=4.1, output=[1], error=None)
>>> value = encode_pair(request_id="9f1c", route="fraud", ts_ms=1764100000123,
...                     production=side, candidate=side, input=None)
>>> decode_pair(value).production.output
[1]

A label record is ground truth for one request, written by anyone:

>>> decode_label({"id": "9f1c", "label": 1, "ts": 1764100300000})
LabelRecord(id='9f1c', label=1, ts=1764100300000, route=None)

Decoders raise ``RecordError`` whose ``reason`` is ``unparseable``, ``schema_version``,
``missing_field:<name>``, ``bad_type:<name>`` or ``bad_value:<name>``. The JSON Schemas in
``shadowroute/schemas/`` describe exactly what the encoders write and the decoders accept.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "ERRORS",
    "LLM_KEYS",
    "MAX_REVISION",
    "MAX_URL",
    "SCHEMA_VERSION",
    "LabelRecord",
    "PairRecord",
    "RecordError",
    "Side",
    "decode_label",
    "decode_pair",
    "encode_label",
    "encode_pair",
    "is_valid_id",
    "label_partition_key",
    "parse_label_batch",
    "parse_label_csv",
    "redact_input",
]

SCHEMA_VERSION: Final = 1

ERRORS: Final = (
    "timeout",  # no complete response within the model's timeout_s
    "connect",  # the connection could not be made (refused, DNS, TLS)
    "http_5xx",  # the model answered with a 5xx status
    "http_4xx",  # the model answered with a 4xx status
    "bad_json",  # a 2xx response whose body is not JSON
    "extract_failed",  # JSON, but the prediction could not be extracted for the route
    "circuit_open",  # not sent: the candidate's circuit breaker is open
    "too_large",  # the response exceeded the capture limit
    "reset",  # the connection closed before the response was complete
    "bad_response",  # the response was not valid HTTP/1.1
    "no_prediction",  # a 2xx response with no instance, or only NaN / infinite predictions
    "dropped",  # not sent: the candidate's mirrors in flight were at max_in_flight
    "not_mirrored",  # not sent: the request body exceeded mirror.capture_limit_bytes
    "abandoned",  # production's answer was not awaited: the client went away first
)

_MAX_ID: Final = 256
_orjson_dumps: Final = orjson.dumps  # bound once: the data plane encodes a record per pair
MAX_URL: Final = 2048
"""Longest ``url`` of a side (longer: ``bad_value``)."""
MAX_REVISION: Final = 256
"""Longest ``revision`` of a side (longer: ``bad_value``); the config and the API bound it
alike."""


def _id_ok(value: str) -> bool:
    """1-256 characters from ``!`` to ``~`` (printable ASCII, no space): the same test as
    ``re.fullmatch("[!-~]{1,256}")``, without a regex on every record."""
    return (
        0 < len(value) <= _MAX_ID and value.isascii() and value.isprintable() and (" " not in value)
    )


class RecordError(ValueError):
    """A record that does not follow schema v1; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def is_valid_id(value: object) -> bool:
    """A request id: 1-256 printable ASCII characters, no spaces or control characters."""
    return isinstance(value, str) and _id_ok(value)


@dataclass(slots=True)
class Side:
    """One model's half of a pair: who answered, how, and what it predicted.

    ``output`` holds one prediction per instance (``None`` when there is none); ``error`` is
    one of ``ERRORS`` or ``None``. ``url`` (the model's base URL, without user info) and
    ``revision`` (deploy tooling's revision) complete the revision identity with ``version``;
    both are optional in the record (absent in records written before them).
    """

    model: str
    version: str | None
    status: int | None
    latency_ms: float | None
    output: list[Any] | None
    error: str | None
    url: str | None = None
    revision: str | None = None
    llm: dict[str, Any] | None = None
    """``openai`` routes: the answer's streaming facts (``LLM_KEYS``; ``docs/records.md``),
    optional in the record."""


LLM_KEYS: Final = ("ttft_ms", "itl_ms", "tokens_in", "tokens_out", "tokens_counted", "streamed")
"""The fields of a side's ``llm`` object, all required: two non-negative numbers or null, two
non-negative integers or null, two booleans."""


@dataclass(frozen=True, slots=True)
class PairRecord:
    """A decoded, validated pair record."""

    id: str
    route: str
    ts: int
    production: Side
    candidate: Side | None
    """None in a production-only monitoring record."""
    input: Any


@dataclass(frozen=True, slots=True)
class LabelRecord:
    """Ground truth for one request. ``ts`` is milliseconds since the epoch."""

    id: str
    label: Any
    ts: int
    route: str | None = None


# --- pair records -----------------------------------------------------------------------------


def encode_pair(
    *,
    request_id: str,
    route: str,
    ts_ms: int,
    production: Side,
    candidate: Side | None,
    input: Any | None,
) -> bytes:
    """Encode a pair record (JSON, UTF-8). Non-finite floats are written as ``null``.

    Raises ``ValueError`` for an error reason outside ``ERRORS`` or a value JSON cannot hold.
    """
    return encode_pair_fields(
        request_id,
        route,
        ts_ms,
        _side_dict(production),
        None if candidate is None else _side_dict(candidate),
        input,
    )


def side_fields(
    model: str,
    version: str | None,
    status: int | None,
    latency_ms: float | None,
    output: list[Any] | None,
    error: str | None,
    url: str | None = None,
    revision: str | None = None,
    llm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One side of a pair record as its JSON object (what ``Side`` holds); ``url``,
    ``revision`` and ``llm`` are written when set."""
    side: dict[str, Any] = {
        "model": model,
        "version": version,
        "status": status,
        "latency_ms": latency_ms,
        "output": output,
        "error": error,
    }
    if url is not None:
        side["url"] = url
    if revision is not None:
        side["revision"] = revision
    if llm is not None:
        side["llm"] = llm
    return side


def encode_pair_fields(
    request_id: str,
    route: str,
    ts_ms: int,
    production: dict[str, Any],
    candidate: dict[str, Any] | None,
    input: Any | None,
) -> bytes:
    """``encode_pair`` for sides already made by ``side_fields`` (the data plane's path)."""
    for side in (production, candidate):
        if side is not None and side["error"] is not None and side["error"] not in ERRORS:
            raise ValueError(f"unknown error reason {side['error']!r}")
    record = {
        "v": SCHEMA_VERSION,
        "id": request_id,
        "route": route,
        "ts": ts_ms,
        "production": production,
        "candidate": candidate,
        "input": input,
    }
    try:
        encoded = _orjson_dumps(record)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"pair record cannot be encoded: {exc}") from None
    # orjson's result keeps its over-allocated buffer (~4 KiB); a queue of records must not.
    return bytes(memoryview(encoded))


def _side_dict(side: Side) -> dict[str, Any]:
    return side_fields(
        side.model,
        side.version,
        side.status,
        side.latency_ms,
        side.output,
        side.error,
        side.url,
        side.revision,
        side.llm,
    )


def parse_record(value: bytes) -> Any:
    """The JSON value of a record's bytes; ``RecordError("unparseable")`` when not JSON."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        raise RecordError("unparseable") from None


def decode_pair(value: bytes) -> PairRecord:
    """Parse and validate a pair record; raises ``RecordError``."""
    obj = parse_record(value)
    if type(obj) is dict:
        rec = _fast_pair(obj)
        if rec is not None:
            return rec
    return _checked_pair(obj)


_ERROR_SET: Final = frozenset(ERRORS)
_TS_END: Final = 1 << 63


PairFields = tuple[str, str, int, "SideFields", "SideFields | None", Any]


def fast_pair_fields(obj: dict[str, Any]) -> PairFields | None:
    """(id, route, ts, production, candidate, input) of a pair record in the common shape
    (sides as ``fast_side_fields``), after a few exact type checks; ``None`` when anything
    differs, and the full validator then decides (and names the reason)."""
    try:
        version, rid, route, ts = obj["v"], obj["id"], obj["route"], obj["ts"]
        prod, cand = obj["production"], obj["candidate"]
    except KeyError:
        return None
    if not (
        type(version) is int
        and version == SCHEMA_VERSION
        and type(rid) is str
        and _id_ok(rid)
        and type(route) is str
        and route
        and type(ts) is int
        and 0 <= ts < _TS_END
    ):
        return None
    production = fast_side_fields(prod)
    if production is None:
        return None
    candidate = None
    if cand is not None:
        candidate = fast_side_fields(cand)
        if candidate is None:
            return None
    return rid, route, ts, production, candidate, obj.get("input")


def _fast_pair(obj: dict[str, Any]) -> PairRecord | None:
    f = fast_pair_fields(obj)
    if f is None:
        return None
    p, c = f[3], f[4]
    production = Side(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7])
    candidate = None if c is None else Side(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7])
    return PairRecord(f[0], f[1], f[2], production, candidate, f[5])


SideFields = tuple[
    str, str | None, int | None, float | None, list[Any] | None, str | None, str | None, str | None
]


def fast_side_fields(obj: Any) -> SideFields | None:
    """(model, version, status, latency_ms, output, error, url, revision) of a pair record's
    side in the common shape, after a few exact type checks; ``None`` when anything differs
    (the full validator then decides and names the reason)."""
    if type(obj) is not dict:
        return None
    try:
        model, version, status = obj["model"], obj["version"], obj["status"]
        latency, output, error = obj["latency_ms"], obj["output"], obj["error"]
    except KeyError:
        return None
    if type(model) is not str or not model:
        return None
    if version is not None and type(version) is not str:
        return None
    if status is not None and (type(status) is not int or not 100 <= status <= 599):
        return None
    if latency is not None:
        kind = type(latency)
        if (kind is not float and kind is not int) or not latency >= 0:
            return None
        latency = float(latency)
    if output is not None and type(output) is not list:
        return None
    if error is not None and (type(error) is not str or error not in _ERROR_SET):
        return None
    url = obj.get("url")
    revision = obj.get("revision")
    if (url is not None and (type(url) is not str or len(url) > MAX_URL)) or (
        revision is not None and (type(revision) is not str or len(revision) > MAX_REVISION)
    ):
        return None
    if obj.get("llm") is not None:
        return None  # an ``openai`` route's side: the full validator checks its ``llm``
    return model, version, status, latency, output, error, url, revision


def _checked_pair(obj: Any) -> PairRecord:
    """Every check of schema v1, in the order that gives each failure its reason."""
    if not isinstance(obj, dict):
        raise RecordError("unparseable")
    _check_version(obj, required=True)
    request_id = _required(obj, "id")
    if not is_valid_id(request_id):
        raise RecordError("bad_type:id" if not isinstance(request_id, str) else "bad_value:id")
    return PairRecord(
        id=request_id,
        route=_name(_required(obj, "route"), "route"),
        ts=_timestamp(_required(obj, "ts"), "ts", integral=True),
        production=_side(_required(obj, "production"), "production"),
        candidate=_optional_side(_required(obj, "candidate"), "candidate"),
        input=obj.get("input"),
    )


def _optional_side(obj: Any, where: str) -> Side | None:
    return None if obj is None else _side(obj, where)


def _side(obj: Any, where: str) -> Side:
    if not isinstance(obj, dict):
        raise RecordError(f"bad_type:{where}")
    model = _name(_required(obj, "model", where), f"{where}.model")
    version = _nullable(obj, "version", where, lambda v: isinstance(v, str))
    status = _nullable(obj, "status", where, _is_integral)
    latency = _nullable(obj, "latency_ms", where, _is_number)
    output = _nullable(obj, "output", where, lambda v: isinstance(v, list))
    error = _nullable(obj, "error", where, lambda v: isinstance(v, str))
    url = _optional(obj, "url", where, MAX_URL)
    revision = _optional(obj, "revision", where, MAX_REVISION)
    llm = obj.get("llm")
    if llm is not None:
        llm = _llm(llm, f"{where}.llm")
    if status is not None and not 100 <= status <= 599:
        raise RecordError(f"bad_value:{where}.status")
    if latency is not None and latency < 0:
        raise RecordError(f"bad_value:{where}.latency_ms")
    if error is not None and error not in ERRORS:
        raise RecordError(f"bad_value:{where}.error")
    return Side(
        model=model,
        version=version,
        status=None if status is None else int(status),
        latency_ms=None if latency is None else float(latency),
        output=output,
        error=error,
        url=url,
        revision=revision,
        llm=llm,
    )


def _llm(obj: Any, where: str) -> dict[str, Any]:
    """A side's ``llm`` object, checked (``LLM_KEYS``); unknown keys are left out."""
    if not isinstance(obj, dict):
        raise RecordError(f"bad_type:{where}")
    out: dict[str, Any] = {}
    for key in ("ttft_ms", "itl_ms"):
        v = _nullable(obj, key, where, _is_number)
        if v is not None and not (0 <= v < math.inf):
            raise RecordError(f"bad_value:{where}.{key}")
        out[key] = None if v is None else float(v)
    for key in ("tokens_in", "tokens_out"):
        v = _nullable(obj, key, where, _is_integral)
        if v is not None and not 0 <= v < 1 << 63:
            raise RecordError(f"bad_value:{where}.{key}")
        out[key] = None if v is None else int(v)
    for key in ("tokens_counted", "streamed"):
        v = _required(obj, key, where)
        if not isinstance(v, bool):
            raise RecordError(f"bad_type:{where}.{key}")
        out[key] = v
    return out


def _optional(obj: dict[str, Any], key: str, where: str, limit: int) -> str | None:
    """An optional string field of at most ``limit`` characters: absent or null is None."""
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordError(f"bad_type:{where}.{key}")
    if value is not None and len(value) > limit:
        raise RecordError(f"bad_value:{where}.{key}")
    return value


# --- label records ----------------------------------------------------------------------------


def label_partition_key(label_id: str) -> bytes:
    """The Kafka key to produce a label with: its request id (``X`` for an instance label
    ``X#i`` of a batched request), so that it lands in the partition of its pair."""
    head, sep, tail = label_id.rpartition("#")
    return (head if sep and head and tail.isdigit() else label_id).encode()


def encode_label(label: LabelRecord) -> bytes:
    """Encode a label record (JSON, UTF-8); ``route`` is written only when set."""
    record: dict[str, Any] = {"v": SCHEMA_VERSION, "id": label.id, "label": label.label}
    record["ts"] = label.ts
    if label.route is not None:
        record["route"] = label.route
    return orjson.dumps(record)


def decode_label(obj: Any, now_ms: int | None = None) -> LabelRecord:
    """Validate a parsed label object; ``ts`` defaults to ``now_ms`` when that is given."""
    if type(obj) is dict:
        lab = _fast_label(obj, now_ms)
        if lab is not None:
            return lab
    if not isinstance(obj, dict):
        raise RecordError("bad_type:record")
    _check_version(obj, required=False)
    request_id = _required(obj, "id")
    if not is_valid_id(request_id):
        raise RecordError("bad_type:id" if not isinstance(request_id, str) else "bad_value:id")
    label = _label_value(_required(obj, "label"))
    if "ts" in obj or now_ms is None:
        ts = _timestamp(_required(obj, "ts"), "ts", integral=False)
    else:
        ts = now_ms
    route = obj.get("route")
    if route is not None:
        route = _name(route, "route")
    return LabelRecord(id=request_id, label=label, ts=ts, route=route)


_ABSENT: Final = object()


def fast_label_fields(
    obj: dict[str, Any], now_ms: int | None = None
) -> tuple[str, Any, int, str | None] | None:
    """(id, label, ts, route) of a label record in the common shape (``v`` 1 or absent,
    integer ``ts`` or ``now_ms`` when absent, scalar label); ``None`` when anything differs,
    and the full validator then decides (and names the reason)."""
    version = obj.get("v", SCHEMA_VERSION)
    rid = obj.get("id")
    label = obj.get("label", _ABSENT)
    ts = obj.get("ts", _ABSENT)
    route = obj.get("route")
    if not (
        type(version) is int and version == SCHEMA_VERSION and type(rid) is str and _id_ok(rid)
    ):
        return None
    kind = type(label)
    if kind is float:
        if not math.isfinite(label):
            return None
    elif kind is not int and kind is not str and kind is not bool:
        return None
    if ts is _ABSENT:
        if now_ms is None:
            return None
        ts = now_ms
    elif type(ts) is not int or not 0 <= ts < _TS_END:
        return None
    if route is not None and (type(route) is not str or not route):
        return None
    return rid, label, ts, route


def _fast_label(obj: dict[str, Any], now_ms: int | None) -> LabelRecord | None:
    f = fast_label_fields(obj, now_ms)
    return None if f is None else LabelRecord(f[0], f[1], f[2], f[3])


def _label_value(label: Any) -> Any:
    if isinstance(label, bool | str):
        return label
    if _is_number(label):
        if not math.isfinite(label):
            raise RecordError("bad_value:label")
        return label
    if isinstance(label, list) and label and all(_is_number(v) for v in label):
        if not all(math.isfinite(v) for v in label):
            raise RecordError("bad_value:label")
        return label
    raise RecordError("bad_type:label")


_JSON_TYPES: Final = ("application/json",)
_LINES_TYPES: Final = ("application/x-ndjson", "application/jsonl", "application/json-lines")
_CSV_TYPES: Final = ("text/csv",)


def parse_label_batch(
    body: bytes, content_type: str | None, now_ms: int
) -> tuple[list[LabelRecord], list[tuple[int, str]]]:
    """Parse a JSON array, JSON lines or CSV body of label records.

    Returns the good records and ``(number, reason)`` for each bad one, where ``number`` is the
    1-based array element or line (``0`` when the body as a whole cannot be read). A bad record
    never causes a good one to be dropped.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _CSV_TYPES:
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            return [], [(0, "unparseable")]
        return parse_label_csv(text, now_ms)
    start = body.lstrip(b" \t\r\n\xef\xbb\xbf")[:1]
    if media in _LINES_TYPES or (media not in _JSON_TYPES and start != b"["):
        return _parse_lines(body, now_ms)
    try:
        doc = orjson.loads(body.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError:
        if start == b"{":  # JSON lines sent as application/json
            return _parse_lines(body, now_ms)
        return [], [(0, "unparseable")]
    return _decode_all(doc if isinstance(doc, list) else [doc], now_ms)


def _decode_all(items: list[Any], now_ms: int) -> tuple[list[LabelRecord], list[tuple[int, str]]]:
    good: list[LabelRecord] = []
    bad: list[tuple[int, str]] = []
    for number, item in enumerate(items, start=1):
        try:
            good.append(decode_label(item, now_ms))
        except RecordError as exc:
            bad.append((number, exc.reason))
    return good, bad


def _parse_lines(body: bytes, now_ms: int) -> tuple[list[LabelRecord], list[tuple[int, str]]]:
    good: list[LabelRecord] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(body.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            good.append(decode_label(orjson.loads(line), now_ms))
        except orjson.JSONDecodeError:
            bad.append((number, "unparseable"))
        except RecordError as exc:
            bad.append((number, exc.reason))
    return good, bad


def parse_label_csv(text: str, now_ms: int) -> tuple[list[LabelRecord], list[tuple[int, str]]]:
    """Parse CSV with a header row naming ``id``, ``label`` and optionally ``ts``, ``route``.

    Cells are typed: integers and finite decimals become numbers, ``true``/``false`` booleans,
    ``[...]`` a JSON list of numbers; anything else stays a string. Numbers are 1-based lines.
    """
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return [], []
    except csv.Error:
        return [], [(1, "unparseable")]
    missing = [f for f in ("id", "label") if f not in header]
    if missing:
        return [], [(1, f"missing_field:{missing[0]}")]
    good: list[LabelRecord] = []
    bad: list[tuple[int, str]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:
            bad.append((reader.line_num, "unparseable"))
            break
        if not any(cell.strip() for cell in row):
            continue
        obj = {k: _csv_cell(k, v) for k, v in zip(header, row, strict=False) if v.strip()}
        try:
            good.append(decode_label(obj, now_ms))
        except RecordError as exc:
            bad.append((reader.line_num, exc.reason))
    return good, bad


_INT_TEXT: Final = re.compile(r"[+-]?[0-9]+")


def _csv_cell(column: str, cell: str) -> Any:
    cell = cell.strip()
    if column in ("id", "route"):
        return cell
    if _INT_TEXT.fullmatch(cell):
        return int(cell)
    if cell.lower() in ("true", "false") and column == "label":
        return cell.lower() == "true"
    if cell.startswith("[") and column == "label":
        try:
            return orjson.loads(cell)
        except orjson.JSONDecodeError:
            return cell
    try:
        number = float(cell)
    except ValueError:
        return cell
    return number if math.isfinite(number) else cell


# --- input redaction --------------------------------------------------------------------------


def redact_input(obj: Any, drop: Sequence[str], hash_fields: Sequence[str], salt: bytes) -> Any:
    """Drop or hash fields of a request body before it leaves the process.

    A field is a key or dotted path (``customer.email``) looked up in the body's top level, in
    each object of ``instances`` / ``inputs`` lists, and in an ``inputs`` object. An Open
    Inference input tensor (``{"name": ..., "data": [...]}``) whose name is the field is dropped
    or has each data element hashed. Hashes are ``sha256:`` + 16 hex digits of HMAC-SHA256
    keyed by ``salt``. The argument is not modified; drop wins over hash.

    >>> body = {"email": "a@b.c", "amount": 3}
    >>> redact_input(body, drop=["amount"], hash_fields=["email"], salt=b"s")  # doctest: +ELLIPSIS
    {'email': 'sha256:...'}
    """
    if not drop and not hash_fields:
        return obj
    actions = {path: "hash" for path in hash_fields} | {path: "drop" for path in drop}
    return _redact_container(obj, actions, salt, top=True)


def _redact_container(obj: Any, actions: dict[str, str], salt: bytes, *, top: bool) -> Any:
    if isinstance(obj, list):
        items = (_redact_item(item, actions, salt, top=top) for item in obj)
        return [item for item in items if item is not _DROPPED]
    if not isinstance(obj, dict):
        return obj
    out = dict(obj)
    for path, action in actions.items():
        out = _apply(out, path.split("."), action, salt)
    if top:
        for key in ("instances", "inputs"):
            if key in out:
                out[key] = _redact_container(out[key], actions, salt, top=False)
    return out


def _redact_item(item: Any, actions: dict[str, str], salt: bytes, *, top: bool) -> Any:
    if isinstance(item, dict) and _is_tensor(item):
        action = actions.get(item["name"])
        if action == "drop":
            return _DROPPED
        if action == "hash":
            data = item["data"]
            hashed = [_hash(v, salt) for v in data] if isinstance(data, list) else _hash(data, salt)
            return {**item, "data": hashed, "datatype": "BYTES"}
        return item
    return _redact_container(item, actions, salt, top=top)


_DROPPED: Final = object()


def _is_tensor(item: dict[str, Any]) -> bool:
    return isinstance(item.get("name"), str) and "data" in item and "datatype" in item


def _apply(obj: dict[str, Any], parts: list[str], action: str, salt: bytes) -> dict[str, Any]:
    key = parts[0]
    if key not in obj:
        return obj
    out = dict(obj)
    if len(parts) > 1:
        if isinstance(out[key], dict):
            out[key] = _apply(out[key], parts[1:], action, salt)
        return out
    if action == "drop":
        del out[key]
    else:
        out[key] = _hash(out[key], salt)
    return out


def _hash(value: Any, salt: bytes) -> str:
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
    else:
        try:
            data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            data = repr(value).encode("utf-8", "surrogatepass")
    return "sha256:" + hmac.new(salt, data, hashlib.sha256).hexdigest()[:16]


# --- field helpers ----------------------------------------------------------------------------


def _check_version(obj: dict[str, Any], *, required: bool) -> None:
    if "v" not in obj:
        if required:
            raise RecordError("missing_field:v")
        return
    version = obj["v"]
    if not _is_integral(version):
        raise RecordError("bad_type:v")
    if version != SCHEMA_VERSION:
        raise RecordError("schema_version")


def _required(obj: dict[str, Any], key: str, where: str = "") -> Any:
    if key not in obj:
        raise RecordError(f"missing_field:{where + '.' if where else ''}{key}")
    return obj[key]


def _nullable(obj: dict[str, Any], key: str, where: str, check: Callable[[Any], bool]) -> Any:
    """A field that must be present and is either null or passes ``check``."""
    value = _required(obj, key, where)
    if value is not None and not check(value):
        raise RecordError(f"bad_type:{where}.{key}")
    return value


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise RecordError(f"bad_type:{field}")
    return value


def _timestamp(value: Any, field: str, *, integral: bool) -> int:
    ok = _is_integral(value) if integral else _is_number(value) and math.isfinite(value)
    if not ok:
        raise RecordError(f"bad_type:{field}")
    if not 0 <= value < 1 << 63:
        raise RecordError(f"bad_value:{field}")
    return int(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integral(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)
