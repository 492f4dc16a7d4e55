"""Pull the prediction out of a model server's response: one prediction per instance.

``extract(route, body, content_encoding, content_type)`` decompresses the body if needed, finds
the prediction for the route's protocol (PROTOCOLS.md) and normalises it for the route's task:

* ``classification`` → a class label: ``int`` or ``str`` (the argmax of a probability vector,
  mapped through ``route.classes`` when given);
* ``probability`` → ``list[float]``, a class-probability vector (a scalar ``p`` means ``[1-p, p]``);
* ``regression`` → ``float``;
* ``text`` → ``str``.

An instance whose output is ``NaN`` or infinite yields ``None``. Anything malformed raises
``ExtractError`` whose ``reason`` is one of ``REASONS``; no other exception escapes.

>>> route = Route.model_validate({"name": "r", "protocol": "kserve-v1",
...     "task": "probability", "production": {"name": "m", "url": "http://127.0.0.1:1"}})
>>> extract(route, b'{"predictions": [0.25, [0.1, 0.9]]}')
[[0.75, 0.25], [0.1, 0.9]]
"""

from __future__ import annotations

import functools
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeGuard

import orjson

from shadowroute.core.config import Route

__all__ = [
    "MAX_DECODED_BYTES",
    "REASONS",
    "ExtractError",
    "compile_path",
    "decode_body",
    "extract",
    "json_values_bound",
    "over_json_values",
]

MAX_DECODED_BYTES: Final = 64 << 20
# Bound once: a module attribute looked up on every call costs more than a small call.
_orjson_loads: Final = orjson.loads
_INF: Final = math.inf

REASONS: Final = (
    "bad_json",  # the body (or an SSE event) is not JSON
    "no_output",  # the response has no prediction where the protocol puts it
    "bad_shape",  # the prediction is there but shaped wrong (tensor shape, lists, objects)
    "bad_type",  # a value has the wrong type for the datatype or task
    "bad_value",  # a value is out of range (probability outside [0, 1], class index unknown)
    "bad_path",  # the route's JSON path cannot be compiled
    "decode",  # the Content-Encoding could not be decoded (corrupt or truncated)
    "unsupported_encoding",  # a Content-Encoding other than gzip / deflate / identity
    "too_large",  # the decoded body exceeds MAX_DECODED_BYTES, or may hold over max_values values
    "internal",  # a bug: should never happen
)


class ExtractError(Exception):
    """The prediction could not be extracted; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def json_values_bound(data: bytes) -> int:
    """An upper bound on the JSON values (numbers, strings, arrays, objects, ...) ``data``
    holds, from its bytes without parsing it: every value but the first of a container
    follows a comma, and every container opens with a bracket (commas and brackets inside
    strings only raise the bound). Three scans at memory speed, where a parse of a body
    of many small values costs about 0.1 µs a value.

    >>> json_values_bound(b'{"instances": [[1, 2], [3, 4]]}')  # an object, 3 arrays, 4 ints
    8
    >>> json_values_bound(b"7")
    1
    """
    return _commas_and_openers(data, 0, len(data)) + 1


def _commas_and_openers(data: bytes, start: int, end: int) -> int:
    """Commas and opening brackets in ``data[start:end]``, without copying the slice."""
    commas = data.count(b",", start, end)
    return commas + data.count(b"[", start, end) + data.count(b"{", start, end)


SCAN_CHUNK = 1 << 16
"""Bytes ``over_json_values`` scans before it checks the bound it has so far."""


def over_json_values(data: bytes, limit: int) -> bool:
    """Whether ``data`` may hold more than ``limit`` JSON values (0: no limit), by
    ``json_values_bound``. A value takes a byte at least, so only a body longer than the limit
    is scanned, and the scan stops at the first ``SCAN_CHUNK`` past which the bound exceeds
    the limit: a body of 1 MB of tiny values is refused after ~0.4 MB of the three scans
    (~0.35 ms on the event loop instead of ~1.3 ms for all of it).

    >>> over_json_values(b"[1, 2, 3]", 3), over_json_values(b"[1, 2, 3]", 4)
    (True, False)
    >>> over_json_values(b"[1, 2, 3]", 0)
    False
    """
    size = len(data)
    if not 0 < limit < size:
        return False
    bound = 1
    for start in range(0, size, SCAN_CHUNK):
        bound += _commas_and_openers(data, start, start + SCAN_CHUNK)
        if bound > limit:
            return True
    return False


def extract(
    route: Route,
    body: bytes,
    content_encoding: str | None = None,
    content_type: str | None = None,
    max_values: int = 0,
) -> list[Any]:
    """Return one normalised prediction per instance in ``body``; a body that may hold more
    than ``max_values`` JSON values (when not 0) is not parsed: ``ExtractError("too_large")``."""
    try:
        raw = decode_body(body, content_encoding)
        if over_json_values(raw, max_values):
            raise ExtractError("too_large", f"more than {max_values} JSON values")
        instances = _instances(raw, route, content_type)
        # Direct calls, not a table of functions: the compiled build calls these natively.
        task = route.task
        if task == "regression":
            return [_regression(value, route) for value in instances]
        if task == "classification":
            return [_classification(value, route) for value in instances]
        if task == "probability":
            return [_probability(value, route) for value in instances]
        if task == "text":
            return [_text(value, route) for value in instances]
        raise ExtractError("internal", f"unknown task {task!r}")
    except ExtractError:
        raise
    except Exception as exc:  # the contract is "ExtractError only"; tests assert it never fires
        raise ExtractError("internal", repr(exc)) from exc


# --- body decoding ----------------------------------------------------------------------------


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate, identity; listed codings undone in reverse)."""
    if not content_encoding:
        return body
    for coding in reversed(content_encoding.split(",")):
        coding = coding.strip().lower()
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            try:
                body = _inflate(body, zlib.MAX_WBITS)
            except ExtractError as exc:
                if exc.reason != "decode":
                    raise
                body = _inflate(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
        else:
            raise ExtractError("unsupported_encoding", coding)
    return body


def _inflate(data: bytes, wbits: int) -> bytes:
    out = bytearray()
    members = 0
    while data and members < 1024:  # a gzip stream may hold several members
        members += 1
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(data, MAX_DECODED_BYTES + 1 - len(out))
        except zlib.error as exc:
            raise ExtractError("decode", str(exc)) from None
        if len(out) > MAX_DECODED_BYTES or inflater.unconsumed_tail:
            raise ExtractError("too_large", f"decoded body exceeds {MAX_DECODED_BYTES} bytes")
        if not inflater.eof:
            raise ExtractError("decode", "truncated stream")
        data = inflater.unused_data
    if data:
        raise ExtractError("decode", "too many members")
    return bytes(out)


_CONSTANTS: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _loads(data: bytes) -> Any:
    try:
        return _orjson_loads(data)
    except orjson.JSONDecodeError:
        pass
    # TF Serving (and Python's json.dumps) may emit NaN / Infinity tokens, which orjson rejects.
    if data.find(b"NaN") < 0 and data.find(b"Infinity") < 0:
        raise ExtractError("bad_json")  # nothing the slower parser would accept
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_CONSTANTS.__getitem__)
    except (ValueError, RecursionError):
        raise ExtractError("bad_json") from None


# --- Open Inference Protocol (KServe v2, Triton, MLServer, Seldon) ----------------------------


def _openinference(body: bytes, route: Route, content_type: str | None) -> list[Any]:
    return _oip_tensor(_loads(body), route)


def _oip_tensor(doc: Any, route: Route) -> list[Any]:
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise ExtractError("no_output", "no 'outputs'")
    tensor = _pick_output(outputs, route.output)
    data = tensor.get("data")
    if data is None:
        params = tensor.get("parameters")
        if isinstance(params, dict) and "binary_data_size" in params:
            raise ExtractError("bad_shape", "binary tensor data; request binary_data: false")
        raise ExtractError("no_output", "output has no 'data'")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ExtractError("bad_shape", f"bad shape {shape!r}")
    flat = _flatten(data)
    if math.prod(shape) != len(flat):
        raise ExtractError("bad_shape", f"shape {shape} does not hold {len(flat)} values")
    rows = _rows(_cast_all(tensor.get("datatype"), flat), shape)
    if tensor.get("datatype") == "BYTES" and route.task == "classification":
        rows = [_triton_class(r) for r in rows]
    return rows


def _pick_output(outputs: list[Any], name: str | None) -> dict[str, Any]:
    for tensor in outputs:
        if not isinstance(tensor, dict):
            raise ExtractError("bad_shape", "output is not an object")
        if name is None or tensor.get("name") == name:
            return tensor
    raise ExtractError("no_output", f"no output named {name!r}")


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack: list[Iterator[Any]] = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _rows(values: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) <= 1:
        return values
    width = math.prod(shape[1:])
    if width == 1:
        return values
    return [values[i * width : (i + 1) * width] for i in range(shape[0])]


_EXACT: Final = {"FP": float, "BF": float, "INT": int, "UINT": int, "BYTES": str}


def _cast_all(datatype: Any, flat: list[Any]) -> list[Any]:
    cast = _caster(datatype)
    exact = _EXACT.get(datatype.rstrip("0123456789"))
    if exact is not None and all(type(v) is exact for v in flat):
        return flat  # already the right type: the common case
    return [cast(v) for v in flat]


def _caster(datatype: Any) -> Callable[[Any], Any]:
    if not isinstance(datatype, str):
        raise ExtractError("bad_type", f"bad datatype {datatype!r}")
    if datatype == "BOOL":
        return _cast_bool
    if datatype.startswith(("INT", "UINT")):
        return _cast_int
    if datatype.startswith(("FP", "BF")):
        return _cast_float
    if datatype == "BYTES":
        return _cast_str
    raise ExtractError("bad_type", f"unknown datatype {datatype!r}")


def _cast_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if v in (0, 1) and _is_int(v):
        return bool(v)
    raise ExtractError("bad_type", f"BOOL tensor holds {v!r}")


def _cast_int(v: Any) -> int:
    if _is_int(v):
        return int(v)
    raise ExtractError("bad_type", f"integer tensor holds {v!r}")


def _cast_float(v: Any) -> float:
    if _is_number(v):
        return _to_float(v)
    raise ExtractError("bad_type", f"float tensor holds {v!r}")


def _cast_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise ExtractError("bad_type", f"BYTES tensor holds {type(v).__name__}")


_TRITON_CLASS: Final = re.compile(r"([^:]*):([0-9]+)(?::(.*))?", re.DOTALL)


def _triton_class(row: Any) -> Any:
    """Triton's classification extension: ``"<value>:<index>[:<label>]"``, best first."""
    if isinstance(row, list):
        if not row:
            raise ExtractError("bad_shape", "empty classification row")
        row = row[0]
    if not isinstance(row, str):
        return row
    match = _TRITON_CLASS.fullmatch(row)
    if match is None or not _is_float_text(match.group(1)):
        return row
    label = match.group(3)
    return label if label else int(match.group(2))


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- KServe v1 and TF Serving -----------------------------------------------------------------


def _kserve_v1(body: bytes, route: Route, content_type: str | None) -> list[Any]:
    return _predictions(_loads(body), route, tfserving=False)


def _tfserving(body: bytes, route: Route, content_type: str | None) -> list[Any]:
    return _predictions(_loads(body), route, tfserving=True)


def _predictions(doc: Any, route: Route, *, tfserving: bool) -> list[Any]:
    if not isinstance(doc, dict):
        raise ExtractError("bad_shape", "response is not an object")
    if "predictions" in doc:
        preds = doc["predictions"]
        if not isinstance(preds, list):
            raise ExtractError("bad_shape", "'predictions' is not a list")
        return preds
    if "outputs" in doc:
        return _columnar(doc, route)
    if tfserving:
        for key in ("result", "results"):
            if key in doc:
                return _tf_result(doc[key], route)
    raise ExtractError("no_output", "no 'predictions' or 'outputs'")


def _columnar(doc: dict[str, Any], route: Route) -> list[Any]:
    outputs = doc["outputs"]
    if (
        isinstance(outputs, list)
        and outputs
        and all(isinstance(t, dict) and "datatype" in t for t in outputs)
    ):
        return _oip_tensor(doc, route)  # an Open Inference response on a v1 route
    if isinstance(outputs, dict):
        if not outputs:
            raise ExtractError("no_output", "'outputs' is empty")
        if route.output is None:
            outputs = next(iter(outputs.values()))
        elif route.output in outputs:
            outputs = outputs[route.output]
        else:
            raise ExtractError("no_output", f"no output named {route.output!r}")
    if not isinstance(outputs, list):
        raise ExtractError("bad_shape", "columnar outputs are not a list")
    return outputs


def _tf_result(result: Any, route: Route) -> list[Any]:
    if not isinstance(result, list):
        raise ExtractError("bad_shape", "'result' is not a list")
    if not all(isinstance(r, list) for r in result):
        return result  # :regress
    return [_tf_classify(r, route) for r in result]


def _tf_classify(pairs: list[Any], route: Route) -> Any:
    if not pairs:
        raise ExtractError("bad_shape", "empty :classify result")
    scores: dict[Any, float] = {}
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ExtractError("bad_shape", "a :classify entry is not [label, score]")
        if not _is_number(pair[1]):
            raise ExtractError("bad_type", "a :classify score is not a number")
        scores[pair[0]] = _to_float(pair[1])
    if route.task == "classification":
        return _label_of_max(scores, route.classes)
    if route.task == "probability":
        return _score_vector(scores, route.classes)
    raise ExtractError("bad_type", f":classify result for a {route.task} route")


def _label_of_max(scores: dict[Any, float], classes: list[str] | None) -> Any:
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    if not finite:
        return None
    label = max(finite, key=finite.__getitem__)
    if classes and isinstance(label, str) and label not in classes and label.isdigit():
        return classes[int(label)] if int(label) < len(classes) else label
    return label


def _score_vector(scores: dict[Any, float], classes: list[str] | None) -> list[float]:
    if classes and all(c in scores for c in classes):
        return [scores[c] for c in classes]
    return list(scores.values())


# --- OpenAI-compatible chat / completions -----------------------------------------------------


def _openai(body: bytes, route: Route, content_type: str | None) -> list[Any]:
    if _is_event_stream(body, content_type):
        return _openai_stream(body)
    doc = _loads(body)
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ExtractError("no_output", "no 'choices'")
    texts: dict[int, str] = {}
    for pos, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise ExtractError("bad_shape", "a choice is not an object")
        index = _choice_index(choice, pos)
        if index in texts:
            raise ExtractError("bad_shape", f"choice index {index} repeated")
        texts[index] = _choice_text(choice)
    return [texts[i] for i in sorted(texts)]


def _choice_index(choice: dict[str, Any], default: int) -> int:
    index = choice.get("index", default)
    if not _is_int(index) or index < 0:
        raise ExtractError("bad_type", f"choice index {index!r}")
    return int(index)


def _choice_text(choice: dict[str, Any]) -> str:
    if "message" in choice:
        message = choice["message"]
        if not isinstance(message, dict):
            raise ExtractError("bad_shape", "'message' is not an object")
        return _message_text(message)
    if "text" in choice:
        text = choice["text"]
        if not isinstance(text, str):
            raise ExtractError("bad_type", "'text' is not a string")
        return text
    raise ExtractError("no_output", "choice has neither 'message' nor 'text'")


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if not all(isinstance(p, str) for p in parts):
            raise ExtractError("bad_type", "a text content part is not a string")
        return "".join(p for p in parts if isinstance(p, str))
    if content is not None:
        raise ExtractError("bad_type", "'content' is not a string")
    calls = message.get("tool_calls")
    if not calls:
        return ""
    # A tool call is the model's answer: compare its canonical JSON.
    try:
        return orjson.dumps(calls, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        raise ExtractError("bad_type", "tool_calls are not JSON") from None


def _is_event_stream(body: bytes, content_type: str | None) -> bool:
    if content_type and content_type.split(";")[0].strip().lower() == "text/event-stream":
        return True
    return body.lstrip()[:6].startswith((b"data:", b"event:", b":"))


_LINE_BREAK: Final = re.compile(rb"\r\n|\r|\n")


def _sse_events(body: bytes) -> Iterator[bytes]:
    data: list[bytes] = []
    for line in _LINE_BREAK.split(body):
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)


def _openai_stream(body: bytes) -> list[Any]:
    pieces: dict[int, list[str]] = {}
    for event in _sse_events(body):
        if event.strip() == b"[DONE]":
            continue
        chunk = _loads(event)
        if not isinstance(chunk, dict):
            raise ExtractError("bad_shape", "an event is not an object")
        if "error" in chunk:
            raise ExtractError("no_output", "the stream reported an error")
        choices = chunk.get("choices", [])
        if not isinstance(choices, list):
            raise ExtractError("bad_shape", "'choices' is not a list")
        for pos, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise ExtractError("bad_shape", "a choice is not an object")
            piece = _delta_text(choice)
            parts = pieces.setdefault(_choice_index(choice, pos), [])
            if piece:
                parts.append(piece)
    if not pieces:
        raise ExtractError("no_output", "no choices in the stream")
    return ["".join(pieces[i]) for i in sorted(pieces)]


def _delta_text(choice: dict[str, Any]) -> str | None:
    delta = choice.get("delta")
    piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    if piece is not None and not isinstance(piece, str):
        raise ExtractError("bad_type", "streamed content is not a string")
    return piece


# --- generic JSON path ------------------------------------------------------------------------

Step = tuple[str, Any]  # ("key", str) | ("index", int) | ("wild", None)

_STEP: Final = re.compile(
    r"""\.\*|\[\*\]|\[(?P<index>-?[0-9]+)\]"""
    r"""|\[(?P<quoted>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\]"""
    r"""|\.(?P<key>[^.\[\]\s'"]+)"""
)


@functools.lru_cache(maxsize=256)
def compile_path(path: str) -> tuple[Step, ...]:
    """Compile a JSONPath subset: ``$``, ``.key``, ``['key']``, ``[N]``, ``[*]``, ``.*``.

    >>> compile_path("$.outputs[0]['data'][*]")
    (('key', 'outputs'), ('index', 0), ('key', 'data'), ('wild', None))
    """
    if not path.startswith("$"):
        raise ExtractError("bad_path", f"{path!r} must start with '$'")
    steps: list[Step] = []
    pos = 1
    while pos < len(path):
        match = _STEP.match(path, pos)
        if match is None:
            raise ExtractError("bad_path", f"{path!r}: cannot read from column {pos + 1}")
        if match.group("index") is not None:
            steps.append(("index", int(match.group("index"))))
        elif match.group("quoted") is not None:
            steps.append(("key", re.sub(r"\\(.)", r"\1", match.group("quoted")[1:-1])))
        elif match.group("key") is not None:
            steps.append(("key", match.group("key")))
        else:
            steps.append(("wild", None))
        pos = match.end()
    return tuple(steps)


def _jsonpath(body: bytes, route: Route, content_type: str | None) -> list[Any]:
    if not route.jsonpath:
        raise ExtractError("bad_path", "the route has no jsonpath")
    steps = compile_path(route.jsonpath)
    values = [_loads(body)]
    for kind, arg in steps:
        values = [child for value in values for child in _step(value, kind, arg)]
    if any(kind == "wild" for kind, _ in steps):
        return values
    return values[:1]


def _step(value: Any, kind: str, arg: Any) -> list[Any]:
    if kind == "key" and isinstance(value, dict) and arg in value:
        return [value[arg]]
    if kind == "index" and isinstance(value, list) and -len(value) <= arg < len(value):
        return [value[arg]]
    if kind == "wild" and isinstance(value, list):
        return value
    if kind == "wild" and isinstance(value, dict):
        return list(value.values())
    raise ExtractError("no_output", f"path step {kind} {arg!r} matches nothing")


# --- normalisation per task -------------------------------------------------------------------

_MAX_UNWRAP: Final = 8
_CLASS_KEYS: Final = (
    "label",
    "class",
    "predicted_class",
    "predicted_label",
    "class_id",
    "prediction",
    "predictions",
)
_PROBA_KEYS: Final = ("probabilities", "probability", "probs", "proba", "scores")
_KEYS: Final = {
    "classification": (*_CLASS_KEYS, *_PROBA_KEYS),
    "probability": _PROBA_KEYS,
    "regression": ("value", "prediction", "predictions", "score", "output", "outputs"),
    "text": ("text", "generated_text", "content", "output", "prediction", "predictions"),
}


def _from_object(obj: dict[str, Any], route: Route) -> Any:
    if route.output is not None and route.output in obj:
        return obj[route.output]
    classes: Any = obj.get("classes")
    scores: Any = obj.get("scores")
    if route.task in ("classification", "probability") and _paired(classes, scores):
        table = {c: _to_float(s) for c, s in zip(classes, scores, strict=True)}
        if route.task == "classification":
            return _label_of_max(table, route.classes)
        return _score_vector(table, route.classes)
    for key in _KEYS[route.task]:
        if key in obj:
            value = obj[key]
            if route.task == "probability" and _is_number(value):
                return _oriented(_to_float(value), obj)
            return value
    if len(obj) == 1:
        return next(iter(obj.values()))
    if route.task in ("classification", "probability") and _is_score_map(obj):
        table = {k: _to_float(v) for k, v in obj.items()}
        if route.task == "classification":
            return _label_of_max(table, route.classes)
        return _score_vector(table, route.classes)
    raise ExtractError("bad_shape", f"cannot tell which of {sorted(obj)[:8]} is the prediction")


def _paired(classes: Any, scores: Any) -> bool:
    return (
        isinstance(classes, list)
        and isinstance(scores, list)
        and len(classes) == len(scores) > 0
        and all(isinstance(c, str | int) and not isinstance(c, bool) for c in classes)
        and all(_is_number(s) for s in scores)
    )


def _is_score_map(obj: dict[str, Any]) -> bool:
    return len(obj) > 1 and all(_is_number(v) for v in obj.values())


def _oriented(p: float, obj: dict[str, Any]) -> Any:
    """``{"class": 0, "probability": 0.9}`` (TorchServe style) is ``p(class 0)``."""
    predicted = obj.get("class", obj.get("label"))
    if predicted in (0, "0") and not isinstance(predicted, bool) and 0.0 <= p <= 1.0:
        return [p, 1.0 - p]
    return p


def _unwrap(value: Any, route: Route, *, keep_lists: bool = False) -> Any:
    for _ in range(_MAX_UNWRAP):
        if isinstance(value, dict):
            value = _from_object(value, route)
        elif isinstance(value, list) and len(value) == 1 and not keep_lists:
            value = value[0]
        else:
            return value
    raise ExtractError("bad_shape", "prediction nested too deeply")


def _classification(value: Any, route: Route) -> Any:
    if type(value) is int:
        return _class_of(value, route.classes)
    if type(value) is list and len(value) > 1 and _all_finite_floats(value):
        return _class_of(max(range(len(value)), key=value.__getitem__), route.classes)
    if value is None:
        raise ExtractError("bad_type", "null is not a class")
    value = _unwrap(value, route)
    if value is None:
        return None
    if isinstance(value, str):
        return _checked_str(value)
    if isinstance(value, int):  # bool included: False/True are classes 0/1
        return _class_of(int(value), route.classes)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer():
            return _class_of(int(value), route.classes)
        if 0.0 <= value <= 1.0:  # a binary score
            return _class_of(int(value >= 0.5), route.classes)
        raise ExtractError("bad_value", f"{value} is neither a class nor a probability")
    if isinstance(value, list) and len(value) > 1 and all(_is_number(v) for v in value):
        scores = [_to_float(v) for v in value]
        finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
        if len(finite) < len(scores):
            return None
        return _class_of(max(finite, key=scores.__getitem__), route.classes)
    raise ExtractError("bad_type", f"a {type(value).__name__} is not a class")


def _class_of(index: int, classes: list[str] | None) -> Any:
    if classes is None:
        if abs(index) >= 1 << 63:
            raise ExtractError("bad_value", "class index out of range")
        return index
    if 0 <= index < len(classes):
        return classes[index]
    raise ExtractError("bad_value", f"class index {index} outside the {len(classes)} classes")


_SLACK: Final = 1e-6  # float32 rounding can push a probability just past 0 or 1


def _probability(value: Any, route: Route) -> list[float] | None:
    if _is_unit_vector(value):
        return value  # the common case: a list of floats already in [0, 1]
    for _ in range(_MAX_UNWRAP):
        value = _unwrap(value, route, keep_lists=True)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        else:
            break
    if _is_number(value):
        p = _to_float(value)
        vector = [1.0 - p, p] if math.isfinite(p) else [p]
    elif isinstance(value, list) and len(value) > 1 and all(_is_number(v) for v in value):
        vector = [_to_float(v) for v in value]
    else:
        raise ExtractError("bad_type", "not a probability or a probability vector")
    if not all(math.isfinite(p) for p in vector):
        return None
    if not all(-_SLACK <= p <= 1.0 + _SLACK for p in vector):
        raise ExtractError("bad_value", "a probability lies outside [0, 1]")
    return [min(1.0, max(0.0, p)) for p in vector]


def _regression(value: Any, route: Route) -> float | None:
    # Finite: between the infinities (NaN compares false), without a call per value.
    if type(value) is float and -_INF < value < _INF:
        return value
    value = _unwrap(value, route)
    if not _is_number(value):
        raise ExtractError("bad_type", f"a {type(value).__name__} is not a number")
    number = _to_float(value)
    return number if -_INF < number < _INF else None


def _text(value: Any, route: Route) -> str:
    value = _unwrap(value, route)
    if not isinstance(value, str):
        raise ExtractError("bad_type", f"a {type(value).__name__} is not text")
    return _checked_str(value)


def _checked_str(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ExtractError("decode", "string is not valid Unicode") from None
    return value


# --- small helpers ----------------------------------------------------------------------------


def _is_unit_vector(value: Any) -> TypeGuard[list[float]]:
    return (
        type(value) is list
        and len(value) > 1
        and all(type(p) is float and 0.0 <= p <= 1.0 for p in value)
    )


def _all_finite_floats(values: list[Any]) -> bool:
    return all(type(v) is float and -math.inf < v < math.inf for v in values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _to_float(v: Any) -> float:
    try:
        return float(v)
    except (OverflowError, TypeError, ValueError):
        raise ExtractError("bad_value", "number out of range") from None


def _instances(body: bytes, route: Route, content_type: str | None) -> list[Any]:
    """The raw prediction of each instance, found where ``route.protocol`` puts them."""
    protocol = route.protocol
    if protocol == "kserve-v1":
        return _kserve_v1(body, route, content_type)
    if protocol == "openinference":
        return _openinference(body, route, content_type)
    if protocol == "tfserving":
        return _tfserving(body, route, content_type)
    if protocol == "openai":
        return _openai(body, route, content_type)
    if protocol == "jsonpath":
        return _jsonpath(body, route, content_type)
    raise ExtractError("internal", f"unknown protocol {protocol!r}")
