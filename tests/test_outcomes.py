"""Every sampled request is the candidate's outcome (issue 15, items 5 and 6).

Real HTTP model servers on loopback answer NaN, nothing, garbage, slowly or not at all; the
data plane must record a pair for each sampled request with the reason, and the comparator must
count it: availability guardrail, a skipped labelled instance as a miss, and a noise candidate
(production against itself) shown as every candidate's floor and never promoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from documented import assert_documented
from proxyutil import make_config, running_proxy, settle
from shadowroute.comparator.aggregates import (
    CandidateState,
    LabelledRow,
    PairRow,
    new_candidate_state,
)
from shadowroute.core.config import Config, Policy, Route, parse_config
from shadowroute.core.sampling import sample_point
from shadowroute.runtime import Stack, embedded_stack
from upstreams import ModelServer, Reply, Seen, kserve_reply

BODY = b'{"instances": [[1.5]]}'
JSON = [(b"content-type", b"application/json")]


def _json(doc: object) -> Reply:
    return Reply(body=orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), headers=JSON)


def _raw_json(text: bytes) -> Reply:
    return Reply(body=text, headers=JSON)


# --- the data plane: one pair per sampled request, with the reason ----------------------------


@pytest.fixture
async def prod() -> AsyncIterator[ModelServer]:
    s = await ModelServer().start()
    yield s
    await s.stop()


@pytest.mark.parametrize(
    ("behave", "cand", "breaker", "expected"),
    [
        (lambda s: _raw_json(b'{"predictions": [NaN]}'), {}, {}, ["no_prediction"] * 4),
        (lambda s: _raw_json(b'{"predictions": [Infinity]}'), {}, {}, ["no_prediction"] * 4),
        (lambda s: _raw_json(b'{"predictions": []}'), {}, {}, ["no_prediction"] * 4),
        (lambda s: Reply(raw=b"garbage, not HTTP\r\n\r\n", close=True), {}, {},
         ["bad_response"] * 4),
        (lambda s: Reply(body=b'{"predictions": [1]}', delay=0.4), {"timeout_s": 0.1},
         {"failures": 2, "open_s": 60}, ["timeout"] * 2 + ["circuit_open"] * 2),
        (lambda s: Reply(hang=True), {"timeout_s": 30, "max_in_flight": 1}, {},
         ["dropped"] * 3 + ["timeout"]),
    ],
    ids=["nan", "infinite", "empty", "garbage", "slow-trips-breaker", "hang-drops"],
)  # fmt: skip
async def test_each_reason_without_a_prediction_is_a_counted_pair(
    prod: ModelServer,
    behave: Callable[[Seen], Reply],
    cand: dict[str, Any],
    breaker: dict[str, Any],
    expected: list[str],
) -> None:
    bad = await ModelServer(behave).start()
    cfg = make_config(
        prod.url,
        [{"name": "bad", "url": bad.url, **cand}],
        top={"mirror": {"breaker": breaker}} if breaker else {},
    )
    async with running_proxy(cfg) as (dp, sink):
        dp.config.proxy.__dict__["mirror_drain_s"] = 0.1  # a hung mirror is cut at shutdown
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
            for i in range(4):
                r = await client.post("/p", content=BODY, headers={"x-request-id": f"q-{i}"})
                assert r.status_code == 200 and r.json() == {"predictions": [2.5]}
                if "max_in_flight" not in cand:  # (a hung mirror never settles)
                    await settle(dp)
        stats = dict(dp.stats.mirrors)
    await bad.stop()
    records = sink.decoded()
    # one pair per sampled request (every request here), none production-only
    assert len(records) == 4 and sink.monitored() == []
    assert sorted(r["id"] for r in records) == [f"q-{i}" for i in range(4)]
    assert sorted(r["candidate"]["error"] for r in records) == sorted(expected)
    assert all(r["candidate"]["output"] is None for r in records)
    assert all(r["production"]["output"] == [2.5] for r in records)
    outcomes = ("sent", "dropped_full", "circuit_open")
    sampled = sum(stats.get(("fraud", "bad", k), 0) for k in outcomes)
    assert sampled == 4


async def test_pairs_equal_sampled_requests_whatever_the_candidate_does(prod: ModelServer) -> None:
    """Half the requests are sampled (by request id); a candidate that fails in every way
    still has exactly one pair per sampled request, and none for the others."""
    ways = [
        lambda s: _raw_json(b'{"predictions": [NaN]}'),
        lambda s: _raw_json(b'{"predictions": []}'),
        lambda s: Reply(status=503, body=b"busy"),
        lambda s: Reply(reset=True),
        kserve_reply,
    ]
    n = 200
    bad = await ModelServer(lambda s: ways[int(s.headers[b"x-request-id"][2:]) % 5](s)).start()
    cfg = make_config(
        prod.url,
        [{"name": "bad", "url": bad.url, "fraction": 0.5}],
        monitor_fraction=0.0,
        top={"mirror": {"breaker": {"failures": 10_000}}},
    )
    async with running_proxy(cfg) as (dp, sink):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dp.port}") as client:
            for i in range(n):
                r = await client.post("/p", content=BODY, headers={"x-request-id": f"s-{i}"})
                assert r.status_code == 200
        await settle(dp)
    await bad.stop()
    sampled = {f"s-{i}" for i in range(n) if sample_point(f"s-{i}".encode()) < 0.5}
    records = sink.decoded()
    assert len(records) == len(sampled) and {r["id"] for r in records} == sampled
    reasons = Counter(r["candidate"]["error"] for r in records)
    assert set(reasons) == {"no_prediction", "http_5xx", "reset", None}
    assert reasons["no_prediction"] > 0 and reasons[None] > 0


# --- end to end: the embedded stack, labels through the API ------------------------------------


def _config(tmp_path: Path, prod_url: str, cands: list[dict[str, Any]], **route: Any) -> Config:
    r: dict[str, Any] = {
        "name": "r",
        "protocol": "kserve-v1",
        "task": "classification",
        "production": {"name": "prod", "url": prod_url, "timeout_s": 2},
        "candidates": cands,
        "policy": {"min_pairs": 100, "min_labelled": 100},
    }
    r.update(route)
    return parse_config(
        {
            "listen": {"port": 0},
            "admin": {"port": 0},
            "comparator": {"state_path": str(tmp_path / "state.sqlite")},
            "mirror": {"breaker": {"failures": 10_000}},
            "routes": [r],
        },
        environ={},
    )


def _k(seen: Seen) -> int:
    return int(orjson.loads(seen.body)["instances"][0][0])


def _answer(label: int | None) -> Reply:
    if label is None:
        return _raw_json(b'{"predictions": [NaN]}')
    return _json({"predictions": [label]})


@contextlib.asynccontextmanager
async def _stack(cfg: Config) -> AsyncIterator[Stack]:
    async with embedded_stack(cfg) as stack:
        yield stack


async def _drive(stack: Stack, n: int, label: Callable[[int], int]) -> None:
    """``n`` requests (instance ``[k]``, id ``k-<k>``), then every label through the API."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.proxy_port}") as client:
        for k in range(n):
            body = orjson.dumps({"instances": [[k]]})
            r = await client.post("/p", content=body, headers={"x-request-id": f"k-{k}"})
            assert r.status_code == 200
    await settle(stack.dataplane)
    admin = f"http://127.0.0.1:{stack.admin_port}"
    async with httpx.AsyncClient(base_url=admin) as client:
        labels = [{"id": f"k-{k}", "label": label(k)} for k in range(n)]
        r = await client.post("/v1/labels", json=labels)
        assert r.status_code in (200, 202), r.text


async def _settled(stack: Stack, cand: str, pairs: int, labelled: int) -> dict[str, Any]:
    """The decision once the comparator has scored every pair and label."""
    admin = f"http://127.0.0.1:{stack.admin_port}"
    async with httpx.AsyncClient(base_url=admin) as client:
        for _ in range(200):
            d = (await client.get(f"/v1/routes/r/candidates/{cand}/decision")).json()
            if d["pairs"] >= pairs and d["labelled"] >= labelled:
                return dict(d)
            await asyncio.sleep(0.05)
    raise AssertionError(f"comparator did not settle: {d}")


async def _scores(stack: Stack, cand: str) -> dict[str, Any]:
    admin = f"http://127.0.0.1:{stack.admin_port}"
    async with httpx.AsyncClient(base_url=admin) as client:
        return dict((await client.get(f"/v1/routes/r/candidates/{cand}/scores")).json())


def _truth(k: int) -> int:
    return k % 2


def _prod_label(k: int) -> int:
    """80% right: wrong on k % 10 in (2, 3)."""
    return 1 - _truth(k) if k % 10 in (2, 3) else _truth(k)


@pytest.mark.parametrize("availability", [0.01, None], ids=["guardrail-on", "guardrail-off"])
async def test_a_candidate_that_skips_hard_cases_is_not_promoted(
    tmp_path: Path, availability: float | None
) -> None:
    """The candidate is always right when it answers, and answers NaN on the hard 30% (where
    production is right two times in three): 100% accurate on what it chose to answer, 70%
    on what it was asked. Even with the availability guardrail off, a skipped labelled
    instance is its miss, so accuracy shows it worse."""
    hard = (0, 1, 2)
    prod = await ModelServer(lambda s: _answer(_prod_label(_k(s)))).start()
    picky = await ModelServer(
        lambda s: _answer(None if _k(s) % 10 in hard else _truth(_k(s)))
    ).start()
    n = 600
    policy = {"min_pairs": 100, "min_labelled": 100, "guardrails": {}}
    policy["guardrails"] = {"availability_delta": availability}
    cfg = _config(tmp_path, prod.url, [{"name": "picky", "url": picky.url}], policy=policy)
    try:
        async with _stack(cfg) as stack:
            await _drive(stack, n, _truth)
            d = await _settled(stack, "picky", n, n)
            scores = await _scores(stack, "picky")
    finally:
        await prod.stop()
        await picky.stop()
    assert d["verdict"] != "promote", d["reasons"]
    assert d["pairs"] == n and d["labelled"] == n
    acc = scores["quality"]["accuracy"]
    assert acc["cand_mean"] == pytest.approx(0.7) and acc["prod_mean"] == pytest.approx(0.8)
    assert acc["estimate"] == pytest.approx(-0.1)
    assert scores["outcomes"]["candidate"] == {
        "with_prediction": 420,
        "no_prediction": {"no_prediction": 180},
        "labelled_no_prediction": 180,
    }
    if availability is None:
        assert "availability" not in d["metrics"]
    else:
        assert d["verdict"] == "reject"
        assert d["metrics"]["availability"]["status"] == "fail"
        assert scores["availability"]["estimate"] == pytest.approx(-0.3)


async def test_the_availability_guardrail_rejects_a_candidate_that_drops_half(
    tmp_path: Path,
) -> None:
    """Right whenever it answers, but half the requests get NaN, nothing, a 503 or garbage."""
    prod = await ModelServer(lambda s: _answer(_prod_label(_k(s)))).start()

    def flaky(s: Seen) -> Reply:
        k = _k(s)
        if k % 2 == 0:
            return _answer(_truth(k))
        return [
            _raw_json(b'{"predictions": [NaN]}'),
            _raw_json(b'{"predictions": []}'),
            Reply(status=503, body=b"busy"),
            Reply(raw=b"garbage, not HTTP\r\n\r\n", close=True),
        ][(k // 2) % 4]

    cand = await ModelServer(flaky).start()
    n = 400
    # accuracy is not the primary metric here: agreement-free regression on the same labels
    # would do too; what matters is that the availability guardrail alone shows it worse
    cfg = _config(tmp_path, prod.url, [{"name": "half", "url": cand.url}])
    try:
        async with _stack(cfg) as stack:
            await _drive(stack, n, _truth)
            d = await _settled(stack, "half", n, n)
            scores = await _scores(stack, "half")
    finally:
        await prod.stop()
        await cand.stop()
    assert d["verdict"] == "reject"
    ev = d["metrics"]["availability"]
    assert ev["status"] == "fail" and ev["estimate"] == pytest.approx(-0.5)
    assert ev["upper"] < ev["threshold"] == -0.01
    assert any(r.startswith("shown worse: availability") for r in d["reasons"])
    out = scores["outcomes"]["candidate"]
    assert out["with_prediction"] == n // 2
    assert out["no_prediction"] == {
        "bad_response": 50, "http_5xx": 50, "no_prediction": 100,
    }  # fmt: skip
    assert sum(out["no_prediction"].values()) + out["with_prediction"] == d["pairs"] == n


async def test_a_noise_candidate_shows_the_floor_and_never_promotes(tmp_path: Path) -> None:
    """Production answers at random on 20% of calls (as a model with float jitter might):
    mirrored to itself, it disagrees with itself, and that is the floor beside the real
    candidate. Non-inferiority with a wide margin would promote the noise candidate on its
    evidence alone; it holds."""
    rng = random.Random(7)

    def jittery(s: Seen) -> Reply:
        k = _k(s)
        return _answer(rng.randint(0, 1) if rng.random() < 0.2 else _prod_label(k))

    prod = await ModelServer(jittery).start()
    good = await ModelServer(lambda s: _answer(_truth(_k(s)))).start()
    n = 400
    policy = {
        "min_pairs": 100,
        "min_labelled": 100,
        "mode": "non_inferiority",
        "margin": 0.3,
        "guardrails": {
            "error_rate_delta": 0.1,
            "timeout_rate_delta": 0.1,
            "availability_delta": 0.1,
        },
    }
    cfg = _config(
        tmp_path,
        prod.url,
        [{"name": "good", "url": good.url}],
        policy=policy,
        noise={"fraction": 1.0},
    )
    assert [(c.name, c.noise, c.url) for c in cfg.routes[0].candidates] == [
        ("good", False, good.url),
        ("noise", True, prod.url),
    ]
    try:
        async with _stack(cfg) as stack:
            await _drive(stack, n, _truth)
            noise = await _settled(stack, "noise", n, n)
            cand = await _settled(stack, "good", n, n)
            noise_scores = await _scores(stack, "noise")
            cand_scores = await _scores(stack, "good")
            admin = f"http://127.0.0.1:{stack.admin_port}"
            async with httpx.AsyncClient(base_url=admin) as client:
                hist = (await client.get("/v1/routes/r/candidates/noise/history")).json()
    finally:
        await prod.stop()
        await good.stop()
    assert noise["verdict"] == "hold" and noise["noise"] is True
    # ... though every metric passes: the policy alone would have promoted it
    assert {ev["status"] for ev in noise["metrics"].values()} == {"pass"}, noise["metrics"]
    assert noise["reasons"][0].startswith("noise candidate: production compared with itself")
    assert any("production disagrees with itself" in r for r in noise["reasons"])
    assert "noise_floor" not in noise and noise_scores["noise"] is True
    assert {h["verdict"] for h in hist["history"]} == {"hold"}
    # the floor beside the real candidate, in its decision and its scores
    for decision in (noise, cand):
        assert_documented(decision, "Decision")
    for scores in (noise_scores, cand_scores):
        assert_documented(scores, "Scores")
    assert_documented(hist, "History")
    floor = cand["noise_floor"]
    assert floor["candidate"] == "noise" and floor["pairs"] == n
    agreement = noise_scores["agreement"]["estimate"]
    assert floor["disagreement"] == pytest.approx(1.0 - agreement)
    assert 0.03 < floor["disagreement"] < 0.3
    latency_ratios = {"latency_p95_ratio", "latency_p99_ratio"}
    assert set(floor["metrics"]) == set(cand["metrics"]) - latency_ratios
    acc = floor["metrics"]["accuracy"]
    assert acc["n"] == n and acc["lower"] < acc["estimate"] < acc["upper"]
    assert acc["estimate"] == pytest.approx(noise_scores["quality"]["accuracy"]["estimate"])
    assert cand_scores["noise_floor"]["metrics"]["availability"]["estimate"] == 0.0
    assert cand["verdict"] == "promote", cand["reasons"]


# --- the pure parts --------------------------------------------------------------------------


def _route(**extra: Any) -> Route:
    return Route.model_validate(
        {
            "name": "r",
            "protocol": "kserve-v1",
            "task": "classification",
            "production": {"name": "prod", "url": "http://127.0.0.1:1", "version": "3"},
            **extra,
        }
    )


def _row(prod: list[Any] | None, cand: list[Any] | None, error: str | None) -> PairRow:
    return PairRow(1, None, error, 1.0, None if error else 1.0, prod, cand)


def test_availability_counts_each_outcome_and_leaves_out_the_proxys_limit() -> None:
    state = new_candidate_state(_route(), "c", ["hour"])
    state.add_pairs(
        [
            _row([1], [1], None),
            _row([1, 0], [1, None], None),  # half the instances: availability 0.5
            _row([1], None, "dropped"),
            _row([1], None, "no_prediction"),
            _row([1], None, "not_mirrored"),  # never sent: not the candidate's outcome
        ]
    )
    assert state.pairs == 5
    assert state.availability.n == 4
    assert state.availability.diff_sum == pytest.approx(-2.5)  # 0, −0.5, −1, −1
    assert state.error_rate.diff_sum == pytest.approx(-2.0)  # dropped, no_prediction
    out = state.scores()["outcomes"]
    assert out["candidate"]["no_prediction"] == {
        "dropped": 1, "no_prediction": 1, "not_mirrored": 1,
    }  # fmt: skip
    assert out["candidate"]["with_prediction"] == 2
    assert out["production"] == {"with_prediction": 5, "no_prediction": {}}


def test_a_skipped_labelled_instance_is_the_candidates_worst() -> None:
    for task, worst in (("classification", [0.0]), ("probability", [13.8155, 2.0])):
        state = new_candidate_state(_route(task=task), "c", ["hour"])
        prod = 1 if task == "classification" else [0.2, 0.8]
        bad = [] if task == "classification" else "x"  # does not fit the task
        state.add_labelled([LabelledRow(1, prod, None, 1), LabelledRow(1, prod, bad, 1)], None)
        assert state.labelled == 2 and state.count("labelled_no_prediction") == 2
        for metric, value in zip(state.quality.values(), worst, strict=True):
            assert metric.cand_sum == pytest.approx(2 * value, rel=1e-4)
    reg = new_candidate_state(_route(task="regression"), "c", ["hour"])
    reg.add_labelled([LabelledRow(1, 1.0, None, 1.0)], None)
    assert reg.labelled == 0 and reg.count("labelled_no_prediction") == 1
    assert reg.count("invalid_labelled") == 1


def test_states_stored_before_availability_still_load() -> None:
    state = new_candidate_state(_route(), "c", ["hour"])
    state.add_pairs([_row([1], [1], None)])
    old = state.to_dict()
    del old["availability"]
    again = CandidateState.from_dict(old)
    assert again.availability.n == 0 and again.availability.alpha == again.error_rate.alpha
    assert again.merge(again).pairs == 2


def test_noise_config() -> None:
    route = _route(noise={"fraction": 0.1})
    [noise] = route.candidates
    assert (noise.name, noise.noise, noise.url, noise.version, noise.fraction) == (
        "noise", True, "http://127.0.0.1:1", "3", 0.1,
    )  # fmt: skip
    # validating the dumped route again adds no second noise candidate
    assert len(Route.model_validate(route.model_dump()).candidates) == 1
    with pytest.raises(ValidationError, match="is a candidate that is not noise"):
        _route(noise={}, candidates=[{"name": "noise", "url": "http://127.0.0.1:2"}])
    explicit = _route(candidates=[{"name": "replica", "url": "http://127.0.0.1:2", "noise": True}])
    assert explicit.candidates[0].noise and Policy().guardrails.availability_delta == 0.01


async def test_a_client_that_goes_away_still_leaves_the_candidates_pair() -> None:
    """The client closes its connection before production answers: production's answer is not
    awaited (``abandoned``), the candidate's outcome is still recorded."""
    slow = await ModelServer(lambda s: Reply(body=b'{"predictions": [1]}', delay=0.5)).start()
    cand = await ModelServer().start()
    cfg = make_config(slow.url, [{"name": "c", "url": cand.url}])
    async with running_proxy(cfg) as (dp, sink):
        _, writer = await asyncio.open_connection("127.0.0.1", dp.port)
        writer.write(
            b"POST /p HTTP/1.1\r\nHost: h\r\nx-request-id: gone-1\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
        await writer.drain()
        await asyncio.sleep(0.1)  # the mirror has gone out; production is still thinking
        sock = writer.get_extra_info("socket")  # gone, not half-closed: a reset (SO_LINGER 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.1)
        await settle(dp)
    await slow.stop()
    await cand.stop()
    [rec] = sink.decoded()
    assert rec["id"] == "gone-1" and rec["production"]["error"] == "abandoned"
    assert rec["production"]["output"] is None
    assert rec["candidate"]["error"] is None and rec["candidate"]["output"] == [2.5]
    state = new_candidate_state(_route(), "c", ["hour"])
    state.add_pairs([PairRow(1, "abandoned", None, None, 1.0, None, [1])])
    assert state.availability.n == 0 and state.error_rate.diff_sum == 0.0
    assert state.scores()["outcomes"]["production"]["no_prediction"] == {"abandoned": 1}
