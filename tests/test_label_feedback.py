"""What a user is told about labels and holds (issue 22, items 4 and 6), end to end.

The embedded stack with real HTTP model servers on loopback: labels under the proxy's request
ids match, labels under one's own row ids wait (counted per route, in the API, the metric and
the CLI, with a hint); a candidate that answers 404 to every mirror is rejected with its
dominant error named, and an inconclusive guardrail says how many more pairs it needs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from proxyutil import settle
from shadowroute.cli_client import EXIT_REJECT, cmd_decision, cmd_labels_send, cmd_labels_waiting
from shadowroute.core.config import Config, parse_config
from shadowroute.runtime import Stack, embedded_stack
from upstreams import ModelServer, parity_servers


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ModelServer, ModelServer, ModelServer]]:
    async with parity_servers() as started:
        yield started


def _config(tmp_path: Path, prod: str, good: str, missing: str) -> Config:
    route = {
        "name": "r",
        "protocol": "kserve-v1",
        "task": "classification",
        "production": {"name": "prod", "url": prod, "timeout_s": 2},
        "candidates": [
            {"name": "good", "url": good, "fraction": 1.0},
            {"name": "missing", "url": missing, "fraction": 1.0},
        ],
        "policy": {"min_pairs": 10, "min_labelled": 10},
    }
    return parse_config(
        {
            "listen": {"port": 0},
            "admin": {"port": 0},
            "comparator": {"state_path": str(tmp_path / "state.sqlite")},
            "mirror": {"breaker": {"failures": 10_000}},
            "routes": [route],
        },
        environ={},
    )


async def _requests(stack: Stack, n: int) -> list[str]:
    """``n`` requests through the proxy; the request ids it returned."""
    ids = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.proxy_port}") as client:
        for k in range(n):
            r = await client.post("/p", content=orjson.dumps({"instances": [[k]]}))
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
    await settle(stack.dataplane)
    return ids


async def _decision(admin: httpx.AsyncClient, cand: str, pairs: int) -> dict[str, Any]:
    for _ in range(200):
        d = (await admin.get(f"/v1/routes/r/candidates/{cand}/decision")).json()
        if d["pairs"] >= pairs:
            return dict(d)
        await asyncio.sleep(0.05)
    raise AssertionError(f"comparator did not settle: {d}")


def _args(api: str, **kw: Any) -> argparse.Namespace:
    return argparse.Namespace(api=api, token=None, **kw)


async def test_labels_say_what_matched_and_what_waits(
    tmp_path: Path,
    servers: tuple[ModelServer, ModelServer, ModelServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    prod, good, missing = servers
    cfg = _config(tmp_path, prod.url, good.url, missing.url)
    async with embedded_stack(cfg) as stack:
        ids = await _requests(stack, 30)
        api = f"http://127.0.0.1:{stack.admin_port}"
        async with httpx.AsyncClient(base_url=api) as admin:
            # one's own row ids: accepted, but they match nothing and wait, with the hint
            rows = [{"id": f"row-{k}", "label": 1, "route": "r"} for k in range(7)]
            r = await admin.post("/v1/labels", json=rows)
            assert r.status_code == 202, r.text
            body = r.json()
            assert body["accepted"] == 7 and body["matched"] == 0 and body["waiting"] == 7
            assert body["waiting_ids"] == [f"row-{k}" for k in range(5)]
            assert "x-request-id" in body["hint"]
            # the decision's labelled shortfall says why: the labels wait for their pair
            d = await _decision(admin, "good", 30)
            assert d["labelled"] == 0 and d["labels_waiting"] == 7
            at = next(i for i, r in enumerate(d["reasons"]) if r.startswith("needs 10 labelled"))
            assert d["reasons"][at + 1].startswith("7 label(s) wait for their pair")
            assert "x-request-id" in d["reasons"][at + 1]
            # the ids the proxy returned: every label matches a request now
            right = [{"id": i, "label": k % 2, "route": "r"} for k, i in enumerate(ids[:20])]
            r = await admin.post("/v1/labels", json=right)
            assert r.status_code == 202, r.text
            body = r.json()
            assert body["accepted"] == 20 and body["matched"] == 20 and body["waiting"] == 0
            assert "hint" not in body and "waiting_ids" not in body
            d = await _decision(admin, "good", 30)
            assert d["labelled"] == 20
            assert not any("wait for their pair" in r for r in d["reasons"])
            # a mixed batch: the counts split
            mixed = [{"id": ids[25], "label": 1}, {"id": "row-99", "label": 0}]
            body = (await admin.post("/v1/labels", json=mixed)).json()
            assert body["matched"] == 1 and body["waiting"] == 1 and "hint" not in body
            # the waiting labels, per route: the production view, the decision, the metric
            prod_view = (await admin.get("/v1/routes/r/production")).json()
            assert prod_view["labels"] == {
                "waiting": 7,
                "waiting_without_route": 1,
                "max_waiting_per_route": cfg.labels.max_waiting_per_route,
            }
            d = await _decision(admin, "good", 30)
            assert d["labels_waiting"] == 7
            metrics = (await admin.get("/metrics")).text
            assert 'shadowroute_labels_waiting{route="r"} 7.0' in metrics
            assert 'shadowroute_labels_waiting{route=""} 1.0' in metrics
        # the CLI: a file of row ids prints the hint; the waiting command lists the routes
        path = tmp_path / "rows.jsonl"
        path.write_bytes(b"\n".join(b'{"id": "own-%d", "label": 1}' % k for k in range(4)))
        code = await asyncio.to_thread(cmd_labels_send, _args(api, file=str(path), format="auto"))
        out = capsys.readouterr()
        assert code == 0
        assert "4 label(s) accepted" in out.out
        assert "0 matched a request seen so far, 4 waiting for their pair" in out.out
        assert "none of these ids matched a request seen so far" in out.err
        assert "own-0" in out.err
        right_file = tmp_path / "right.jsonl"
        right_file.write_bytes(b"\n".join(orjson.dumps({"id": i, "label": 0}) for i in ids[20:24]))
        code = await asyncio.to_thread(
            cmd_labels_send, _args(api, file=str(right_file), format="auto")
        )
        out = capsys.readouterr()
        assert code == 0 and "4 matched a request seen so far, 0 waiting" in out.out
        assert "hint" not in out.err
        code = await asyncio.to_thread(cmd_labels_waiting, _args(api))
        out = capsys.readouterr()
        assert code == 0
        assert f"r: 7 label(s) waiting (at most {cfg.labels.max_waiting_per_route})" in out.out
        assert "(no route): 5 label(s) waiting" in out.out


async def test_a_404_candidate_is_rejected_naming_its_error_and_holds_say_what_they_need(
    tmp_path: Path,
    servers: tuple[ModelServer, ModelServer, ModelServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    prod, good, missing = servers
    cfg = _config(tmp_path, prod.url, good.url, missing.url)
    async with embedded_stack(cfg) as stack:
        await _requests(stack, 40)
        api = f"http://127.0.0.1:{stack.admin_port}"
        async with httpx.AsyncClient(base_url=api) as admin:
            bad = await _decision(admin, "missing", 40)
            ok = await _decision(admin, "good", 40)
        # the CLI's decision output carries the same reasons and fields
        args = _args(
            api, route="r", candidate="missing", revision=None, wait=False, timeout=5.0,
            interval=1.0,
        )  # fmt: skip
        code = await asyncio.to_thread(cmd_decision, args)
        printed = orjson.loads(capsys.readouterr().out)
    assert code == EXIT_REJECT
    assert printed["metrics"]["error_rate"]["errors"] == bad["metrics"]["error_rate"]["errors"]
    assert any("mostly http_4xx: 40 of 40 mirrors" in r for r in printed["reasons"])
    assert bad["verdict"] == "reject", bad["reasons"]
    err = bad["metrics"]["error_rate"]
    assert err["status"] == "fail"
    assert err["errors"]["reason"] == "http_4xx"
    assert err["errors"]["count"] == 40 and err["errors"]["of"] == 40
    line = next(r for r in bad["reasons"] if "error_rate" in r)
    assert "mostly http_4xx: 40 of 40 mirrors" in line and "model name" in line
    # the identical candidate: no labels, guardrails at zero errors still open
    assert ok["verdict"] == "hold"
    for name in ("error_rate", "timeout_rate"):
        ev = ok["metrics"][name]
        assert ev["status"] == "inconclusive"
        assert ev["needed"]["estimate"] is True and ev["needed"]["more"] > 0
        assert "errors" not in ev
    line = next(r for r in ok["reasons"] if r.startswith("error_rate:"))
    assert "more pairs needed at the current effect and variance (an estimate)" in line
    assert ok["metrics"]["accuracy"]["needed"]["why"] == "no observations yet"
