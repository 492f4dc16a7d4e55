"""The demo: its parts (models, OIP servers, traffic, delayed labels, view, expectations) and
end-to-end runs of its scenarios in a short mode, in-process."""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp import web

pytest.importorskip("sklearn", reason="the demo extra (scikit-learn) is not installed")

from shadowroute.core.config import Route
from shadowroute.core.extraction import extract
from shadowroute.demo.config import demo_config, write_reference
from shadowroute.demo.expectation import check
from shadowroute.demo.feeder import LabelFeeder
from shadowroute.demo.models import Dataset, TrainedModel, load_dataset, train
from shadowroute.demo.oip import BadRequest, infer_request, parse_inputs
from shadowroute.demo.scenarios import SERVED_NAME, TRAINED, scenario
from shadowroute.demo.server import serve_model
from shadowroute.demo.traffic import (
    TrafficPlan,
    TrafficStats,
    row_bodies,
    send_traffic,
    shifted_row,
)
from shadowroute.demo.view import Snapshot, TerminalView, render


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_dataset(0)


@pytest.fixture(scope="module")
def trained(data: Dataset) -> dict[str, TrainedModel]:
    specs = {scenario(n).production for n in TRAINED} | {scenario(n).candidate for n in TRAINED}
    return {s.name: train(s, data) for s in specs}


# --- models and scenarios ----------------------------------------------------------------------


def test_dataset_split_is_held_out_and_stratified(data: Dataset) -> None:
    assert len(data.feature_names) == 30
    assert data.x_train.shape[0] + data.x_test.shape[0] == 569
    assert abs(data.y_train.mean() - data.y_test.mean()) < 0.02


def test_scenarios_pit_models_whose_offline_gap_matches_the_expectation(
    data: Dataset, trained: dict[str, TrainedModel]
) -> None:
    def acc(name: str) -> float:
        return trained[name].accuracy(data.x_test, data.y_test)

    better, worse = scenario("better"), scenario("worse")
    assert acc(better.candidate.name) - acc(better.production.name) > 0.1
    assert acc(worse.candidate.name) - acc(worse.production.name) < -0.1
    same = scenario("same")
    p = trained[same.production.name].predict_proba(data.x_test)
    c = trained[same.candidate.name].predict_proba(data.x_test)
    assert np.array_equal(p, c)  # A/A: the same model, trained the same way


def test_drift_shift_degrades_production_offline(
    data: Dataset, trained: dict[str, TrainedModel]
) -> None:
    scn = scenario("drift")
    assert scn.shift is not None
    prod = trained[scn.production.name]
    before = prod.accuracy(data.x_test, data.y_test)
    shifted = np.stack([shifted_row(r, scn.shift, 1.0) for r in data.x_test])
    assert before - prod.accuracy(shifted, data.y_test) > 0.15
    assert np.array_equal(shifted_row(data.x_test[0], scn.shift, 0.1), data.x_test[0])


# --- Open Inference Protocol -------------------------------------------------------------------


def test_parse_inputs_accepts_flat_and_nested_and_rejects_bad_shapes() -> None:
    flat = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}]
    }
    nested = {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}
        ]
    }
    assert parse_inputs(flat, 3).tolist() == [[1, 2, 3], [4, 5, 6]]
    assert parse_inputs(nested, 3).tolist() == [[1, 2, 3], [4, 5, 6]]
    for bad in (
        {},
        {"inputs": []},
        {"inputs": ["x"]},
        {"inputs": [{"shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]},
        {"inputs": [{"shape": [1, 3], "datatype": "FP64", "data": [1, 2]}]},
        {"inputs": [{"shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]}]},
        {"inputs": [{"shape": [1, 3], "datatype": "FP64", "data": [1, "2", 3]}]},
    ):
        with pytest.raises(BadRequest):
            parse_inputs(bad, 3)


async def test_model_server_speaks_oip_and_its_output_extracts(
    data: Dataset, trained: dict[str, TrainedModel]
) -> None:
    model = trained["gbm-30feat"]
    route = Route.model_validate(
        {
            "name": "r",
            "protocol": "openinference",
            "task": "classification",
            "output": "predict_proba",
            "classes": ["malignant", "benign"],
            "production": {"name": "m", "url": "http://127.0.0.1:1"},
        }
    )
    async with serve_model(model, SERVED_NAME, 30) as port, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{port}/v2"
        async with s.get(f"{base}/health/ready") as r:
            assert r.status == 200
        async with s.get(f"{base}/models/{SERVED_NAME}/ready") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with s.get(f"{base}/models/nope/ready") as r:
            assert r.status == 404
        row = data.x_test[0]
        async with s.post(
            f"{base}/models/{SERVED_NAME}/infer", json=infer_request(row, "abc")
        ) as r:
            assert r.status == 200
            raw = await r.read()
        doc = orjson.loads(raw)
        assert doc["model_name"] == SERVED_NAME and doc["model_version"] == "2"
        assert doc["id"] == "abc"
        (out,) = doc["outputs"]
        assert out["shape"] == [1, 2] and out["datatype"] == "FP64"
        expected = model.predict_proba(row[None, :])[0]
        assert out["data"] == pytest.approx(expected.tolist())
        label = ["malignant", "benign"][int(expected.argmax())]
        assert extract(route, raw) == [label]
        async with s.post(f"{base}/models/{SERVED_NAME}/infer", data=b"{") as r:
            assert r.status == 422
        bad = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
        async with s.post(f"{base}/models/{SERVED_NAME}/infer", json=bad) as r:
            assert r.status == 400 and "shape" in (await r.json())["error"]


# --- traffic and labels ------------------------------------------------------------------------


async def test_traffic_is_rate_bounded_and_every_request_gets_a_label(
    data: Dataset, trained: dict[str, TrainedModel]
) -> None:
    seen: list[str] = []
    labels: list[tuple[str, int]] = []
    async with serve_model(trained["lr-2feat"], SERVED_NAME, 30) as port:
        plan = TrafficPlan(
            url=f"http://127.0.0.1:{port}/v2/models/{SERVED_NAME}/infer",
            rate=50,
            duration_s=1.0,
            run_tag="t",
        )
        stats = TrafficStats()
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            bodies = row_bodies(data.x_test, data.y_test, None)
            await send_traffic(s, plan, bodies, lambda i, y: labels.append((i, y)), stats)
        elapsed = time.monotonic() - t0
    seen = [i for i, _ in labels]
    assert stats.sent == stats.ok == 50 and stats.failed == 0
    assert 0.9 <= elapsed < 3.0  # 50 requests at 50/s: about one second
    assert len(set(seen)) == 50
    assert [y for _, y in labels] == [int(v) for v in data.y_test[:50]]


@pytest.fixture
async def label_sink() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    async def post(request: web.Request) -> web.Response:
        lines = (await request.read()).splitlines()
        got.extend(orjson.loads(line) | {"_at": time.monotonic()} for line in lines)
        return web.json_response({"accepted": len(lines), "rejected": 0}, status=202)

    app = web.Application()
    app.router.add_post("/v1/labels", post)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", got
    finally:
        await runner.cleanup()


async def test_labels_arrive_late_within_the_delay_as_json_lines(
    label_sink: tuple[str, list[dict[str, Any]]],
) -> None:
    url, got = label_sink
    async with aiohttp.ClientSession() as s:
        feeder = LabelFeeder(s, url, random.Random(1), delay_s=(0.3, 0.8), tick_s=0.05)
        stop = asyncio.Event()
        t0 = time.monotonic()
        for i in range(20):
            feeder.schedule(f"id-{i}", i % 2, now=t0)
        stop.set()
        await feeder.run(stop, max_s=5)
    assert feeder.stats.accepted == feeder.stats.posted == 20 and feeder.pending == 0
    assert sorted(g["id"] for g in got) == sorted(f"id-{i}" for i in range(20))
    for g in got:
        assert g["v"] == 1 and g["label"] == int(g["id"].split("-")[1]) % 2
        assert isinstance(g["ts"], int)
        assert 0.3 - 0.01 <= g["_at"] - t0 <= 0.8 + 0.3
    assert len({round(g["_at"] - t0, 1) for g in got}) > 1  # spread out, not one batch


# --- view and expectations ---------------------------------------------------------------------

DECISION = {
    "route": "cancer",
    "candidate": "gbm-30feat",
    "verdict": "promote",
    "reasons": ["candidate is better than production on accuracy"],
    "metrics": {
        "accuracy": {
            "estimate": 0.16,
            "lower": 0.09,
            "upper": 0.22,
            "n": 900,
            "threshold": 0.0,
            "status": "pass",
        }
    },
    "pairs": 1000,
    "labelled": 900,
}


def test_render_shows_progress_verdict_interval_and_drift() -> None:
    snap = Snapshot("better", 30, 60, sent=1200, ok=1200, labels_posted=1100)
    snap.decisions = {"gbm-30feat": DECISION}
    snap.production = {"drift": {"$.inputs[0].data[3]": {"state": "major", "psi": 1.234}}}
    text = "\n".join(render(snap))
    assert "[############............]" in text
    assert "PROMOTE" in text and "+0.160 [+0.090, +0.220]" in text
    assert "1200 sent" in text
    assert "drift major (PSI 1.23 on $.inputs[0].data[3])" in text


def test_view_redraws_in_place_on_a_terminal_and_prints_lines_otherwise() -> None:
    tty, plain = io.StringIO(), io.StringIO()
    v_tty, v_plain = TerminalView(tty, True), TerminalView(plain, False, plain_every_s=5)
    for t in range(11):
        snap = Snapshot("same", float(t), 60)
        v_tty.show(snap)
        v_plain.show(snap)
    assert tty.getvalue().count("\x1b[2F\x1b[J") == 10
    assert "\x1b" not in plain.getvalue() and len(plain.getvalue().splitlines()) == 3


def test_expectations() -> None:
    hold = DECISION | {"verdict": "hold"}
    reject = DECISION | {"verdict": "reject"}
    assert check("better", DECISION, None).ok and not check("better", hold, None).ok
    assert check("worse", reject, None).ok and not check("worse", hold, None).ok
    assert check("same", hold, None).ok and check("same", reject, None).ok
    assert not check("same", DECISION, None).ok
    drifting = {"drift": {"$.x": {"state": "major", "psi": 0.9}, "output": {"state": "stable"}}}
    assert check("drift", hold, drifting).ok
    assert check("drift", hold, {"drift": {}, "degradation": {"state": "degraded"}}).ok
    quiet = {"drift": {"$.x": {"state": "stable", "psi": 0.01}, "output": {"state": "major"}}}
    assert not check("drift", hold, quiet).ok


def test_demo_config_validates(tmp_path: Any, data: Dataset) -> None:
    ref = write_reference(data, tmp_path / "ref.jsonl")
    cfg = demo_config(
        scenario("drift"), 1, 2, admin_port=0, listen_port=0, state_dir=tmp_path, reference_file=ref
    )
    route = cfg.routes[0]
    assert route.protocol == "openinference" and route.policy.primary_metric == "accuracy"
    assert len(ref.read_text().splitlines()) == 569


# --- end to end --------------------------------------------------------------------------------


async def test_short_runs_reach_each_scenarios_verdict() -> None:
    """All four scenarios at once, 20 s of traffic each, in this process (free ports)."""
    from shadowroute.demo.run import DemoOptions, run_demo

    names = ("better", "worse", "same", "drift")
    outs = {n: io.StringIO() for n in names}
    results = await asyncio.gather(
        *(run_demo(DemoOptions(scenario=n, duration_s=20, port=0), out=outs[n]) for n in names)
    )
    by = dict(zip(names, results, strict=True))
    for name, r in by.items():
        log = outs[name].getvalue()
        assert r.exit_code == 0, f"{name}: {r.outcome.summary}\n{log}"
        assert r.traffic.sent == 800 and r.traffic.failed <= 8, (
            log
        )  # a loaded machine may drop a few
        assert r.labels.accepted == 800, log
        assert "scorecard: http://127.0.0.1:" in log and ("OK: " in log), log
    assert by["better"].decision is not None and by["better"].decision["verdict"] == "promote"
    assert by["better"].decision["metrics"]["accuracy"]["lower"] > 0
    assert by["worse"].decision is not None and by["worse"].decision["verdict"] == "reject"
    assert by["worse"].decision["metrics"]["accuracy"]["upper"] < 0
    same = by["same"].decision
    assert same is not None and same["verdict"] == "hold"
    assert same["metrics"]["accuracy"]["estimate"] == 0.0
    assert [h["verdict"] for h in by["better"].history][-1] == "promote"
    drift = (by["drift"].production or {}).get("drift", {})
    assert drift["$.inputs[0].data[0]"]["state"] == "major"  # mean radius, rescaled ×1.5
    assert drift["$.inputs[0].data[1]"]["state"] == "stable"  # mean texture, untouched
    quiet = (by["better"].production or {}).get("drift", {})
    assert all(f.get("state") == "stable" for k, f in quiet.items() if k != "output")


def test_render_shows_embedding_drift() -> None:
    snap = Snapshot("llm", 30, 60, primary="judge")
    field = {"kind": "embedding", "state": "major", "p_value": 0.0001, "psi": None}
    snap.production = {"drift": {"embedding:$.messages[-1].content": field}}
    text = "\n".join(render(snap))
    assert "embedding drift major (p 0.0001 on embedding:$.messages[-1].content)" in text


def test_llm_expectation() -> None:
    from shadowroute.demo.expectation import PROMPT_FIELD, check_llm

    reject = {"verdict": "reject", "reasons": ["shown worse: judge: estimate -0.3, interval [..]"]}
    scores = {"llm": {"ttft_ms": {"ratio": {"p99": 0.46}}, "cost": {"ratio": 0.17}}}
    drifting = {"drift": {PROMPT_FIELD: {"state": "major"}}}
    assert check_llm(reject, drifting, scores).ok
    assert check_llm(reject | {"verdict": "hold"}, drifting, scores).ok
    assert not check_llm(reject | {"verdict": "promote"}, drifting, scores).ok
    assert not check_llm(reject | {"reasons": ["shown worse: error_rate"]}, drifting, scores).ok
    assert not check_llm(reject, {"drift": {PROMPT_FIELD: {"state": "stable"}}}, scores).ok
    missing = check_llm(reject, drifting, {"llm": {}})
    assert not missing.ok and "no TTFT or cost ratio" in missing.summary


async def test_llm_scenario_rejects_the_faster_worse_candidate_and_flags_the_topic_shift() -> None:
    """``demo --scenario llm``, 20 s: real stand-in chat servers (streamed and whole answers),
    the honest judge, the embeddings server, the proxy and the embedded comparator."""
    from shadowroute.demo.run import DemoOptions, run_demo

    out = io.StringIO()
    r = await run_demo(DemoOptions(scenario="llm", duration_s=20, port=0), out=out)
    log = out.getvalue()
    assert r.exit_code == 0, f"{r.outcome.summary}\n{log}"
    assert r.traffic.sent == 800 and r.traffic.failed == 0, log
    d = r.decision or {}
    assert d["verdict"] == "reject", log
    assert d["metrics"]["judge"]["upper"] < 0
    assert d["metrics"]["ttft_p99_ratio"]["status"] == "pass"
    assert d["metrics"]["cost_ratio"]["status"] == "pass"
    llm = (r.scores or {})["llm"]
    assert llm["ttft_ms"]["ratio"]["p99"] < 1 and llm["cost"]["ratio"] < 1
    judge = (r.scores or {})["judge"]
    assert judge["losses"] > judge["wins"] and judge["unparseable"] == 0
    assert (r.scores or {})["embedding_similarity"]["n"] > 0
    drift = (r.production or {})["drift"]
    assert drift["embedding:$.messages[-1].content"]["state"] == "major"
    assert "time to first token p99: production" in log and "OK: verdict reject" in log
