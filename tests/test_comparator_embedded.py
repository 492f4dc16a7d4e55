"""The embedded comparator end to end: verdicts, history, the API and the metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from documented import assert_documented
from families import assert_collects_declared
from shadowroute.api.scores import ScoresCollector, score_routes
from shadowroute.comparator.embedded import Comparator
from test_comparator_gen import classification, config

ROUTE, CAND = "fraud", "fraud-v8"


async def _run(
    tmp_path: Path, p_prod: float, p_cand: float, seed: int, n: int = 4000
) -> Comparator:
    comp = Comparator(config(str(tmp_path / "s.sqlite")), clock=None, flush_interval_s=0.05)
    await comp.start()
    s = classification(n, p_prod=p_prod, p_cand=p_cand, seed=seed)
    for i in range(0, n, 500):
        await comp.consume(s.pairs[i : i + 500])
        await comp.consume_labels(s.labels[i : i + 500])
    await comp.flush()
    return comp


@pytest.mark.parametrize(
    ("p_prod", "p_cand", "verdict"),
    [(0.70, 0.85, "promote"), (0.85, 0.70, "reject"), (0.80, 0.80, "hold")],
)
async def test_verdict_scenarios(
    tmp_path: Path, p_prod: float, p_cand: float, verdict: str
) -> None:
    comp = await _run(tmp_path, p_prod, p_cand, seed=11)
    try:
        d = comp.reader.decision(ROUTE, CAND)
        assert d["verdict"] == verdict, d["reasons"]
        assert d["pairs"] == 4000 and d["labelled"] == 4000
        hist = comp.reader.history(ROUTE, CAND)["history"]
        assert hist[0]["verdict"] == "hold"  # the first verdict, before any record
        if verdict == "hold":
            assert len(hist) == 1  # never changed
        else:
            assert [h["verdict"] for h in hist] == ["hold", verdict]
            assert hist[-1]["metrics"]["accuracy"]["n"] > 0
    finally:
        await comp.close()


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    comp = await _run(tmp_path, 0.7, 0.85, seed=12)
    await comp.close()
    again = Comparator(config(str(tmp_path / "s.sqlite")), clock=None)
    try:
        assert again.reader.decision(ROUTE, CAND)["verdict"] == "promote"
        verdicts = [h["verdict"] for h in again.reader.history(ROUTE, CAND)["history"]]
        assert verdicts == ["hold", "promote"]  # no duplicate entry on restart
    finally:
        await again.close()


async def test_verdict_changes_within_two_seconds_of_the_deciding_label(tmp_path: Path) -> None:
    comp = Comparator(config(str(tmp_path / "s.sqlite")), clock=None)  # default 200 ms flush
    await comp.start()
    try:
        s = classification(3000, p_prod=0.6, p_cand=0.95, seed=4)
        await comp.consume(s.pairs)
        await comp.flush()
        assert comp.reader.decision(ROUTE, CAND)["verdict"] == "hold"  # no labels yet
        started = time.monotonic()
        await comp.consume_labels(s.labels)
        while comp.reader.decision(ROUTE, CAND)["verdict"] != "promote":
            assert time.monotonic() - started < 2.0
            await asyncio.sleep(0.01)
    finally:
        await comp.close()


async def test_api_routes_and_404(tmp_path: Path) -> None:
    comp = await _run(tmp_path, 0.7, 0.85, seed=13, n=1000)
    app = web.Application()
    app.add_routes(score_routes(comp.reader))
    async with TestClient(TestServer(app)) as client:
        r = await client.get(f"/v1/routes/{ROUTE}/candidates/{CAND}/decision")
        assert r.status == 200
        body = await r.json()
        assert set(body) == {
            "route", "candidate", "verdict", "reasons", "metrics", "pairs", "labelled", "as_of",
            "revision",
            "integrity", "labels_waiting",
        }  # fmt: skip
        assert_documented(body, "Decision")
        assert body["labels_waiting"] == 0
        assert body["integrity"] == {
            "duplicate_pairs": 0, "duplicate_ids": 0, "duplicate_labels": 0,
            "conflicting_labels": 0,
        }  # fmt: skip
        assert set(body["metrics"]["accuracy"]) == {
            "estimate", "lower", "upper", "n", "threshold", "status"
        }  # fmt: skip
        scores = await (await client.get(f"/v1/routes/{ROUTE}/candidates/{CAND}/scores")).json()
        assert_documented(scores, "Scores")
        assert scores["audit"]["wilcoxon"] is None and "note" in scores["audit"]
        assert scores["quality"]["accuracy"]["n"] == 1000
        assert scores["windows"]["hour"][0]["pairs"] == 1000
        hist = await (await client.get(f"/v1/routes/{ROUTE}/candidates/{CAND}/history")).json()
        assert hist["history"]
        assert_documented(hist, "History")
        prod = await (await client.get(f"/v1/routes/{ROUTE}/production")).json()
        assert_documented(prod, "Production")
        assert prod["metric"] == "accuracy" and prod["counts"]["labelled"] == 1000
        assert prod["drift"]["$.amount"]["reference_n"] == 1000
        lin = await (await client.get("/v1/models/fraud-v7/lineage")).json()
        assert_documented(lin, "Lineage")
        assert lin["declared"]["trained_through"] == "2026-10-31" and lin["age_days"] is not None
        lin8 = await (await client.get(f"/v1/models/{CAND}/lineage")).json()
        assert_documented(lin8, "Lineage")
        assert lin8["role"] == "candidate" and lin8["verdicts"]
        for path in (
            "/v1/routes/nope/candidates/x/decision",
            f"/v1/routes/{ROUTE}/candidates/nope/scores",
            f"/v1/routes/{ROUTE}/candidates/nope/history",
            "/v1/routes/nope/production",
            "/v1/models/nope/lineage",
        ):
            r = await client.get(path)
            assert r.status == 404 and "error" in await r.json(), path
    await comp.close()


async def test_prometheus_collector(tmp_path: Path) -> None:
    comp = await _run(tmp_path, 0.7, 0.85, seed=14, n=4000)
    try:
        registry = CollectorRegistry()
        registry.register(ScoresCollector(comp.reader))
        text = generate_latest(registry).decode()
        assert (
            'shadowroute_verdict{candidate="fraud-v8",route="fraud",verdict="promote"} 1.0' in text
        )
        assert (
            'shadowroute_candidate_pairs_total{candidate="fraud-v8",route="fraud"} 4000.0' in text
        )
        for family in ScoresCollector.FAMILIES:
            assert f"# HELP {family.exposed} {family.help}" in text, family
        assert_collects_declared(ScoresCollector(comp.reader))
    finally:
        await comp.close()


async def test_dead_letters_in_embedded_mode(tmp_path: Path) -> None:
    comp = Comparator(config(str(tmp_path / "s.sqlite")), clock=None)
    await comp.consume([(b"k", b"garbage"), (b"k", b'{"v": 9}')])
    await comp.flush()
    assert comp.dead_letters.counts == {"unparseable": 1, "schema_version": 1}
    assert comp.dead_letters.recent[0] == (b"k", b"garbage", "unparseable")
    await comp.close()
