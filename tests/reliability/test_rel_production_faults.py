"""Production faults: the client gets a clear 502/504 (JSON) or production's own 5xx, byte for
byte, and the pair record says what production did."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from relhelp import HalfThenAbortServer, post, report

from proxyutil import free_port, make_config, running_proxy, settle
from upstreams import ModelServer, Reply, raw_request, split_response

CLOSE = b"Connection: close\r\n"
FIVE_XX = Reply(
    status=503,
    body=b'{"error": "model overloaded"}',
    headers=[(b"content-type", b"application/json"), (b"retry-after", b"1")],
)


def _config(prod_url: str, cand_url: str, timeout_s: float = 2.0) -> Any:
    return make_config(
        prod_url,
        [{"name": "cand", "url": cand_url}],
        production={"name": "prod-v1", "url": prod_url, "timeout_s": timeout_s, "version": "1"},
        monitor_fraction=0.0,
    )


@pytest.mark.parametrize(
    ("fault", "status", "record_error"),
    [
        ("down", 502, "connect"),
        ("slow", 504, "timeout"),
        ("reset_before_head", 502, "reset"),
        ("http_5xx", 503, "http_5xx"),
    ],
)
async def test_production_fault_gives_a_clear_answer_and_is_recorded(
    fault: str, status: int, record_error: str
) -> None:
    cand = await ModelServer().start()
    prod: ModelServer | None = None
    if fault == "down":
        prod_url = f"http://127.0.0.1:{free_port()}"
    else:
        behave = {
            "slow": Reply(body=b'{"predictions": [1]}', delay=1.0),
            "reset_before_head": Reply(reset=True),
            "http_5xx": FIVE_XX,
        }[fault]
        prod = await ModelServer(lambda s: behave).start()
        prod_url = prod.url
    direct = await raw_request(prod.port, post(extra=CLOSE)) if fault == "http_5xx" else b""
    try:
        async with running_proxy(_config(prod_url, cand.url, timeout_s=0.3)) as (dp, sink):
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            out = await raw_request(
                dp.port, post(rid=b"rid-" + fault.encode(), extra=CLOSE), timeout=5
            )
            elapsed = loop.time() - t0
            await settle(dp)
            records = sink.decoded()
            requests = dict(dp.stats.requests)
    finally:
        await cand.stop()
        if prod is not None:
            await prod.stop()
    line, headers, body = split_response(out)
    report(
        f"production fault: {fault}",
        client_status=int(line.split()[1]),
        answered_in_ms=round(elapsed * 1000, 1),
        record_error=records[0]["production"]["error"] if records else None,
        requests=[[*k, v] for k, v in requests.items()],
    )
    assert line.startswith(b"HTTP/1.1 %d" % status)
    assert headers[b"x-request-id"] == b"rid-" + fault.encode()
    if fault == "http_5xx":
        # production's own 5xx, unchanged (less our per-hop headers)
        d_line, d_headers, d_body = split_response(direct)
        assert (line, body) == (d_line, d_body)
        assert headers[b"retry-after"] == b"1" and headers[b"content-type"] == b"application/json"
    else:
        assert headers[b"content-type"] == b"application/json"
        doc = orjson.loads(body)
        assert doc["status"] == status and doc["request_id"] == "rid-" + fault
        assert isinstance(doc["error"], str) and doc["error"]
    assert elapsed < 2.0  # the slow case answers at the production timeout, not later
    [rec] = records
    assert rec["id"] == "rid-" + fault
    assert rec["production"]["error"] == record_error
    assert rec["candidate"]["error"] is None  # the candidate itself was fine


async def test_production_reset_mid_response_closes_the_client_and_is_recorded() -> None:
    prod = await HalfThenAbortServer().start()
    cand = await ModelServer().start()
    try:
        async with running_proxy(_config(prod.url, cand.url)) as (dp, sink):
            out = await raw_request(dp.port, post(rid=b"rid-mid", extra=CLOSE), timeout=5)
            after = await raw_request(dp.port, post(rid=b"rid-after", extra=CLOSE), timeout=5)
            await settle(dp)
            records = {r["id"]: r for r in sink.decoded()}
            aborted = dp.stats.requests[("fraud", "aborted")]
    finally:
        await cand.stop()
        await prod.stop()
    line, headers, body = split_response(out)
    report(
        "production fault: reset mid-response",
        client_got_bytes_of_body=len(body),
        declared=int(headers[b"content-length"]),
        record_error=records["rid-mid"]["production"]["error"],
    )
    # The head was already on its way: the client sees a truncated body and a closed
    # connection (never a response spliced from two sources), as with the upstream directly.
    assert line == b"HTTP/1.1 200 OK"
    assert len(body) < int(headers[b"content-length"])
    assert body == prod.body[: len(body)]
    assert aborted == 2
    assert after.startswith(b"HTTP/1.1 200")
    assert records["rid-mid"]["production"]["error"] == "reset"
