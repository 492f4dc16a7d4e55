"""Evidence belongs to one model revision; a state file belongs to one config.

A candidate or production whose url, version or revision changes starts fresh evidence: the old
stays in the history and never counts for the new one; the decision names its revision, and a
question about another revision is answered hold. A router started with a config whose routes
or models differ from its state file's refuses to mix them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from documented import assert_documented
from shadowroute.cli import main as cli_main
from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.embedded import Comparator
from shadowroute.comparator.engine import MAX_REVISIONS, Engine
from shadowroute.comparator.production import ProductionState
from shadowroute.comparator.reader import Reader, StateView, Verdicts
from shadowroute.comparator.statefile import StateMismatch, check_state_file
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config, parse_config
from shadowroute.core.monitor import HOUR_MS
from shadowroute.core.records import LabelRecord, Side, decode_pair, encode_pair
from shadowroute.core.revision import split_slot
from shadowroute.runtime import embedded_stack
from test_comparator_gen import T0, config, pair
from upstreams import ModelServer, Reply, Seen

ROUTE, CAND = "fraud", "fraud-v8"


def _stream(
    start: int, n: int, *, revision: str | None, p_cand: float, seed: int,
    prod_revision: str | None = None, step_ms: int = 10,
) -> tuple[list[tuple[bytes, bytes]], list[LabelRecord]]:  # fmt: skip
    """n labelled pairs of one candidate revision, production right 70% of the time."""
    rng = np.random.default_rng(seed)
    pairs, labels = [], []
    for i in range(n):
        rid = f"{revision}-{prod_revision}-{start + i}"
        y = int(rng.integers(0, 2))
        p = y if rng.random() < 0.7 else 1 - y
        c = y if rng.random() < p_cand else 1 - y
        ts = T0 + (start + i) * step_ms
        value = pair(rid, ts, [p], [c], revision=revision, prod_revision=prod_revision)
        pairs.append((rid.encode(), value))
        labels.append(LabelRecord(rid, y, ts + 1000))
    return pairs, labels


def _slots(engine: Engine) -> dict[str, CandidateState]:
    out = {}
    for key, state in engine.states.items():
        if key[0] == "cand" and split_slot(key[2])[0] == CAND:
            assert isinstance(state, CandidateState)
            out[key[2]] = state
    return out


def _reader(cfg: Config, engine: Engine) -> tuple[StateView, Verdicts, Reader]:
    view = StateView()
    view.update(engine.snapshot(), replace=True)
    verdicts = Verdicts(cfg, view, engine.store, now_ms=lambda: T0)
    return view, verdicts, Reader(cfg, view, verdicts, engine.store)


# --- the engine, without a loop ---------------------------------------------------------------


def test_a_candidate_revision_change_starts_fresh_evidence(tmp_path: Path) -> None:
    cfg = config(str(tmp_path / "s.sqlite"))
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    view, verdicts, reader = _reader(cfg, engine)
    verdicts.refresh()  # the first verdict, before any record: hold
    pairs_a, labels_a = _stream(0, 3000, revision="a", p_cand=0.97, seed=1)
    late = labels_a.pop()  # one label of revision a comes after b has started
    engine.process(0, pairs_a, labels_a)
    view.update(engine.snapshot())
    verdicts.refresh()
    d = reader.decision(ROUTE, CAND)
    assert d["verdict"] == "promote", d["reasons"]
    assert d["revision"]["candidate"] == {"url": None, "version": "8", "revision": "a"}
    rid_a = d["revision"]["id"]

    # revision b of the same candidate: too few pairs for a verdict of its own
    pairs_b, labels_b = _stream(3000, 150, revision="b", p_cand=0.7, seed=2)
    engine.process(0, pairs_b, [*labels_b, late])
    view.update(engine.snapshot())
    verdicts.refresh()
    d = reader.decision(ROUTE, CAND)
    assert d["revision"]["candidate"]["revision"] == "b" and d["revision"]["id"] != rid_a
    assert (d["pairs"], d["labelled"]) == (150, 150)  # nothing of revision a counts
    assert d["verdict"] == "hold"
    assert any("min_pairs" in r or "pairs" in r for r in d["reasons"]), d["reasons"]
    slots = _slots(engine)
    assert len(slots) == 2
    by_rev = {s.revision["candidate"]["revision"]: s for s in slots.values() if s.revision}
    assert (by_rev["a"].pairs, by_rev["a"].labelled) == (3000, 3000)  # the late label: a's
    assert (by_rev["b"].pairs, by_rev["b"].labelled) == (150, 150)

    # asking about the old revision: hold, saying which revision the evidence is for
    stale = reader.decision(ROUTE, CAND, revision="a")
    assert stale["verdict"] == "hold" and stale["asked_revision"] == "a"
    assert "'a'" in stale["reasons"][0] and "'b'" in stale["reasons"][0]
    assert_documented(stale, "Decision")
    assert stale["revision"]["candidate"]["revision"] == "b"
    for name in ("b", d["revision"]["id"]):  # its revision, or the revision id
        assert "asked_revision" not in reader.decision(ROUTE, CAND, revision=name)
    assert reader.decision(ROUTE, CAND, revision="8")["verdict"] == "hold"  # a has a revision

    history = reader.history(ROUTE, CAND)["history"]
    assert [(h["event"], h["verdict"]) for h in history] == [
        ("verdict", "hold"), ("verdict", "promote"), ("revision_change", "hold"),
    ]  # fmt: skip
    change = history[-1]
    assert change["revision"]["candidate"]["revision"] == "b"
    assert change["previous"]["verdict"] == "promote"
    assert change["previous"]["revision"]["id"] == rid_a
    assert change["previous"]["pairs"] == 3000
    assert_documented(reader.history(ROUTE, CAND), "History")

    # more of revision b, worse than production: its own verdict, from its own evidence only
    more, more_labels = _stream(3150, 3000, revision="b", p_cand=0.3, seed=3)
    engine.process(0, more, more_labels)
    view.update(engine.snapshot())
    verdicts.refresh()
    d = reader.decision(ROUTE, CAND)
    assert d["verdict"] == "reject" and d["pairs"] == 3150
    # a late record of revision a changes nothing about the current one
    old, _ = _stream(2999, 1, revision="a", p_cand=0.97, seed=4)
    engine.process(0, old, [])
    view.update(engine.snapshot())
    assert reader.decision(ROUTE, CAND)["revision"]["candidate"]["revision"] == "b"
    engine.store.close()


def test_a_version_or_url_change_is_a_new_revision_too(tmp_path: Path) -> None:
    cfg = config(str(tmp_path / "s.sqlite"))
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))

    def record(rid: str, ts: int, version: str, url: str | None) -> tuple[bytes, bytes]:
        p = Side("fraud-v7", "7", 200, 1.0, [1], None, url="http://p")
        c = Side(CAND, version, 200, 1.0, [1], None, url=url)
        value = encode_pair(
            request_id=rid, route=ROUTE, ts_ms=ts, production=p, candidate=c, input=None
        )
        return rid.encode(), value

    engine.process(
        0, [record("a", T0, "8", "http://c1"), record("b", T0 + 1, "8", "http://c1")], []
    )
    engine.process(0, [record("c", T0 + 2, "9", "http://c1")], [])
    engine.process(0, [record("d", T0 + 3, "9", "http://c2")], [])
    got = sorted((s.revision["candidate"]["version"], s.revision["candidate"]["url"], s.pairs)
                 for s in _slots(engine).values() if s.revision)  # fmt: skip
    assert got == [("8", "http://c1", 2), ("9", "http://c1", 1), ("9", "http://c2", 1)]
    engine.store.close()


def test_a_production_revision_change_restarts_its_reference_and_the_evidence(
    tmp_path: Path,
) -> None:
    """Production's degradation reference is the first windows with labels of its current
    revision; the candidate's evidence against the old production does not count either."""
    cfg = config(str(tmp_path / "s.sqlite"), ttl_s=4 * 3600.0)
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    step = HOUR_MS // 200  # 200 records an hour
    # 14 hours of production p1, then production p2 from hour 14 on
    p1, l1 = _stream(0, 14 * 200, revision="a", p_cand=0.8, seed=5, prod_revision="p1",
                     step_ms=step)  # fmt: skip
    engine.process(0, p1, l1)
    prod = engine.production(ROUTE, 0)
    assert isinstance(prod, ProductionState)
    assert prod.revision is not None and prod.revision["revision"] == "p1"
    assert prod.revision_since == 0  # the first revision seen: no restart
    before = prod.degradation(0.05, cfg.routes[0].monitor)
    assert before["reference"]["windows"][0] == T0 - T0 % HOUR_MS
    p2, l2 = _stream(14 * 200, 20 * 200, revision="a", p_cand=0.8, seed=6, prod_revision="p2",
                     step_ms=step)  # fmt: skip
    engine.process(0, p2, l2)
    prod = engine.production(ROUTE, 0)
    assert isinstance(prod, ProductionState)
    switched = T0 + 14 * 200 * step
    assert prod.revision is not None and prod.revision["revision"] == "p2"
    assert prod.revision_since == switched
    assert prod.counts["revision_changes"] == 1
    after = prod.degradation(0.05, cfg.routes[0].monitor)
    assert min(after["reference"]["windows"]) >= switched
    assert after["reference_since"] == switched
    assert after["state"] in ("ok", "degraded")  # 12 reference windows and 6 current ones
    # the candidate's evidence: one slot per production revision
    assert sorted(s.pairs for s in _slots(engine).values()) == [14 * 200, 20 * 200]
    # merged over partitions, the newer revision wins and keeps its earliest start
    other = ProductionState.from_dict(prod.to_dict())
    other.revision_since = switched + 5
    merged = prod.merge(other)
    assert merged.revision == prod.revision and merged.revision_since == switched
    engine.store.close()


async def test_revisions_kept_per_candidate_are_bounded_and_counted(tmp_path: Path) -> None:
    """Each revision is a state of its own; beyond ``MAX_REVISIONS`` per candidate and partition
    the one whose newest pair is oldest is dropped from the state, the store and the view, and
    counted. Its history stays."""
    comp = Comparator(config(str(tmp_path / "s.sqlite")), clock=None)
    total = MAX_REVISIONS + 3
    for r in range(total):
        pairs, labels = _stream(r * 10, 10, revision=f"r{r}", p_cand=0.8, seed=r)
        await comp.consume(pairs)
        await comp.consume_labels(labels)
        await comp.flush()
    engine = comp.engine
    kept = _slots(engine)
    assert len(kept) == MAX_REVISIONS
    names = {s.revision["candidate"]["revision"] for s in kept.values() if s.revision}
    assert names == {f"r{r}" for r in range(3, total)}  # the oldest three went
    part = engine.counters(0)
    assert isinstance(part, dict) and part["revisions_evicted"] == 3
    stored = {k.candidate for k in engine.store.states() if k.kind == "cand"}
    assert stored == set(kept)
    assert len(comp.view.candidate_revisions(ROUTE, CAND)) == MAX_REVISIONS
    d = comp.reader.decision(ROUTE, CAND)
    assert d["revision"]["candidate"]["revision"] == f"r{total - 1}" and d["pairs"] == 10
    history = comp.reader.history(ROUTE, CAND)["history"]
    assert sum(h["event"] == "revision_change" for h in history) == total - 1
    from prometheus_client import CollectorRegistry, generate_latest

    from shadowroute.api.scores import ScoresCollector

    registry = CollectorRegistry()
    registry.register(ScoresCollector(comp.reader))
    assert "shadowroute_revisions_evicted_total 3.0" in generate_latest(registry).decode()
    await comp.close()
    # after a restart the same
    again = Comparator(config(str(tmp_path / "s.sqlite")), clock=None)
    assert len(again.view.candidate_revisions(ROUTE, CAND)) == MAX_REVISIONS
    await again.close()


# --- records ----------------------------------------------------------------------------------


def test_records_carry_the_revision_and_old_records_still_decode() -> None:
    p = Side("p", "7", 200, 1.0, [1], None, url="http://p:1", revision="sha256:ab")
    value = encode_pair(request_id="x", route=ROUTE, ts_ms=1, production=p, candidate=None,
                        input=None)  # fmt: skip
    doc = orjson.loads(value)
    assert doc["production"]["url"] == "http://p:1"
    assert doc["production"]["revision"] == "sha256:ab"
    rec = decode_pair(value)
    assert (rec.production.url, rec.production.revision) == ("http://p:1", "sha256:ab")
    # a record written before revisions: no url, no revision
    old = pair("y", T0, [1], [0])
    assert "revision" not in orjson.loads(old)["candidate"]
    got = decode_pair(old)
    assert got.candidate is not None and (got.candidate.url, got.candidate.revision) == (None, None)


@pytest.mark.parametrize(
    ("side", "reason"),
    [
        ({"revision": 5}, "bad_type:candidate.revision"),
        ({"revision": "x" * 257}, "bad_value:candidate.revision"),
        ({"url": ["http://c"]}, "bad_type:candidate.url"),
        ({"url": "http://c/" + "x" * 2048}, "bad_value:candidate.url"),
    ],
)
def test_bad_revision_fields_are_dead_lettered_and_counted(
    tmp_path: Path, side: dict[str, Any], reason: str
) -> None:
    doc = orjson.loads(pair("z", T0, [1], [0]))
    doc["candidate"].update(side)
    engine = Engine(config(str(tmp_path / "s.sqlite")), Store(tmp_path / "s.sqlite"))
    dead = engine.process(0, [(b"z", orjson.dumps(doc))], [])
    assert [d[2] for d in dead] == [reason]
    part = engine.counters(0)
    assert isinstance(part, dict) and part[f"deadletter:{reason}"] == 1
    assert not _slots(engine)
    engine.store.close()


# --- the state file belongs to one config -----------------------------------------------------


def _other_config(path: str) -> Config:
    """Another project's config, started in the same directory."""
    raw = {
        "comparator": {"state_path": path},
        "routes": [
            {
                "name": "churn",
                "jsonpath": "$.p",
                "production": {"name": "churn-v1", "url": "http://127.0.0.1:9101"},
                "candidates": [{"name": "churn-v2", "url": "http://127.0.0.1:9102"}],
            }
        ],
    }
    return parse_config(raw, environ={})


async def test_a_state_file_of_another_config_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "shadowroute-state.sqlite")
    comp = Comparator(config(path), clock=None)
    pairs, labels = _stream(0, 50, revision=None, p_cand=0.8, seed=7)
    await comp.consume(pairs)
    await comp.consume_labels(labels)
    await comp.close()

    other = _other_config(path)
    with pytest.raises(StateMismatch) as err:
        Comparator(other, clock=None)
    msg = str(err.value)
    assert "route 'fraud' is in the state file, not in the config" in msg
    assert "route 'churn' is in the config, not in the state file" in msg
    assert "--state-mode keep" in msg and "--state-mode reset" in msg
    assert "comparator.state_path" in msg

    # the command line says the same and exits 1, before anything starts
    cfg_file = tmp_path / "other.yaml"
    cfg_file.write_text(orjson.dumps(_raw_other(path)).decode())
    code, err_text = await asyncio.to_thread(_cli, ["serve", "-c", str(cfg_file)])
    assert code == 1 and "route 'churn' is in the config" in err_text

    # the same config again is welcome, and a config that adds a candidate is refused too
    Comparator(config(path), clock=None).store.close()
    grown = config(path).model_copy(deep=True)
    route = grown.routes[0].model_copy(
        update={"candidates": [*grown.routes[0].candidates, grown.routes[0].candidates[0]
                               .model_copy(update={"name": "fraud-v10"})]}
    )  # fmt: skip
    grown = grown.model_copy(update={"routes": [route]})
    with pytest.raises(StateMismatch, match="candidate 'fraud-v10' is in the config"):
        check_state_file(grown)

    # keep: the file stays, this config is recorded from now on
    check_state_file(other, mode="keep")
    check_state_file(other)  # no longer a mismatch
    with pytest.raises(StateMismatch):
        check_state_file(config(path))

    # reset: the file is moved aside, the comparator starts empty
    comp = Comparator(config(path).model_copy(update={
        "comparator": config(path).comparator.model_copy(update={"on_state_mismatch": "reset"})
    }), clock=None)  # fmt: skip
    try:
        assert comp.reader.decision(ROUTE, CAND)["pairs"] == 0
    finally:
        await comp.close()
    aside = [f for f in os.listdir(tmp_path) if f.endswith(".bak")]
    assert len(aside) == 1
    conn = sqlite3.connect(tmp_path / aside[0])
    assert conn.execute("SELECT count(*) FROM state").fetchone()[0] > 0  # nothing lost
    conn.close()


def test_state_mode_flag_is_the_explicit_choice(tmp_path: Path) -> None:
    from shadowroute.cli import _state_ok, _with_state_mode, build_parser

    path = str(tmp_path / "state.sqlite")
    check_state_file(config(path))
    other = _other_config(path)
    assert not _state_ok(other)  # refuse (printed)
    for cmd in ("serve", "compare"):
        args = build_parser().parse_args([cmd, "-c", "x.yaml", "--state-mode", "keep"])
        assert args.state_mode == "keep"
        assert build_parser().parse_args([cmd, "-c", "x.yaml"]).state_mode is None
    assert _with_state_mode(other, None) is other
    kept = _with_state_mode(other, "keep")
    assert kept.comparator.on_state_mismatch == "keep" and kept.routes == other.routes
    assert _state_ok(kept)
    assert _state_ok(other)  # the file is the other config's now
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "-c", "x.yaml", "--state-mode", "merge"])


def test_a_state_file_from_before_fingerprints_is_judged_by_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    engine = Engine(config(str(path)), Store(path))
    pairs, labels = _stream(0, 20, revision=None, p_cand=0.8, seed=8)
    engine.process(0, pairs, labels)
    engine.store.conn.execute("DROP TABLE meta")
    engine.store.close()
    check_state_file(config(str(path)))  # its own config: adopted (fingerprint written)
    assert Store(path).meta("fingerprint") is not None
    engine = Engine(config(str(path)), Store(path))
    engine.store.conn.execute("DELETE FROM meta")
    engine.store.close()
    with pytest.raises(StateMismatch, match="route 'fraud' is in the state file"):
        check_state_file(_other_config(str(path)))


def _raw_other(path: str) -> dict[str, Any]:
    return {
        "admin": {"port": 0},
        "listen": {"port": 0},
        "comparator": {"state_path": path},
        "routes": [
            {
                "name": "churn",
                "jsonpath": "$.p",
                "production": {"name": "churn-v1", "url": "http://127.0.0.1:9101"},
                "candidates": [{"name": "churn-v2", "url": "http://127.0.0.1:9102"}],
            }
        ],
    }


def _cli(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue() + err.getvalue()


def test_revision_from_the_environment() -> None:
    raw = _raw_other("x.sqlite")
    env = {
        "SHADOWROUTE_ROUTE_CHURN_PRODUCTION_REVISION": "sha256:p",
        "SHADOWROUTE_ROUTE_CHURN_CHURN_V2_REVISION": "flagger-123",
    }
    cfg = parse_config(raw, environ=env)
    assert cfg.routes[0].production.revision == "sha256:p"
    assert cfg.routes[0].candidates[0].revision == "flagger-123"


# --- end to end: `serve` (embedded) with real model servers ----------------------------------

TOKEN = "s3cret"


def _truth(seen: Seen) -> tuple[int, int]:
    """(request number, true label) of a request body {"instances": [[i]]}."""
    i = int(orjson.loads(seen.body)["instances"][0][0])
    return i, i % 2


def _prod_reply(seen: Seen) -> Reply:
    i, y = _truth(seen)
    p = y if i % 10 < 7 else 1 - y  # right 70% of the time
    return Reply(body=orjson.dumps({"predictions": [p]}),
                 headers=[(b"content-type", b"application/json")])  # fmt: skip


class Candidate:
    """The candidate's model server; ``good`` switches what the deployed revision does."""

    def __init__(self) -> None:
        self.good = True

    def __call__(self, seen: Seen) -> Reply:
        i, y = _truth(seen)
        right = i % 20 != 0 if self.good else i % 10 < 3
        c = y if right else 1 - y
        return Reply(body=orjson.dumps({"predictions": [c]}),
                     headers=[(b"content-type", b"application/json")])  # fmt: skip


@contextlib.asynccontextmanager
async def _servers() -> AsyncIterator[tuple[ModelServer, ModelServer, Candidate]]:
    behave = Candidate()
    prod = await ModelServer(_prod_reply).start()
    cand = await ModelServer(behave).start()
    try:
        yield prod, cand, behave
    finally:
        await prod.stop()
        await cand.stop()


def _serve_config(tmp: Path, prod: str, cand: str) -> Config:
    raw = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0, "token": TOKEN},
        "comparator": {"state_path": str(tmp / "state.sqlite"), "windows": ["hour"]},
        "routes": [
            {
                "name": ROUTE,
                "protocol": "kserve-v1",
                "task": "classification",
                "production": {"name": "fraud-v7", "url": prod, "version": "7"},
                "candidates": [{"name": CAND, "url": cand, "version": "8", "revision": "a"}],
                "policy": {
                    "min_pairs": 200,
                    "min_labelled": 100,
                    # the error guardrails need more pairs than this test sends
                    "guardrails": {"error_rate_delta": None, "timeout_rate_delta": None},
                },
            }
        ],
    }
    return parse_config(raw, environ={})


async def _traffic(client: httpx.AsyncClient, proxy: str, start: int, n: int) -> None:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            r = await client.post(f"{proxy}/v1/models/m:predict", json={"instances": [[i]]},
                                  headers={"x-request-id": f"q{i}"})  # fmt: skip
            assert r.status_code == 200

    await asyncio.gather(*(one(i) for i in range(start, start + n)))


async def _labels(client: httpx.AsyncClient, api: str, start: int, n: int) -> None:
    body = b"\n".join(
        orjson.dumps({"id": f"q{i}", "label": i % 2}) for i in range(start, start + n)
    )
    r = await client.post(f"{api}/v1/labels", content=body, headers={
        "content-type": "application/x-ndjson", "authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert r.status_code == 202, r.text


async def _until(client: httpx.AsyncClient, url: str, ok: Any, timeout_s: float = 15) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = (await client.get(url)).json()
        if ok(doc):
            return doc
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.1)


async def test_serve_a_revision_change_mid_stream_starts_fresh_evidence(tmp_path: Path) -> None:
    async with _servers() as (prod, cand, behave):
        cfg = _serve_config(tmp_path, prod.url, cand.url)
        async with embedded_stack(cfg) as stack, httpx.AsyncClient(timeout=10) as client:
            proxy = f"http://127.0.0.1:{stack.proxy_port}"
            api = f"http://127.0.0.1:{stack.admin_port}"
            base = f"{api}/v1/routes/{ROUTE}/candidates/{CAND}"
            auth = {"authorization": f"Bearer {TOKEN}"}
            # revision a (from the config): a much better candidate
            # (800 pairs: with no errors the guardrails pass from about 700)
            await _traffic(client, proxy, 0, 800)
            await _labels(client, api, 0, 800)
            d = await _until(client, f"{base}/decision", lambda d: d["labelled"] == 800)
            assert d["verdict"] == "promote", d["reasons"]
            assert d["revision"]["candidate"] == {"url": cand.url, "version": "8", "revision": "a"}
            assert d["revision"]["production"] == {"url": prod.url, "version": "7",
                                                   "revision": None}  # fmt: skip

            # deploy tooling rolls out revision b (worse), and says so
            r = await client.put(f"{base}/revision", json={"revision": "b"})
            assert r.status_code == 401
            for bad in (b"{", b'{"revision": 5}', b'{"revision": ""}', b"[]"):
                r = await client.put(f"{base}/revision", content=bad, headers=auth)
                assert r.status_code == 400, bad
            r = await client.put(f"{api}/v1/routes/{ROUTE}/candidates/nope/revision",
                                 json={"revision": "b"}, headers=auth)  # fmt: skip
            assert r.status_code == 404
            behave.good = False
            r = await client.put(f"{base}/revision", json={"revision": "b"}, headers=auth)
            assert r.status_code == 200
            assert r.json() == {
                "route": ROUTE, "model": CAND, "role": "candidate", "url": cand.url,
                "version": "8", "revision": "b", "source": "api",
            }  # fmt: skip
            assert_documented(r.json(), "ModelRevision")
            assert (await client.get(f"{base}/revision")).json()["revision"] == "b"
            routes = (await client.get(f"{api}/v1/routes")).json()["routes"]
            assert routes[0]["candidates"][0]["revision"] == "b"

            await _traffic(client, proxy, 800, 120)
            await _labels(client, api, 800, 120)
            d = await _until(client, f"{base}/decision", lambda d: d["labelled"] == 120)
            assert d["pairs"] == 120  # fresh: nothing of revision a
            assert d["revision"]["candidate"]["revision"] == "b"
            # b's own evidence: worse than production (with a's mixed in it would promote)
            assert d["verdict"] == "reject", d["reasons"]

            # the stale question: deploy tooling still asks about a
            stale = (await client.get(f"{base}/decision", params={"revision": "a"})).json()
            assert stale["verdict"] == "hold" and stale["asked_revision"] == "a"
            assert "evidence is for revision" in stale["reasons"][0]
            fresh = (await client.get(f"{base}/decision", params={"revision": "b"})).json()
            assert "asked_revision" not in fresh
            code, out = await asyncio.to_thread(
                _cli, ["decision", ROUTE, CAND, "--api", api, "--revision", "a"]
            )
            assert code == 3 and '"asked_revision": "a"' in out

            history = (await client.get(f"{base}/history")).json()["history"]
            events = [(h["event"], h["verdict"]) for h in history]
            assert ("verdict", "promote") in events and events[-1] == ("verdict", "reject")
            change = next(h for h in history if h["event"] == "revision_change")
            assert change["revision"]["candidate"]["revision"] == "b"
            assert change["previous"]["verdict"] == "promote"
            assert change["previous"]["revision"]["candidate"]["revision"] == "a"
            assert history[-1]["revision"]["candidate"]["revision"] == "b"

            # production changes: its reference restarts, and so does the candidate's evidence
            r = await client.put(f"{api}/v1/routes/{ROUTE}/production/revision",
                                 json={"revision": "p2"}, headers=auth)  # fmt: skip
            assert r.status_code == 200 and r.json()["role"] == "production"
            await _traffic(client, proxy, 920, 40)
            d = await _until(client, f"{base}/decision", lambda d: d["pairs"] == 40)
            assert d["revision"]["production"]["revision"] == "p2"
            assert d["revision"]["candidate"]["revision"] == "b"
            health = (await client.get(f"{api}/v1/routes/{ROUTE}/production")).json()
            assert health["revision"]["revision"] == "p2"
            assert health["revision_since"] is not None
            # and back to the config's revision of the candidate
            r = await client.put(f"{base}/revision", json={"revision": None}, headers=auth)
            assert r.json()["revision"] == "a" and r.json()["source"] == "config"


# --- the Kafka path: comparator over a real broker ------------------------------------------


@pytest.mark.kafka
async def test_kafka_comparator_keys_evidence_by_revision(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A comparator group member over a real broker: a candidate whose revision changes half
    way keeps two evidences apart on every partition, exactly as the offline recomputation;
    the scores topic's followers decide about the newer one only."""
    import uuid

    from shadowroute.stream.kafka import create_topics
    from test_comparator_engine import _assert_equal_states
    from test_comparator_kafka import (
        PARTS,
        _cfg,
        _follow,
        _offline,
        _produce,
        _spawn,
        _stop,
        _wait_done,
    )  # fmt: skip

    prefix = "rev" + uuid.uuid4().hex[:10]
    cfg_path, config = _cfg(tmp_path, kafka_bootstrap, prefix, "a")
    await create_topics(config.transport)
    rng = np.random.default_rng(9)
    items: list[tuple[int, tuple[str, bytes, bytes]]] = []
    n = 2000
    for i in range(n):
        rev, p_cand = ("a", 0.95) if i < n // 2 else ("b", 0.4)
        rid, y, ts = f"k{i}", int(rng.integers(0, 2)), T0 + 50 * i
        p = y if rng.random() < 0.7 else 1 - y
        c = y if rng.random() < p_cand else 1 - y
        items.append((ts, ("pairs", rid.encode(), pair(rid, ts, [p], [c], revision=rev))))
        lab = orjson.dumps({"v": 1, "id": rid, "label": y, "ts": ts + 300})
        items.append((ts + 300, ("labels", rid.encode(), lab)))
    ordered = [e for _, e in sorted(items, key=lambda x: x[0])]
    half = len(ordered) // 2
    await _produce(kafka_bootstrap, prefix, ordered[:half])
    proc = _spawn(cfg_path)
    try:
        await _produce(kafka_bootstrap, prefix, ordered[half:])
        offline, ends = await _offline(tmp_path, config, kafka_bootstrap, prefix)
        await _wait_done([tmp_path / "a.sqlite"], ends)
    finally:
        _stop(proc)
    got = Engine(config, Store(tmp_path / "a.sqlite"))
    for p in range(PARTS):
        slots = {k.candidate for k in got.states if k.kind == "cand" and k.partition == p}
        assert len(slots) == 2, slots  # both revisions on every partition, apart
        for slot in slots:
            g, w = got.candidate(ROUTE, slot, p), offline.candidate(ROUTE, slot, p)
            assert isinstance(g, CandidateState) and isinstance(w, CandidateState)
            _assert_equal_states(g, w)

    view = await _follow(config, tmp_path, want_messages=PARTS)
    revs = view.candidate_revisions(ROUTE, CAND)
    by_rev = {s.revision["candidate"]["revision"]: s for s in revs.values() if s.revision}
    assert by_rev["a"].pairs == by_rev["b"].pairs == n // 2
    current = view.candidate(ROUTE, CAND)
    assert current is not None and current.revision is not None
    assert current.revision["candidate"]["revision"] == "b"
    history = Store(tmp_path / "verdicts.sqlite")
    verdicts = Verdicts(config, view, history)
    verdicts.refresh()
    reader = Reader(config, view, verdicts, history)
    d = reader.decision(ROUTE, CAND)
    assert d["pairs"] == n // 2 and d["revision"]["candidate"]["revision"] == "b"
    assert d["verdict"] != "promote"  # revision a's evidence (a better candidate) never counts
    stale = reader.decision(ROUTE, CAND, revision="a")
    assert stale["verdict"] == "hold" and "'a'" in stale["reasons"][0]
    history.close()

    # many more revisions on partition 0: beyond MAX_REVISIONS the oldest are dropped, and
    # the scores topic's followers drop them too (tombstones)
    from shadowroute.stream.murmur2 import partition_for

    more: list[tuple[str, bytes, bytes]] = []
    ts = T0 + 50 * n + 1000
    i = 0
    for r in range(MAX_REVISIONS):
        made = 0
        while made < 2:
            rid = f"m{i}"
            i += 1
            if partition_for(rid.encode(), PARTS) != 0:
                continue
            ts += 10
            more.append(("pairs", rid.encode(), pair(rid, ts, [1], [1], revision=f"m{r}")))
            made += 1
    await _produce(kafka_bootstrap, prefix, more)
    again = tmp_path / "again"
    again.mkdir()
    offline, ends = await _offline(again, config, kafka_bootstrap, prefix)
    proc = _spawn(cfg_path)
    try:
        await _wait_done([tmp_path / "a.sqlite"], ends)
    finally:
        _stop(proc)
    got = Engine(config, Store(tmp_path / "a.sqlite"))
    kept = {k.candidate for k in got.states if k.kind == "cand" and k.partition == 0}
    assert len(kept) == MAX_REVISIONS
    assert kept == {k.candidate for k in offline.states if k.kind == "cand" and k.partition == 0}
    assert got.counters(0)["revisions_evicted"] == 2  # a and b
    view = await _follow(config, again, want_messages=PARTS)
    on_zero = {k.candidate for k in view._states if k.kind == "cand" and k.partition == 0}
    assert on_zero == kept


def test_the_stale_revision_answer_names_what_the_evidence_is_about() -> None:
    from shadowroute.comparator.reader import stale_revision

    base = {"verdict": "promote", "reasons": ["accuracy: shown better"], "pairs": 900}
    cand = {"url": "http://c", "version": "8", "revision": None}
    about_v8 = {**base, "revision": {"id": "0123456789ab", "candidate": cand, "production": {}}}
    assert stale_revision(about_v8, "8") is None  # no deploy revision: its version names it
    assert stale_revision(about_v8, "0123456789ab") is None
    out = stale_revision(about_v8, "9")
    assert out is not None and out["verdict"] == "hold" and out["asked_revision"] == "9"
    assert "revision 0123456789ab (candidate version '8')" in out["reasons"][0]
    assert about_v8["verdict"] == "promote"  # the current decision is left as it is
    legacy = stale_revision({**base, "revision": None}, "8")
    assert legacy is not None and "before revisions were tracked" in legacy["reasons"][0]
    empty = stale_revision({**base, "pairs": 0, "revision": None}, "8")
    assert empty is not None and "no revision yet (no pairs)" in empty["reasons"][0]
