"""Hostile input: config files, pair and label records, label batches over HTTP, and request
heads and bodies at the proxy. Never a crash or an unexpected exception, always a clear
error, nothing good dropped."""

from __future__ import annotations

import contextlib
import socket
import string
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client.registry import CollectorRegistry
from relhelp import LONG, post, report
from threaded import LoopThread

from proxyutil import CollectingSink, make_config
from shadowroute.api.app import ControlContext, create_app
from shadowroute.api.labels import label_routes
from shadowroute.configfile import load_config
from shadowroute.core.config import Config, ConfigError, parse_config
from shadowroute.core.label_rules import LabelRules
from shadowroute.core.records import LabelRecord, RecordError, decode_pair, parse_label_batch
from shadowroute.dataplane.server import DataPlane, listen_socket
from upstreams import ModelServer

EXAMPLES = 1000 if LONG else 150
FAST = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- config files ------------------------------------------------------------------------------

CONFIG_KEYS = [
    "listen", "admin", "transport", "proxy", "mirror", "records", "comparator", "routes", "name",
    "path_prefix", "host", "protocol", "task", "production", "candidates", "url", "timeout_s",
    "fraction", "max_in_flight", "capture", "drift", "policy", "port", "token", "bootstrap",
    "kind", "spool", "topics", "breaker", "failures", "classes", "output", "jsonpath", "headers",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["http://127.0.0.1:1", "kserve-v1", "regression", "kafka", "", "-1", "1e999"]),
)
keys = st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=10))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=25,
)
VALID: dict[str, Any] = {
    "routes": [
        {
            "name": "fraud",
            "protocol": "kserve-v1",
            "task": "regression",
            "production": {"name": "p", "url": "http://127.0.0.1:1"},
            "candidates": [{"name": "c", "url": "http://127.0.0.1:2"}],
        }
    ]
}


def _mutate(doc: Any, path: Sequence[Any], value: Any) -> Any:
    """``doc`` with the node at ``path`` (indices taken modulo, keys as given) replaced."""
    if not path:
        return value
    if isinstance(doc, dict) and doc:
        key = sorted(doc)[path[0] % len(doc)] if isinstance(path[0], int) else path[0]
        return {**doc, key: _mutate(doc.get(key), path[1:], value)}
    if isinstance(doc, list) and doc:
        i = path[0] % len(doc) if isinstance(path[0], int) else 0
        return [*doc[:i], _mutate(doc[i], path[1:], value), *doc[i + 1 :]]
    return value


def _parse(doc: object) -> None:
    try:
        assert isinstance(parse_config(doc, environ={}), Config)
    except ConfigError as exc:
        assert exc.args and all(isinstance(p, str) and p for p in exc.args[0])


@FAST
@given(documents)
def test_random_config_documents_give_a_config_or_a_config_error(doc: object) -> None:
    _parse(doc)


@FAST
@given(
    st.lists(st.one_of(st.integers(0, 7), keys), min_size=1, max_size=6),
    documents,
)
def test_mutated_valid_configs_give_a_config_or_a_config_error(path: list[Any], value: Any) -> None:
    _parse(_mutate(VALID, path, value))


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("configs")


@FAST
@given(st.one_of(st.text(max_size=300), documents.map(lambda d: yaml.safe_dump(d))))
def test_random_yaml_files_give_a_config_or_a_config_error(cfg_dir: Path, text: str) -> None:
    path = cfg_dir / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(ConfigError):
        load_config(path, environ={})


# --- pair and label records ----------------------------------------------------------------

GOOD_PAIR = {
    "v": 1, "id": "r1", "route": "fraud", "ts": 1764100000123,
    "production": {"model": "p", "version": "1", "status": 200, "latency_ms": 1.5,
                   "output": [1.0], "error": None},
    "candidate": {"model": "c", "version": None, "status": 200, "latency_ms": 2.5,
                  "output": [2.0], "error": None},
    "input": None,
}  # fmt: skip
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False), st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)  # fmt: skip


def test_the_reference_pair_record_decodes() -> None:
    assert decode_pair(orjson.dumps(GOOD_PAIR)).id == "r1"


@FAST
@given(
    st.one_of(
        st.binary(max_size=300),
        json_values.map(orjson.dumps),
        st.tuples(st.lists(st.sampled_from([*GOOD_PAIR, "model", "status", "output"]),
                           min_size=1, max_size=3), json_values)
        .map(lambda pv: orjson.dumps(_mutate(GOOD_PAIR, pv[0], pv[1]))),
    )
)  # fmt: skip
def test_pair_records_decode_or_raise_record_error(value: bytes) -> None:
    try:
        decode_pair(value)
    except RecordError as exc:
        assert exc.reason


label_objs = st.one_of(
    st.fixed_dictionaries(
        {"id": st.text(max_size=12), "label": json_values},
        optional={"ts": json_values, "route": json_values, "v": json_values},
    ),
    json_values,
)
label_bodies = st.one_of(
    st.binary(max_size=400),
    st.lists(label_objs, max_size=8).map(orjson.dumps),
    st.lists(label_objs.map(orjson.dumps), max_size=8).map(b"\n".join),
    st.lists(st.lists(st.text(string.printable, max_size=8), max_size=4), max_size=6).map(
        lambda rows: ("id,label,ts\n" + "\n".join(",".join(r) for r in rows)).encode()
    ),
)
content_types = st.sampled_from(
    [None, "application/json", "application/x-ndjson", "text/csv", "text/plain", "x/y; q=1"]
)


@FAST
@given(label_bodies, content_types)
def test_label_batches_parse_without_exceptions(body: bytes, ctype: str | None) -> None:
    good, bad = parse_label_batch(body, ctype, 1764100000000)
    assert all(isinstance(g, LabelRecord) for g in good)
    assert all(isinstance(n, int) and n >= 0 and isinstance(r, str) and r for n, r in bad)


# --- label batches over HTTP ------------------------------------------------------------------

TOKEN = "t0ken-for-tests"


class ListWriter:
    def __init__(self) -> None:
        self.labels: list[LabelRecord] = []

    async def write_labels(self, labels: Sequence[LabelRecord]) -> None:
        self.labels.extend(labels)
        return None


def control_context(cfg: Config, writer: ListWriter, **kw: Any) -> ControlContext:
    return ControlContext(
        config=cfg,
        registry=CollectorRegistry(),
        ready=lambda: True,
        extra_routes=label_routes(writer),
        **kw,
    )


@pytest.fixture(scope="module")
def labels_api() -> Iterator[tuple[str, ListWriter]]:
    cfg = make_config("http://127.0.0.1:1", top={"admin": {"token": TOKEN}})
    writer = ListWriter()
    with LoopThread() as lt:

        async def start() -> web.AppRunner:
            runner = web.AppRunner(create_app(control_context(cfg, writer)))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            return runner

        runner = lt.run(start())
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}", writer
        lt.run(runner.cleanup())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _good_line(i: int) -> dict[str, Any]:
    return {"id": f"good-{i}", "label": i % 2, "ts": _now_ms() - i}


@FAST
@given(
    st.lists(st.one_of(st.integers(0, 10**6).map(_good_line), label_objs), max_size=10),
    st.sampled_from(["json", "lines"]),
)
def test_label_endpoint_keeps_good_lines_and_names_bad_ones(
    labels_api: tuple[str, ListWriter], items: list[Any], fmt: str
) -> None:
    url, writer = labels_api
    if fmt == "json":
        body, ctype = orjson.dumps(items), "application/json"
    else:
        body, ctype = b"\n".join(orjson.dumps(x) for x in items), "application/x-ndjson"
    now = _now_ms()
    parsed, expected_bad = parse_label_batch(body, ctype, now)
    rules = LabelRules.of(make_config("http://127.0.0.1:1"))
    expected_good, refused = rules.split(parsed, now)  # ts near receipt, bounded values
    before = len(writer.labels)
    r = httpx.post(
        url + "/v1/labels",
        content=body,
        headers={"Content-Type": ctype, "Authorization": "Bearer " + TOKEN},
        timeout=10,
    )
    doc = r.json()
    new = writer.labels[before:]
    assert [lab.id for lab in new] == [g.id for g in expected_good]  # nothing good dropped
    goods = [x for x in items if isinstance(x, dict) and str(x.get("id", "")).startswith("good-")]
    assert {x["id"] for x in goods} <= {lab.id for lab in new}
    if expected_bad or refused:
        assert r.status_code == 400
        assert [e["line"] for e in doc["errors"]] == [n for n, _ in expected_bad]
        assert all(e["reason"] for e in doc["errors"])
        assert [(x["id"], x["reason"]) for x in doc.get("labels", [])] == refused
    elif expected_good:
        assert r.status_code == 202
    else:
        assert r.status_code == 400 and doc["error"]
    assert doc.get("accepted", 0) == len(expected_good)


def test_label_endpoint_mixed_batch_figures(labels_api: tuple[str, ListWriter]) -> None:
    url, writer = labels_api
    lines = [orjson.dumps(_good_line(i)) for i in range(1000)]
    for i in range(0, 1000, 10):
        lines[i] = b'{"id": "bad line' if i % 20 else b'{"label": 1}'
    before = len(writer.labels)
    r = httpx.post(
        url + "/v1/labels",
        content=b"\n".join(lines),
        headers={"Content-Type": "application/x-ndjson", "Authorization": "Bearer " + TOKEN},
    )
    doc = r.json()
    report(
        "labels: mixed batch over HTTP",
        status=r.status_code,
        accepted=doc["accepted"],
        rejected=doc["rejected"],
        first_errors=doc["errors"][:2],
    )
    assert r.status_code == 400
    assert doc["accepted"] == 900 and doc["rejected"] == 100
    assert [e["line"] for e in doc["errors"]] == list(range(1, 1001, 10))
    assert len(writer.labels) - before == 900


# --- request heads and bodies at the proxy -----------------------------------------------------


@pytest.fixture(scope="module")
def proxy_thread() -> Iterator[tuple[int, ModelServer, DataPlane, LoopThread]]:
    with LoopThread() as lt:
        cand = ModelServer()

        async def start() -> tuple[ModelServer, DataPlane]:
            prod = await ModelServer().start()
            await cand.start()
            cfg = make_config(
                prod.url,
                [{"name": "c", "url": cand.url}],
                top={"proxy": {"max_header_bytes": 8192, "max_headers": 50, "head_timeout_s": 3}},
            )
            dp = DataPlane(
                cfg, CollectingSink(), sock=listen_socket("127.0.0.1", 0, reuse_port=False)
            )
            await dp.start()
            return prod, dp

        prod, dp = lt.run(start())
        yield dp.port, prod, dp, lt
        lt.run(dp.stop())
        lt.run(prod.stop())
        lt.run(cand.stop())


def _exchange(port: int, data: bytes, wait: float = 0.25, idle: float = 0.1) -> bytes:
    """Send ``data``; read until the proxy closes, or ``idle`` s pass with nothing more after
    some bytes came, or ``wait`` s pass with nothing at all (an incomplete request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        with contextlib.suppress(OSError):  # the proxy may refuse and close before reading all
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                s.settimeout(idle)
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def _check_then_good_request(port: int, out: bytes, lt: LoopThread) -> None:
    if out:
        status = int(out.split(b" ", 2)[1])
        assert out.startswith(b"HTTP/1.1 ") and (200 <= status < 500 or status == 501), out[:100]
        if status >= 400:
            assert b'"error"' in out
    assert lt.alive
    ok = _exchange(port, post(extra=b"Connection: close\r\n"), wait=3, idle=1)
    assert ok.startswith(b"HTTP/1.1 200"), ok[:200]


header_names = st.one_of(
    st.binary(min_size=1, max_size=20),
    st.text(string.ascii_letters + "-_", min_size=1, max_size=20).map(str.encode),
    st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection",
                     b"Expect", b"Upgrade", b"x-request-id", b"x-shadow-mirror"]),
)  # fmt: skip
header_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"chunked", b"-1", b"99999999999999999999", b"close", b"100-continue",
                     b"websocket", b"force", b"0", b"5", b"a\r\nb"]),
)  # fmt: skip


@settings(  # no shrinking: examples use sockets and incomplete ones wait for a response
    FAST, max_examples=500 if LONG else 40, phases=[Phase.explicit, Phase.generate]
)
@given(
    st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"BREW", b"CONNECT", b""]),
    st.one_of(st.sampled_from([b"/", b"/p", b"*", b"http://x/", b"//x"]), st.binary(max_size=30)),
    st.lists(st.tuples(header_names, header_values), max_size=12),
    st.binary(max_size=200),
    st.integers(0, 400),
)
def test_random_request_heads_and_bodies(
    proxy_thread: tuple[int, ModelServer, DataPlane, LoopThread],
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    cut: int,
) -> None:
    port, _, _, lt = proxy_thread
    head = method + b" " + target + b" HTTP/1.1\r\n"
    head += b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    data = head + b"\r\n" + body
    if cut:
        data = data[: max(1, len(data) - cut)]  # truncated requests too
    _check_then_good_request(port, _exchange(port, data), lt)


BIG = b'{"instances": [[1]], "pad": "' + b"x" * (3 << 20) + b'"}'


@pytest.mark.parametrize(
    "case",
    ["random_bytes", "header_flood", "huge_header", "oversized_body", "slow_partial_head"],
)
def test_hostile_requests_are_refused_and_good_ones_still_served(
    proxy_thread: tuple[int, ModelServer, DataPlane, LoopThread], case: str
) -> None:
    port, prod, dp, lt = proxy_thread
    seen_before = len(prod.seen)
    data = {
        "random_bytes": bytes(range(256)) * 8,
        "header_flood": b"GET / HTTP/1.1\r\nHost: h\r\n"
        + b"".join(b"x-h%d: v\r\n" % i for i in range(5000))
        + b"\r\n",
        "huge_header": b"GET / HTTP/1.1\r\nHost: h\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n",
        "oversized_body": post(BIG, extra=b"Connection: close\r\n"),
        "slow_partial_head": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Len",
    }[case]
    out = _exchange(port, data, wait=10, idle=2)
    status = int(out.split(b" ", 2)[1]) if out else None
    report(f"hostile request: {case}", status=status, rejected=dict(dp.stats.rejected))
    expected = {
        "random_bytes": 400,
        "header_flood": 431,
        "huge_header": 431,
        "oversized_body": 200,  # forwarded (not mirrored: over the capture limit)
        "slow_partial_head": 408,  # the head timeout (3 s here) passed before the head ended
    }[case]
    assert status == expected, out[:200]
    if case == "oversized_body":
        assert prod.seen[-1].body == BIG
    else:
        assert len(prod.seen) == seen_before
    _check_then_good_request(port, out, lt)
