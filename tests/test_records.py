"""Record schema v1: pair and label records, label intake parsing, input redaction."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from importlib import resources
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowroute.core.records import (
    ERRORS,
    LabelRecord,
    RecordError,
    Side,
    decode_label,
    decode_pair,
    encode_label,
    encode_pair,
    is_valid_id,
    parse_label_batch,
    parse_label_csv,
    redact_input,
)

NOW = 1_764_100_000_000


def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("shadowroute").joinpath("schemas", f"{name}.v1.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


PAIR_SCHEMA = load_schema("pair")
LABEL_SCHEMA = load_schema("label")

# --- a small JSON Schema checker: the keywords our two schemas use ----------------------------

TYPES = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def valid(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].removeprefix("#/$defs/")]
    if "anyOf" in schema and not any(valid(value, s, root) for s in schema["anyOf"]):
        return False
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(TYPES[k](value) for k in kinds):
            return False
    if "const" in schema and not json_equal(value, schema["const"]):
        return False
    if "enum" in schema and not any(json_equal(value, e) for e in schema["enum"]):
        return False
    if TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            return False
        if "maximum" in schema and value > schema["maximum"]:
            return False
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            return False
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return False
        pattern = schema.get("pattern")
        if pattern and not re.search(pattern.removesuffix("$") + r"\Z", value):
            return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return False
        if "items" in schema and not all(valid(v, schema["items"], root) for v in value):
            return False
    if isinstance(value, dict):
        if any(k not in value for k in schema.get("required", [])):
            return False
        props = schema.get("properties", {})
        if not all(valid(value[k], s, root) for k, s in props.items() if k in value):
            return False
    return True


def test_checker_sanity() -> None:
    assert valid({"a": 1}, {"type": "object", "required": ["a"]}, {})
    assert not valid({}, {"type": "object", "required": ["a"]}, {})
    assert not valid(True, {"type": "integer"}, {})
    assert valid(2.0, {"type": "integer"}, {})
    assert not valid("a b", {"type": "string", "pattern": "^[!-~]{1,3}$"}, {})
    assert not valid("ab\n", {"type": "string", "pattern": "^[!-~]{1,3}$"}, {})
    assert not valid(True, {"const": 1}, {})


# --- strategies -------------------------------------------------------------------------------

ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=256)
names = st.text(min_size=1, max_size=20)
finite = st.floats(allow_nan=False, allow_infinity=False)
int64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
predictions = st.none() | int64 | finite | st.text(max_size=10) | st.lists(finite, max_size=4)
json_leaf = st.none() | st.booleans() | int64 | finite | st.text(max_size=10)
json_values = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10,
)

sides = st.builds(
    Side,
    model=names,
    version=st.none() | st.text(max_size=10),
    status=st.none() | st.integers(100, 599),
    latency_ms=st.none() | st.floats(min_value=0, allow_infinity=False),
    output=st.none() | st.lists(predictions, max_size=5),
    error=st.none() | st.sampled_from(ERRORS),
)

labels = st.builds(
    LabelRecord,
    id=ids,
    label=st.booleans()
    | int64
    | finite
    | st.text(max_size=20)
    | st.lists(int64 | finite, min_size=1, max_size=4),
    ts=st.integers(0, (1 << 63) - 1),
    route=st.none() | names,
)


def encode(
    request_id: str, route: str, ts: int, prod: Side, cand: Side, input: Any = None
) -> bytes:
    return encode_pair(
        request_id=request_id,
        route=route,
        ts_ms=ts,
        production=prod,
        candidate=cand,
        input=input,
    )


# --- pair records -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    request_id=ids,
    route=names,
    ts=st.integers(0, (1 << 63) - 1),
    prod=sides,
    cand=sides,
    input=json_values,
)
def test_pair_roundtrip_matches_schema(
    request_id: str, route: str, ts: int, prod: Side, cand: Side, input: Any
) -> None:
    value = encode(request_id, route, ts, prod, cand, input)
    assert valid(orjson.loads(value), PAIR_SCHEMA, PAIR_SCHEMA)
    record = decode_pair(value)
    assert (record.id, record.route, record.ts, record.input) == (request_id, route, ts, input)
    assert record.production == prod
    assert record.candidate == cand


def test_pair_record_layout() -> None:
    side = Side("fraud-v7", "7", 200, 4.1, [0.91, math.nan], None)
    value = encode(
        "9f1c", "fraud", 1764100000123, side, Side("v8", None, None, None, None, "timeout")
    )
    assert orjson.loads(value) == {
        "v": 1,
        "id": "9f1c",
        "route": "fraud",
        "ts": 1764100000123,
        "production": {
            "model": "fraud-v7",
            "version": "7",
            "status": 200,
            "latency_ms": 4.1,
            "output": [0.91, None],
            "error": None,
        },
        "candidate": {
            "model": "v8",
            "version": None,
            "status": None,
            "latency_ms": None,
            "output": None,
            "error": "timeout",
        },
        "input": None,
    }


def test_encode_pair_refuses_unknown_error_and_unencodable_values() -> None:
    ok = Side("m", None, 200, 1.0, [1], None)
    with pytest.raises(ValueError, match="unknown error"):
        encode("a", "r", 1, ok, Side("m", None, None, None, None, "oops"))
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode("a", "r", 1, ok, ok, input={"x": object()})


def pair_dict() -> dict[str, Any]:
    side = Side("m", "1", 200, 2.5, [1, 0], None)
    result: dict[str, Any] = orjson.loads(encode("req-1", "r", NOW, side, side, {"a": 1}))
    return result


def with_change(path: tuple[str, ...], value: Any = ..., base: Any = None) -> bytes:
    obj = copy.deepcopy(base if base is not None else pair_dict())
    node = obj
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "unparseable"),
        (b"[1, 2]", "unparseable"),
        (b"", "unparseable"),
        (with_change(("v",), 2), "schema_version"),
        (with_change(("v",), "1"), "bad_type:v"),
        (with_change(("v",)), "missing_field:v"),
        (with_change(("id",)), "missing_field:id"),
        (with_change(("id",), "has space"), "bad_value:id"),
        (with_change(("id",), 7), "bad_type:id"),
        (with_change(("route",), ""), "bad_type:route"),
        (with_change(("ts",), "now"), "bad_type:ts"),
        (with_change(("ts",), -1), "bad_value:ts"),
        (with_change(("ts",), 1.5), "bad_type:ts"),
        (with_change(("production",), [1]), "bad_type:production"),
        (with_change(("candidate",)), "missing_field:candidate"),
        (with_change(("production", "model")), "missing_field:production.model"),
        (with_change(("production", "status")), "missing_field:production.status"),
        (with_change(("production", "status"), 99), "bad_value:production.status"),
        (with_change(("candidate", "output"), {"a": 1}), "bad_type:candidate.output"),
        (with_change(("candidate", "error"), "oops"), "bad_value:candidate.error"),
        (with_change(("candidate", "error"), 3), "bad_type:candidate.error"),
        (with_change(("candidate", "latency_ms"), -0.5), "bad_value:candidate.latency_ms"),
        (with_change(("candidate", "version"), 8), "bad_type:candidate.version"),
    ],
)
def test_decode_pair_reasons(value: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        decode_pair(value)
    assert info.value.reason == reason


def test_decode_pair_is_forward_compatible() -> None:
    value = with_change(("new_field",), {"anything": True})
    value = with_change(("production", "extra"), 1, base=orjson.loads(value))
    assert decode_pair(value).production.status == 200
    assert decode_pair(with_change(("input",))).input is None
    assert decode_pair(with_change(("ts",), float(NOW))).ts == NOW


PAIR_PATHS = [
    ("v",),
    ("id",),
    ("route",),
    ("ts",),
    ("production",),
    ("candidate",),
    ("input",),
    ("extra",),
    *[(s, f.name) for s in ("production", "candidate") for f in dataclasses.fields(Side)],
]
mutant_values = (
    st.sampled_from(
        [None, True, 0, 1, 1.0, -1, 99, 200, 200.0, 200.5, 600, 2.0**63, "", " ", "timeout", "x y"]
    )
    | json_values
)


@settings(max_examples=500, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(PAIR_PATHS), st.just(...) | mutant_values),
        min_size=1,
        max_size=3,
    )
)
def test_pair_schema_accepts_exactly_what_the_decoder_accepts(
    changes: list[tuple[tuple[str, ...], Any]],
) -> None:
    obj: Any = pair_dict()
    for path, value in changes:
        parent = obj.get(path[0]) if len(path) > 1 else obj
        if not isinstance(parent, dict):
            continue
        obj = orjson.loads(with_change(path, value, base=obj))
    try:
        decode_pair(orjson.dumps(obj))
        accepted = True
    except RecordError:
        accepted = False
    assert accepted == valid(obj, PAIR_SCHEMA, PAIR_SCHEMA), obj


# --- label records ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(label=labels)
def test_label_roundtrip_matches_schema(label: LabelRecord) -> None:
    obj = orjson.loads(encode_label(label))
    assert obj["v"] == 1
    assert ("route" in obj) == (label.route is not None)
    assert valid(obj, LABEL_SCHEMA, LABEL_SCHEMA)
    assert decode_label(obj) == label


LABEL_PATHS = ["v", "id", "label", "ts", "route", "extra"]


@settings(max_examples=500, deadline=None)
@given(
    base=labels,
    changes=st.lists(
        st.tuples(
            st.sampled_from(LABEL_PATHS),
            st.just(...) | mutant_values | st.lists(mutant_values, max_size=3),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_label_schema_accepts_exactly_what_the_decoder_accepts(
    base: LabelRecord, changes: list[tuple[str, Any]]
) -> None:
    obj = orjson.loads(encode_label(base))
    for key, value in changes:
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    obj = orjson.loads(orjson.dumps(obj))
    try:
        decode_label(obj)
        accepted = True
    except RecordError:
        accepted = False
    assert accepted == valid(obj, LABEL_SCHEMA, LABEL_SCHEMA), obj


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1], "bad_type:record"),
        ({"label": 1, "ts": 1}, "missing_field:id"),
        ({"id": "", "label": 1, "ts": 1}, "bad_value:id"),
        ({"id": "a\tb", "label": 1, "ts": 1}, "bad_value:id"),
        ({"id": "é", "label": 1, "ts": 1}, "bad_value:id"),
        ({"id": "x" * 257, "label": 1, "ts": 1}, "bad_value:id"),
        ({"id": "a", "ts": 1}, "missing_field:label"),
        ({"id": "a", "label": None, "ts": 1}, "bad_type:label"),
        ({"id": "a", "label": {"k": 1}, "ts": 1}, "bad_type:label"),
        ({"id": "a", "label": [], "ts": 1}, "bad_type:label"),
        ({"id": "a", "label": [1, "x"], "ts": 1}, "bad_type:label"),
        ({"id": "a", "label": 1}, "missing_field:ts"),
        ({"id": "a", "label": 1, "ts": "2026"}, "bad_type:ts"),
        ({"id": "a", "label": 1, "ts": -5}, "bad_value:ts"),
        ({"id": "a", "label": 1, "ts": 1, "v": 2}, "schema_version"),
        ({"id": "a", "label": 1, "ts": 1, "route": ""}, "bad_type:route"),
    ],
)
def test_decode_label_reasons(obj: Any, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        decode_label(obj)
    assert info.value.reason == reason


def test_decode_label_values() -> None:
    assert decode_label({"id": "a", "label": 1}, now_ms=NOW) == LabelRecord("a", 1, NOW)
    assert decode_label({"id": "a", "label": True, "ts": 5.9}).ts == 5
    assert decode_label({"id": "a", "label": [0.1, 0.9], "ts": 1, "route": "r"}).route == "r"
    assert decode_label({"id": "a", "label": "spam", "ts": 1, "v": 1}).label == "spam"
    assert is_valid_id("9f1c-ab_01:x") and not is_valid_id("a b") and not is_valid_id(3)


# --- label batches ----------------------------------------------------------------------------


def test_json_array_keeps_good_elements() -> None:
    items = [
        {"id": "a", "label": 1},
        {"id": "b c", "label": 1},
        "nope",
        {"id": "d", "label": 0, "ts": 12},
        {"id": "e"},
    ]
    good, bad = parse_label_batch(orjson.dumps(items), "application/json", NOW)
    assert good == [LabelRecord("a", 1, NOW), LabelRecord("d", 0, 12)]
    assert bad == [(2, "bad_value:id"), (3, "bad_type:record"), (5, "missing_field:label")]


def test_json_lines_keep_good_lines() -> None:
    body = b'{"id": "a", "label": 1}\n\n{"id": "b", "lab\n{"id": "c", "label": 2.5}\r\n[]\n'
    for content_type in ("application/x-ndjson", "application/jsonl; charset=utf-8", None):
        good, bad = parse_label_batch(body, content_type, NOW)
        assert [g.id for g in good] == ["a", "c"]
        assert good[1].label == 2.5
        assert bad == [(3, "unparseable"), (5, "bad_type:record")]


def test_batch_sniffing_and_whole_body_errors() -> None:
    lines = b'{"id": "a", "label": 1}\n{"id": "b", "label": 0}\n'
    good, bad = parse_label_batch(lines, "application/json", NOW)
    assert [g.id for g in good] == ["a", "b"] and bad == []
    good, bad = parse_label_batch(b'  [{"id": "a", "label": 1}]', None, NOW)
    assert [g.id for g in good] == ["a"] and bad == []
    good, bad = parse_label_batch(b'{"id": "a", "label": 1}', "application/json", NOW)
    assert [g.id for g in good] == ["a"] and bad == []
    assert parse_label_batch(b'[{"id": "a", "label": 1},', "application/json", NOW) == (
        [],
        [(0, "unparseable")],
    )
    assert parse_label_batch(b"", None, NOW) == ([], [])
    assert parse_label_batch(b"\xff\xfe", None, NOW) == ([], [(1, "unparseable")])


good_items = st.builds(
    lambda i, label: {"id": f"id-{i}", "label": label},
    st.integers(0, 10**6),
    st.integers(0, 5) | st.text(max_size=5),
)
bad_items = st.sampled_from(
    [{"id": "x y", "label": 1}, {"label": 1}, {"id": "z"}, 5, [], {"id": "q", "label": None}]
)


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(st.booleans(), good_items, bad_items), max_size=30),
    lines=st.booleans(),
)
def test_good_records_survive_bad_ones(
    items: list[tuple[bool, dict[str, Any], Any]], lines: bool
) -> None:
    chosen = [g if is_good else b for is_good, g, b in items]
    body = b"\n".join(orjson.dumps(x) for x in chosen) if lines else orjson.dumps(chosen)
    content_type = "application/x-ndjson" if lines else None
    good, bad = parse_label_batch(body, content_type, NOW)
    expected = [(g["id"], g["label"]) for is_good, g, _ in items if is_good]
    assert [(r.id, r.label) for r in good] == expected
    assert [n for n, _ in bad] == [i for i, (is_good, _, _) in enumerate(items, 1) if not is_good]


def test_csv_labels() -> None:
    text = (
        "ID, Label ,ts,route\n"
        "a,1,1000,fraud\n"
        "b,spam,,\n"
        '"c",true,,\n'
        'd,"[0.2, 0.8]",5,r2\n'
        "e,2.5,not-a-time,\n"
        ",1,,\n"
        "\n"
        "f,007,,\n"
    )
    good, bad = parse_label_csv(text, NOW)
    assert good == [
        LabelRecord("a", 1, 1000, "fraud"),
        LabelRecord("b", "spam", NOW),
        LabelRecord("c", True, NOW),
        LabelRecord("d", [0.2, 0.8], 5, "r2"),
        LabelRecord("f", 7, NOW),
    ]
    assert bad == [(6, "bad_type:ts"), (7, "missing_field:id")]
    assert parse_label_csv("id,value\na,1\n", NOW) == ([], [(1, "missing_field:label")])
    assert parse_label_csv("", NOW) == ([], [])
    via_batch = parse_label_batch(b"\xef\xbb\xbfid,label\nx,1\n", "text/csv", NOW)
    assert via_batch == ([LabelRecord("x", 1, NOW)], [])


# --- input redaction --------------------------------------------------------------------------

SALT = b"salt"


def hashed(value: Any) -> str:
    out = redact_input({"k": value}, (), ("k",), SALT)["k"]
    assert isinstance(out, str)
    return out


def test_redact_top_level_and_dotted_paths() -> None:
    body = {
        "email": "a@b.c",
        "ssn": "123",
        "customer": {"email": "x@y.z", "age": 40},
        "amount": 10,
    }
    before = copy.deepcopy(body)
    out = redact_input(
        body, drop=["ssn", "missing.path"], hash_fields=["customer.email"], salt=SALT
    )
    assert body == before  # not modified
    assert out == {
        "email": "a@b.c",
        "customer": {"email": hashed("x@y.z"), "age": 40},
        "amount": 10,
    }
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", hashed("x@y.z"))
    assert hashed("x@y.z") == hashed("x@y.z") != hashed("x@y.zz")
    assert hashed(5) == hashed("5")  # a string hashes its text, anything else its JSON
    assert hashed({"b": 1, "a": 2}) == hashed({"a": 2, "b": 1}) != hashed(5)
    other_salt = redact_input({"k": "x@y.z"}, (), ("k",), b"pepper")["k"]
    assert other_salt != hashed("x@y.z")


def test_redact_instances_inputs_and_tensors() -> None:
    body = {
        "instances": [{"email": "a", "v": 1}, {"email": "b", "v": 2}, [1, 2]],
        "inputs": {"email": ["c"], "v": [3]},
    }
    out = redact_input(body, drop=["v"], hash_fields=["email"], salt=SALT)
    assert out == {
        "instances": [{"email": hashed("a")}, {"email": hashed("b")}, [1, 2]],
        "inputs": {"email": hashed(["c"])},
    }
    oip = {
        "inputs": [
            {"name": "email", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
            {"name": "ssn", "datatype": "BYTES", "shape": [1], "data": ["1"]},
            {"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]},
        ]
    }
    out = redact_input(oip, drop=["ssn"], hash_fields=["email"], salt=SALT)
    assert out == {
        "inputs": [
            {
                "name": "email",
                "datatype": "BYTES",
                "shape": [2],
                "data": [hashed("a"), hashed("b")],
            },
            {"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]},
        ]
    }


def test_redact_edge_cases() -> None:
    assert redact_input({"a": 1}, (), (), SALT) == {"a": 1}
    assert redact_input({"a": 1}, ["a"], ["a"], SALT) == {}  # drop wins
    assert redact_input("text", ["a"], (), SALT) == "text"
    assert redact_input([{"a": 1, "b": 2}], ["a"], (), SALT) == [{"b": 2}]
    assert redact_input({"a": [1]}, ["a.b"], (), SALT) == {"a": [1]}


def test_request_id_check_is_exactly_printable_ascii_without_space() -> None:
    """``is_valid_id`` accepts exactly what ``[!-~]{1,256}`` matches: every character of the
    Latin-1 range and a few beyond, alone and inside an otherwise good id, and the bounds."""
    import re

    pattern = re.compile(r"[!-~]{1,256}")
    cases = ["", "x" * 256, "x" * 257, "a b", "é", "ok", "\u2028", "a\u00a0b", "🙂"]
    cases += [chr(c) for c in range(0, 0x250)] + [f"id{chr(c)}x" for c in range(0, 0x250)]
    for value in cases:
        assert is_valid_id(value) == (pattern.fullmatch(value) is not None), repr(value)


# --- the optional ``llm`` object of an openai route's side ------------------------------------

LLM = {
    "ttft_ms": 120.5,
    "itl_ms": 20.0,
    "tokens_in": 12,
    "tokens_out": 40,
    "tokens_counted": False,
    "streamed": True,
}


def llm_pair_dict() -> dict[str, Any]:
    side = Side("m", "1", 200, 2.5, ["hello"], None, llm=dict(LLM))
    result: dict[str, Any] = orjson.loads(encode("req-1", "r", NOW, side, side, None))
    return result


def test_llm_round_trips_and_is_optional() -> None:
    rec = decode_pair(orjson.dumps(llm_pair_dict()))
    assert rec.production.llm == LLM
    assert rec.candidate is not None and rec.candidate.llm == LLM
    assert decode_pair(orjson.dumps(pair_dict())).production.llm is None
    plain = pair_dict()
    plain["production"]["llm"] = None
    assert decode_pair(orjson.dumps(plain)).production.llm is None


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("ttft_ms", -1.0, "bad_value:production.llm.ttft_ms"),
        ("itl_ms", "5", "bad_type:production.llm.itl_ms"),
        ("tokens_in", 1.5, "bad_type:production.llm.tokens_in"),
        ("tokens_out", -3, "bad_value:production.llm.tokens_out"),
        ("tokens_out", 2**63, "bad_value:production.llm.tokens_out"),
        ("tokens_counted", 1, "bad_type:production.llm.tokens_counted"),
        ("streamed", ..., "missing_field:production.llm.streamed"),
    ],
)
def test_llm_bad_values_are_named(key: str, value: Any, reason: str) -> None:
    obj = orjson.loads(with_change(("production", "llm", key), value, base=llm_pair_dict()))
    with pytest.raises(RecordError) as exc:
        decode_pair(orjson.dumps(obj))
    assert exc.value.reason == reason
    assert not valid(obj, PAIR_SCHEMA, PAIR_SCHEMA)


def test_llm_not_an_object() -> None:
    obj = orjson.loads(with_change(("candidate", "llm"), [1], base=llm_pair_dict()))
    with pytest.raises(RecordError) as exc:
        decode_pair(orjson.dumps(obj))
    assert exc.value.reason == "bad_type:candidate.llm"


LLM_PATHS = [(s, "llm", k) for s in ("production", "candidate") for k in LLM] + [
    ("production", "llm"),
    ("candidate", "llm"),
]


@settings(max_examples=300, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(LLM_PATHS), st.just(...) | mutant_values),
        min_size=1,
        max_size=3,
    )
)
def test_llm_schema_accepts_exactly_what_the_decoder_accepts(
    changes: list[tuple[tuple[str, ...], Any]],
) -> None:
    obj: Any = llm_pair_dict()
    for path, value in changes:
        node = obj
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        obj = orjson.loads(with_change(path, value, base=obj))
    try:
        decode_pair(orjson.dumps(obj))
        accepted = True
    except RecordError:
        accepted = False
    assert accepted == valid(obj, PAIR_SCHEMA, PAIR_SCHEMA), obj
