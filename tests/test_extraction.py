"""Prediction extraction per protocol and task (shadowroute.core.extraction)."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shadowroute.core.config import Route
from shadowroute.core.extraction import (
    MAX_DECODED_BYTES,
    REASONS,
    SCAN_CHUNK,
    ExtractError,
    compile_path,
    decode_body,
    extract,
    json_values_bound,
    over_json_values,
)


def make_route(protocol: str, task: str, **extra: Any) -> Route:
    raw = {
        "name": "r",
        "protocol": protocol,
        "task": task,
        "production": {"name": "prod", "url": "http://127.0.0.1:9001"},
        **extra,
    }
    if protocol == "jsonpath" and "jsonpath" not in raw:
        raw["jsonpath"] = "$.prediction"
    return Route.model_validate(raw)


def oip(*outputs: dict[str, Any]) -> bytes:
    return orjson.dumps({"model_name": "m", "id": "x", "outputs": list(outputs)})


def tensor(name: str, datatype: str, shape: list[Any], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def reason_of(route: Route, body: bytes, **kw: Any) -> str:
    with pytest.raises(ExtractError) as info:
        extract(route, body, **kw)
    return info.value.reason


# --- Open Inference Protocol ------------------------------------------------------------------

OIP_CASES: list[tuple[str, dict[str, Any], bytes, list[Any]]] = [
    # sklearn predict: INT64 [N,1]
    (
        "classification",
        {},
        oip(tensor("predict", "INT64", [3, 1], [0, 2, 1])),
        [0, 2, 1],
    ),
    # mapped through classes
    (
        "classification",
        {"classes": ["cat", "dog", "eel"]},
        oip(tensor("predict", "INT64", [2], [2, 0])),
        ["eel", "cat"],
    ),
    # predict_proba FP64 [N,k] flattened row-major → argmax per row
    (
        "classification",
        {},
        oip(tensor("predict_proba", "FP64", [2, 3], [0.1, 0.7, 0.2, 0.5, 0.3, 0.2])),
        [1, 0],
    ),
    (
        "probability",
        {},
        oip(tensor("predict_proba", "FP64", [2, 3], [0.1, 0.7, 0.2, 0.5, 0.3, 0.2])),
        [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]],
    ),
    # a scalar probability per row means binary [1-p, p]
    (
        "probability",
        {},
        oip(tensor("p", "FP32", [2, 1], [0.25, 1.0])),
        [[0.75, 0.25], [0.0, 1.0]],
    ),
    # binary score → class by threshold 0.5
    ("classification", {}, oip(tensor("p", "FP32", [2], [0.75, 0.25])), [1, 0]),
    ("regression", {}, oip(tensor("y", "FP32", [3], [1.5, -2, 0])), [1.5, -2.0, 0.0]),
    ("regression", {}, oip(tensor("y", "INT32", [1, 1], [7])), [7.0]),
    # BOOL tensor
    ("classification", {}, oip(tensor("b", "BOOL", [2], [True, False])), [1, 0]),
    # BYTES strings: text and string labels
    ("text", {}, oip(tensor("t", "BYTES", [2], ["hello", "world"])), ["hello", "world"]),
    ("classification", {}, oip(tensor("t", "BYTES", [2], ["spam", "ham"])), ["spam", "ham"]),
    # Triton classification extension, top-2 per instance, best first
    (
        "classification",
        {},
        oip(tensor("c", "BYTES", [2, 2], ["0.9:3:cat", "0.1:1:dog", "0.8:1", "0.2:0"])),
        ["cat", 1],
    ),
    (
        "classification",
        {"classes": ["a", "b"]},
        oip(tensor("c", "BYTES", [1, 1], ["0.7:1"])),
        ["b"],
    ),
    # named output chosen over the first
    (
        "regression",
        {"output": "second"},
        oip(tensor("first", "FP32", [1], [1.0]), tensor("second", "FP32", [1], [2.0])),
        [2.0],
    ),
    # nested data (some servers send it unflattened)
    (
        "probability",
        {},
        oip(tensor("p", "FP64", [2, 2], [[0.4, 0.6], [1.0, 0.0]])),
        [[0.4, 0.6], [1.0, 0.0]],
    ),
    # a scalar tensor (shape []) is one instance
    ("regression", {}, oip(tensor("y", "FP64", [], [3.5])), [3.5]),
    # an empty batch
    ("regression", {}, oip(tensor("y", "FP64", [0], [])), []),
]


@pytest.mark.parametrize(("task", "extra", "body", "expected"), OIP_CASES)
def test_openinference(task: str, extra: dict[str, Any], body: bytes, expected: list[Any]) -> None:
    assert extract(make_route("openinference", task, **extra), body) == expected


OIP_BAD: list[tuple[str, dict[str, Any], bytes, str]] = [
    ("regression", {}, b'{"outputs": []}', "no_output"),
    ("regression", {}, b'{"model_name": "m"}', "no_output"),
    ("regression", {}, b"[1, 2]", "no_output"),
    ("regression", {"output": "nope"}, oip(tensor("y", "FP32", [1], [1.0])), "no_output"),
    ("regression", {}, oip(tensor("y", "FP32", [2, 2], [1.0, 2.0, 3.0])), "bad_shape"),
    ("regression", {}, oip(tensor("y", "FP32", [-1], [1.0])), "bad_shape"),
    ("regression", {}, oip(tensor("y", "FP32", ["2"], [1.0, 2.0])), "bad_shape"),
    ("regression", {}, oip(tensor("y", "FP32", [1], ["1.0"])), "bad_type"),
    ("regression", {}, oip(tensor("y", "INT64", [1], [1.5])), "bad_type"),
    ("regression", {}, oip(tensor("y", "BOOL", [1], ["yes"])), "bad_type"),
    ("regression", {}, oip(tensor("y", "COMPLEX", [1], [1])), "bad_type"),
    ("regression", {}, oip(tensor("y", "BYTES", [1], ["1.0"])), "bad_type"),
    ("text", {}, oip(tensor("t", "BYTES", [1], [3])), "bad_type"),
    (
        "regression",
        {},
        oip({"name": "y", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}),
        "bad_shape",
    ),
    ("regression", {}, oip({"name": "y", "datatype": "FP32", "shape": [1]}), "no_output"),
    ("classification", {"classes": ["a"]}, oip(tensor("c", "INT64", [1], [4])), "bad_value"),
    ("probability", {}, oip(tensor("p", "FP32", [1, 2], [1.5, -0.5])), "bad_value"),
    ("classification", {}, oip(tensor("c", "FP32", [1], [2.5])), "bad_value"),
    ("regression", {}, b'{"outputs": [1]}', "bad_shape"),
    ("regression", {}, b'{"outputs": [', "bad_json"),
    ("regression", {}, b"", "bad_json"),
]


@pytest.mark.parametrize(("task", "extra", "body", "reason"), OIP_BAD)
def test_openinference_malformed(
    task: str, extra: dict[str, Any], body: bytes, reason: str
) -> None:
    assert reason_of(make_route("openinference", task, **extra), body) == reason


def test_openinference_non_finite_instance_is_none() -> None:
    head = b'{"outputs": [{"name": "y", "datatype": "FP64", '
    body = head + b'"shape": [3], "data": [1, NaN, -Infinity]}]}'
    assert extract(make_route("openinference", "regression"), body) == [1.0, None, None]
    prob = head + b'"shape": [2, 2], "data": [NaN, 1, 0.5, 0.5]}]}'
    assert extract(make_route("openinference", "probability"), prob) == [None, [0.5, 0.5]]
    assert extract(make_route("openinference", "classification"), prob) == [None, 0]


# --- KServe v1 / TF Serving -------------------------------------------------------------------

V1_CASES: list[tuple[str, str, dict[str, Any], Any, list[Any]]] = [
    ("kserve-v1", "classification", {}, {"predictions": [1, 0, 1]}, [1, 0, 1]),
    ("kserve-v1", "classification", {}, {"predictions": [[0.2, 0.8], [0.9, 0.1]]}, [1, 0]),
    (
        "kserve-v1",
        "classification",
        {"classes": ["no", "yes"]},
        {"predictions": [[0.2, 0.8]]},
        ["yes"],
    ),
    ("kserve-v1", "probability", {}, {"predictions": [0.3, [0.6, 0.4]]}, [[0.7, 0.3], [0.6, 0.4]]),
    ("kserve-v1", "regression", {}, {"predictions": [1.25, [2], 3]}, [1.25, 2.0, 3.0]),
    ("kserve-v1", "text", {}, {"predictions": ["a", "b"]}, ["a", "b"]),
    # objects: a single value, or recognised keys
    ("kserve-v1", "classification", {}, {"predictions": [{"label": "cat"}]}, ["cat"]),
    (
        "kserve-v1",
        "classification",
        {},
        {"predictions": [{"class": 2, "probability": 0.7}]},
        [2],
    ),
    (
        "kserve-v1",
        "probability",
        {},
        {"predictions": [{"probabilities": [0.1, 0.9], "label": 1}]},
        [[0.1, 0.9]],
    ),
    # TorchServe style: probability of the predicted class 0 → oriented vector
    (
        "kserve-v1",
        "probability",
        {},
        {"predictions": [{"class": 0, "probability": 0.8}, {"class": 1, "probability": 0.75}]},
        [[0.8, pytest.approx(0.2)], [0.25, 0.75]],
    ),
    ("kserve-v1", "regression", {}, {"predictions": [{"score": 4.5}]}, [4.5]),
    ("kserve-v1", "regression", {}, {"predictions": [{"anything": 4}]}, [4.0]),
    # label → score maps
    (
        "kserve-v1",
        "classification",
        {},
        {"predictions": [{"cat": 0.2, "dog": 0.7, "eel": 0.1}]},
        ["dog"],
    ),
    (
        "kserve-v1",
        "probability",
        {"classes": ["eel", "dog", "cat"]},
        {"predictions": [{"cat": 0.2, "dog": 0.7, "eel": 0.1}]},
        [[0.1, 0.7, 0.2]],
    ),
    # TF Serving row format with several named outputs
    (
        "tfserving",
        "probability",
        {"output": "probs"},
        {"predictions": [{"probs": [0.3, 0.7], "logits": [-1, 1]}]},
        [[0.3, 0.7]],
    ),
    (
        "tfserving",
        "classification",
        {},
        {"predictions": [{"classes": ["a", "b"], "scores": [0.1, 0.9]}]},
        ["b"],
    ),
    # TF Serving columnar
    ("tfserving", "regression", {}, {"outputs": [1.0, 2.0]}, [1.0, 2.0]),
    (
        "kserve-v1",
        "probability",
        {"output": "p"},
        {"outputs": {"q": [[1, 0]], "p": [[0.5, 0.5]]}},
        [[0.5, 0.5]],
    ),
    ("tfserving", "regression", {}, {"outputs": {"y": [3, 4]}}, [3.0, 4.0]),
    # :classify and :regress
    (
        "tfserving",
        "classification",
        {},
        {"result": [[["cat", 0.3], ["dog", 0.7]], [["cat", 0.9], ["dog", 0.1]]]},
        ["dog", "cat"],
    ),
    (
        "tfserving",
        "probability",
        {},
        {"result": [[["0", 0.3], ["1", 0.7]]]},
        [[0.3, 0.7]],
    ),
    (
        "tfserving",
        "probability",
        {"classes": ["dog", "cat"]},
        {"result": [[["cat", 0.3], ["dog", 0.7]]]},
        [[0.7, 0.3]],
    ),
    ("tfserving", "regression", {}, {"result": [0.5, 1.5]}, [0.5, 1.5]),
    ("tfserving", "regression", {}, {"results": [2.5]}, [2.5]),
    # an Open Inference response on a v1 route
    (
        "kserve-v1",
        "regression",
        {},
        {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [9]}]},
        [9.0],
    ),
]


@pytest.mark.parametrize(("protocol", "task", "extra", "doc", "expected"), V1_CASES)
def test_kserve_v1_and_tfserving(
    protocol: str, task: str, extra: dict[str, Any], doc: Any, expected: list[Any]
) -> None:
    assert extract(make_route(protocol, task, **extra), orjson.dumps(doc)) == expected


V1_BAD: list[tuple[str, str, dict[str, Any], bytes, str]] = [
    ("kserve-v1", "regression", {}, b'{"error": "model not loaded"}', "no_output"),
    ("kserve-v1", "regression", {}, b'{"predictions": 3}', "bad_shape"),
    ("kserve-v1", "regression", {}, b"[1]", "bad_shape"),
    ("kserve-v1", "regression", {}, b'{"predictions": ["x"]}', "bad_type"),
    ("kserve-v1", "regression", {}, b'{"predictions": [true]}', "bad_type"),
    ("kserve-v1", "regression", {}, b'{"predictions": [[1, 2]]}', "bad_type"),
    ("kserve-v1", "text", {}, b'{"predictions": [1]}', "bad_type"),
    ("kserve-v1", "regression", {}, b'{"predictions": [{"a": 1, "b": 2}]}', "bad_shape"),
    ("kserve-v1", "probability", {}, b'{"predictions": ["x"]}', "bad_type"),
    ("kserve-v1", "classification", {}, b'{"predictions": [null]}', "bad_type"),
    ("kserve-v1", "regression", {"output": "z"}, b'{"outputs": {"y": [1]}}', "no_output"),
    ("kserve-v1", "regression", {}, b'{"outputs": {}}', "no_output"),
    ("kserve-v1", "regression", {}, b'{"outputs": 5}', "bad_shape"),
    ("kserve-v1", "regression", {}, b'{"result": [1]}', "no_output"),
    ("tfserving", "regression", {}, b'{"result": 1}', "bad_shape"),
    ("tfserving", "classification", {}, b'{"result": [[["a"]]]}', "bad_shape"),
    ("tfserving", "classification", {}, b'{"result": [[["a", "x"]]]}', "bad_type"),
    ("tfserving", "classification", {}, b'{"result": [[]]}', "bad_shape"),
    ("tfserving", "regression", {}, b'{"result": [[["a", 0.5]]]}', "bad_type"),
    ("tfserving", "regression", {}, b'{"predictions": [1', "bad_json"),
    ("kserve-v1", "regression", {}, b'{"predictions": [1]} trailing', "bad_json"),
    ("kserve-v1", "regression", {}, b'{"predictions": [[[[[[[[[[[1]]]]]]]]]]]}', "bad_shape"),
]


@pytest.mark.parametrize(("protocol", "task", "extra", "body", "reason"), V1_BAD)
def test_kserve_v1_malformed(
    protocol: str, task: str, extra: dict[str, Any], body: bytes, reason: str
) -> None:
    assert reason_of(make_route(protocol, task, **extra), body) == reason


def test_tfserving_nan_tokens_parse() -> None:
    body = b'{"predictions": [1.5, NaN, Infinity, -Infinity, 2]}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    assert extract(make_route("tfserving", "regression"), body) == [1.5, None, None, None, 2.0]
    rows = b'{"predictions": [[0.5, NaN], [0.25, 0.75]]}'
    assert extract(make_route("tfserving", "probability"), rows) == [None, [0.25, 0.75]]
    assert extract(make_route("tfserving", "classification"), rows) == [None, 1]


def test_tolerant_parse_still_rejects_garbage_and_bad_unicode() -> None:
    route = make_route("tfserving", "regression")
    assert reason_of(route, b'{"predictions": [NaN') == "bad_json"
    assert reason_of(route, b'{"predictions": [Nan]}') == "bad_json"
    text = make_route("tfserving", "text")
    # a lone surrogate escape (accepted by the stdlib parser) is not text
    assert reason_of(text, b'{"predictions": ["\\ud800"], "x": NaN}') == "decode"


# --- OpenAI-compatible ------------------------------------------------------------------------


def test_openai_chat_and_completions() -> None:
    route = make_route("openai", "text")
    chat = {
        "object": "chat.completion",
        "choices": [
            {"index": 1, "message": {"role": "assistant", "content": "second"}},
            {"index": 0, "message": {"role": "assistant", "content": "first"}},
        ],
        "usage": {"total_tokens": 3},
    }
    assert extract(route, orjson.dumps(chat)) == ["first", "second"]
    completion = {"choices": [{"index": 0, "text": "done", "finish_reason": "stop"}]}
    assert extract(route, orjson.dumps(completion)) == ["done"]
    parts = {
        "choices": [
            {"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
        ]
    }
    assert extract(route, orjson.dumps(parts)) == ["ab"]


def test_openai_tool_call_is_canonical_json() -> None:
    route = make_route("openai", "text")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    doc = {"choices": [{"message": {"content": None, "tool_calls": [call]}}]}
    (text,) = extract(route, orjson.dumps(doc))
    assert json.loads(text) == [call]
    assert extract(route, b'{"choices": [{"message": {"content": null}}]}') == [""]


def test_openai_classification_route_takes_the_text_as_label() -> None:
    route = make_route("openai", "classification")
    assert extract(route, b'{"choices": [{"message": {"content": "spam"}}]}') == ["spam"]


def sse(*events: Any, done: bool = True, sep: str = "\n") -> bytes:
    lines = [f"data: {json.dumps(e)}{sep}{sep}" for e in events]
    if done:
        lines.append(f"data: [DONE]{sep}{sep}")
    return "".join(lines).encode()


def chunk(index: int, content: str | None, role: bool = False) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return {"object": "chat.completion.chunk", "choices": [{"index": index, "delta": delta}]}


def test_openai_stream_assembles_chunks_per_index() -> None:
    route = make_route("openai", "text")
    body = sse(
        chunk(0, None, role=True),
        chunk(1, "Bon"),
        chunk(0, "Hel"),
        chunk(0, "lo"),
        chunk(1, "jour"),
        {"object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 9}},
    )
    assert extract(route, body, content_type="text/event-stream; charset=utf-8") == [
        "Hello",
        "Bonjour",
    ]
    # sniffed without a content type, CRLF line endings, comments and event fields
    crlf = b": keep-alive\r\n\r\nevent: message\r\n" + sse(chunk(0, "x"), chunk(0, "y"), sep="\r\n")
    assert extract(route, crlf) == ["xy"]
    completions = sse({"choices": [{"index": 0, "text": "to"}]}, {"choices": [{"text": "ken"}]})
    assert extract(route, completions) == ["token"]


def test_openai_stream_gzip_and_malformed() -> None:
    route = make_route("openai", "text")
    body = sse(chunk(0, "ok"))
    assert extract(route, gzip.compress(body), content_encoding="gzip") == ["ok"]
    assert reason_of(route, b"data: {not json}\n\n") == "bad_json"
    assert reason_of(route, b"data: [DONE]\n\n") == "no_output"
    assert reason_of(route, sse({"error": {"message": "overloaded"}})) == "no_output"
    assert reason_of(route, sse({"choices": [{"delta": {"content": 5}}]})) == "bad_type"
    assert reason_of(route, sse({"choices": {"0": 1}})) == "bad_shape"
    assert reason_of(route, sse([1])) == "bad_shape"


OPENAI_BAD: list[tuple[bytes, str]] = [
    (b'{"choices": []}', "no_output"),
    (b'{"error": {"message": "x"}}', "no_output"),
    (b'{"choices": [1]}', "bad_shape"),
    (b'{"choices": [{"message": "x"}]}', "bad_shape"),
    (b'{"choices": [{"message": {"content": 3}}]}', "bad_type"),
    (b'{"choices": [{"text": null}]}', "bad_type"),
    (b'{"choices": [{"finish_reason": "stop"}]}', "no_output"),
    (b'{"choices": [{"index": -1, "text": "a"}]}', "bad_type"),
    (b'{"choices": [{"index": 0, "text": "a"}, {"index": 0, "text": "b"}]}', "bad_shape"),
    (b"not json", "bad_json"),
]


@pytest.mark.parametrize(("body", "reason"), OPENAI_BAD)
def test_openai_malformed(body: bytes, reason: str) -> None:
    assert reason_of(make_route("openai", "text"), body) == reason


# --- JSON path --------------------------------------------------------------------------------


def test_compile_path_subset() -> None:
    assert compile_path("$") == ()
    assert compile_path("$.a.b") == (("key", "a"), ("key", "b"))
    assert compile_path("$['a.b'][2][*].c") == (
        ("key", "a.b"),
        ("index", 2),
        ("wild", None),
        ("key", "c"),
    )
    assert compile_path('$["q\\"x"].*[-1]') == (("key", 'q"x'), ("wild", None), ("index", -1))
    assert compile_path("$.a") is compile_path("$.a")  # cached
    for bad in ("a.b", "$.", "$[", "$[x]", "$..a", "$.a b", "$['a]"):
        with pytest.raises(ExtractError) as info:
            compile_path(bad)
        assert info.value.reason == "bad_path"


JSONPATH_CASES: list[tuple[str, str, Any, list[Any]]] = [
    ("$.result.score", "regression", {"result": {"score": 0.5}}, [0.5]),
    ("$.data[*].score", "regression", {"data": [{"score": 1}, {"score": 2}]}, [1.0, 2.0]),
    ("$.probs", "probability", {"probs": [0.2, 0.8]}, [[0.2, 0.8]]),
    ("$.probs[*]", "probability", {"probs": [[0.2, 0.8], [1, 0]]}, [[0.2, 0.8], [1.0, 0.0]]),
    ("$['odd key'][0]", "text", {"odd key": ["x", "y"]}, ["x"]),
    ("$.m.*", "classification", {"m": {"a": 1, "b": 3}}, [1, 3]),
    ("$", "regression", 4, [4.0]),
    ("$.items[-1]", "classification", {"items": [0, 5]}, [5]),
    ("$.items[*]", "regression", {"items": []}, []),
]


@pytest.mark.parametrize(("path", "task", "doc", "expected"), JSONPATH_CASES)
def test_jsonpath(path: str, task: str, doc: Any, expected: list[Any]) -> None:
    route = make_route("jsonpath", task, jsonpath=path)
    assert extract(route, orjson.dumps(doc)) == expected


@pytest.mark.parametrize(
    ("path", "doc", "reason"),
    [
        ("$.missing", {"a": 1}, "no_output"),
        ("$.a[3]", {"a": [1]}, "no_output"),
        ("$.a[0]", {"a": {"0": 1}}, "no_output"),
        ("$.a[*]", {"a": 1}, "no_output"),
        ("$.a[*].b", {"a": [{"b": 1}, {"c": 2}]}, "no_output"),
        ("$.a", {"a": "x"}, "bad_type"),
    ],
)
def test_jsonpath_malformed(path: str, doc: Any, reason: str) -> None:
    route = make_route("jsonpath", "regression", jsonpath=path)
    assert reason_of(route, orjson.dumps(doc)) == reason


def test_a_jsonpath_that_cannot_be_read_is_a_config_error() -> None:
    """Refused when the config is validated (``config check``), at ``jsonpath``; extraction
    still answers ``bad_path`` for a route that was built around validation."""
    with pytest.raises(ValidationError) as info:
        make_route("jsonpath", "regression", jsonpath="$.a..b")
    (err,) = info.value.errors()
    assert err["loc"] == ("jsonpath",) and "cannot read from column 4" in err["msg"]
    route = make_route("jsonpath", "regression").model_copy(update={"jsonpath": "$.a..b"})
    assert reason_of(route, orjson.dumps({"a": 1})) == "bad_path"


# --- content encodings ------------------------------------------------------------------------


def test_gzip_and_deflate_bodies() -> None:
    route = make_route("kserve-v1", "regression")
    body = orjson.dumps({"predictions": [1, 2, 3]})
    assert extract(route, gzip.compress(body), content_encoding="gzip") == [1.0, 2.0, 3.0]
    assert extract(route, gzip.compress(body), content_encoding="X-Gzip") == [1.0, 2.0, 3.0]
    assert extract(route, zlib.compress(body), content_encoding="deflate") == [1.0, 2.0, 3.0]
    raw = zlib.compressobj(wbits=-15)
    raw_deflate = raw.compress(body) + raw.flush()
    assert extract(route, raw_deflate, content_encoding="deflate") == [1.0, 2.0, 3.0]
    assert extract(route, body, content_encoding="identity") == [1.0, 2.0, 3.0]
    twice = gzip.compress(zlib.compress(body))
    assert extract(route, twice, content_encoding="deflate, gzip") == [1.0, 2.0, 3.0]
    # a gzip stream of two members
    two = gzip.compress(body[:10]) + gzip.compress(body[10:])
    assert extract(route, two, content_encoding="gzip") == [1.0, 2.0, 3.0]


def test_bad_encodings() -> None:
    route = make_route("kserve-v1", "regression")
    body = orjson.dumps({"predictions": [1]})
    assert reason_of(route, body, content_encoding="gzip") == "decode"
    assert reason_of(route, gzip.compress(body)[:-12], content_encoding="gzip") == "decode"
    assert reason_of(route, gzip.compress(body) + b"junk", content_encoding="gzip") == "decode"
    assert reason_of(route, body, content_encoding="br") == "unsupported_encoding"
    # gzip-encoded body without the header: not JSON
    assert reason_of(route, gzip.compress(body)) == "bad_json"


def test_decompression_bomb_is_refused() -> None:
    bomb = gzip.compress(b" " * (MAX_DECODED_BYTES + 1), compresslevel=9)
    assert len(bomb) < 1 << 20
    with pytest.raises(ExtractError) as info:
        decode_body(bomb, "gzip")
    assert info.value.reason == "too_large"
    exact = gzip.compress(b" " * MAX_DECODED_BYTES, compresslevel=9)
    assert len(decode_body(exact, "gzip")) == MAX_DECODED_BYTES


# --- fuzz: nothing but ExtractError, and never "internal" -------------------------------------

PROTOCOLS = ("openinference", "kserve-v1", "tfserving", "openai", "jsonpath")
TASKS = ("classification", "probability", "regression", "text")
ROUTES = [
    make_route(p, t, **({"jsonpath": "$.a[*].b"} if p == "jsonpath" else {}))
    for p in PROTOCOLS
    for t in TASKS
] + [make_route("kserve-v1", "classification", classes=["x", "y"], output="o")]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["0.9:1:cat", "BYTES", "FP32", "INT64", "BOOL", "outputs", "data"]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "outputs",
                    "predictions",
                    "result",
                    "choices",
                    "message",
                    "content",
                    "text",
                    "delta",
                    "data",
                    "shape",
                    "datatype",
                    "name",
                    "a",
                    "b",
                    "o",
                    "label",
                    "classes",
                    "scores",
                    "index",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def check_contract(route: Route, body: bytes, **kw: Any) -> None:
    try:
        result = extract(route, body, **kw)
    except ExtractError as exc:
        assert exc.reason in REASONS
        assert exc.reason != "internal", exc.detail
        return
    assert isinstance(result, list)
    orjson.dumps(result)  # every extracted output can go into a record


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), encoding=st.sampled_from([None, "gzip", "deflate", "br"]))
def test_fuzz_arbitrary_bytes(body: bytes, encoding: str | None) -> None:
    for route in ROUTES:
        check_contract(route, body, content_encoding=encoding)


@settings(max_examples=400, deadline=None)
@given(doc=json_values, nan=st.booleans(), stream=st.booleans())
def test_fuzz_json_shapes(doc: Any, nan: bool, stream: bool) -> None:
    body = orjson.dumps(doc)
    if nan:
        body = body.replace(b"0.0", b"NaN", 1).replace(b"null", b"-Infinity", 1)
    if stream:
        body = b"data: " + body + b"\n\ndata: [DONE]\n\n"
    for route in ROUTES:
        check_contract(route, body)
        check_contract(route, gzip.compress(body), content_encoding="gzip")


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(min_value=0, max_value=4), max_size=3),
    datatype=st.sampled_from(["FP32", "INT64", "BOOL", "BYTES", "UINT8"]),
    data=st.lists(
        st.floats(allow_nan=False) | st.integers(-5, 5) | st.booleans() | st.text(max_size=4),
        max_size=16,
    ),
)
def test_fuzz_tensors(shape: list[int], datatype: str, data: list[Any]) -> None:
    body = oip(tensor("t", datatype, shape, data))
    for task in TASKS:
        route = make_route("openinference", task)
        check_contract(route, body)
        if math.prod(shape) == len(data):
            try:
                out = extract(route, body)
            except ExtractError:
                continue
            batch = shape[0] if len(shape) > 1 else (len(data) if shape else 1)
            assert len(out) == batch


def test_tolerant_parse_big_numbers() -> None:
    body = b'{"predictions": [NaN, 1e999, 12345678901234567890123]}'
    assert extract(make_route("tfserving", "regression"), body) == [
        None,
        None,
        1.2345678901234568e22,
    ]
    huge = b'{"predictions": [NaN, ' + b"9" * 400 + b"]}"
    assert reason_of(make_route("tfserving", "regression"), huge) == "bad_value"
    big_class = b'{"predictions": [NaN, 99999999999999999999999]}'
    assert reason_of(make_route("tfserving", "classification"), big_class) == "bad_value"


@settings(max_examples=200, deadline=None)
@given(
    head=st.binary(max_size=300),
    fill=st.sampled_from([b"", b"1,", b"[", b"{", b" ", b'"a",']),
    repeat=st.integers(0, 3 * SCAN_CHUNK // 2),
    tail=st.binary(max_size=300),
    limit=st.integers(0, 3 * SCAN_CHUNK),
)
def test_the_chunked_scan_answers_as_the_whole_bound_would(
    head: bytes, fill: bytes, repeat: int, tail: bytes, limit: int
) -> None:
    """The scan stops early, chunk by chunk; its answer is the whole body's bound against the
    limit, whatever the chunks' edges cut."""
    body = head + fill * repeat + tail
    expected = 0 < limit < len(body) and json_values_bound(body) > limit
    assert over_json_values(body, limit) is expected


def test_a_body_of_many_tiny_values_is_refused_from_its_first_chunks() -> None:
    body = b'{"instances": [' + b",".join(b"[1]" for _ in range(250_000)) + b"]}"
    assert over_json_values(body, 100_000)
    # The same bound crossed in the first chunk, then megabytes of one value: refused too.
    assert over_json_values(b"[" + b"1," * SCAN_CHUNK + b"1" + b" " * (8 << 20) + b"]", 1000)
    assert not over_json_values(b"[" + b"1," * 998 + b"1" + b" " * (8 << 20) + b"]", 1000)
