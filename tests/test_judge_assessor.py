"""The assessor against real HTTP stand-ins of a judge and an embeddings server: blinded calls
in both orders, strict parsing, position bias, failures, limits and the budget."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from judge_upstreams import EmbeddingServer, JudgeServer
from shadowroute.comparator.assessor import Assessor, calls_recorded
from shadowroute.comparator.state import StateKey
from shadowroute.core.assessments import AssessmentRecord, decode_assessment
from shadowroute.core.config import Config, parse_config
from shadowroute.core.judging import candidate_first
from shadowroute.core.records import Side, encode_pair

ROUTE, PROD, CAND = "chat", "big-llm", "small-llm"


def make_config(
    judge: dict[str, Any] | None = None, similarity: dict[str, Any] | None = None
) -> Config:
    route: dict[str, Any] = {
        "name": ROUTE,
        "protocol": "openai",
        "task": "text",
        "production": {"name": PROD, "url": "http://127.0.0.1:9"},
        "candidates": [{"name": CAND, "url": "http://127.0.0.1:9", "fraction": 1.0}],
    }
    if judge is not None:
        route["judge"] = {"model": "judge-1", "rubric": "Prefer the correct answer.", **judge}
    if similarity is not None:
        route["similarity"] = {"model": "embed-1", **similarity}
    return parse_config({"routes": [route]}, environ={})


def pair(i: int, prod: str = "GOOD answer", cand: str = "bad answer", **kw: Any) -> bytes:
    return encode_pair(
        request_id=f"req-{i}",
        route=kw.get("route", ROUTE),
        ts_ms=1_000 + i,
        production=Side(PROD, None, 200, 30.0, [prod], None, url="http://p"),
        candidate=Side(CAND, None, 200, 5.0, [cand], None, url="http://c"),
        input=kw.get("input", {"messages": [{"role": "user", "content": f"question {i}"}]}),
    )


class Collected:
    def __init__(self) -> None:
        self.records: list[AssessmentRecord] = []

    async def __call__(self, batch: Sequence[bytes]) -> None:
        self.records.extend(decode_assessment(v) for v in batch)


@pytest.fixture
async def judge_server(request: pytest.FixtureRequest) -> AsyncIterator[JudgeServer]:
    mode, delay = getattr(request, "param", ("good", 0.0))
    server = await JudgeServer(mode, delay).start()
    yield server
    await server.stop()


async def _run(cfg: Config, records: list[bytes], **kw: Any) -> tuple[Assessor, Collected]:
    out = Collected()
    a = Assessor(cfg, out, **kw)
    await a.start()
    try:
        a.offer([(f"req-{i}".encode(), r) for i, r in enumerate(records)])
        await a.drain()
    finally:
        await a.close()
    return a, out


async def test_good_judge_blinded_both_orders(judge_server: JudgeServer) -> None:
    cfg = make_config({"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 1000})
    a, out = await _run(cfg, [pair(i) for i in range(20)])
    assert len(out.records) == 20
    assert all(r.judge == "loss" and r.orders == ("loss", "loss") for r in out.records)
    assert all(not r.inconsistent and r.judge_calls == 2 for r in out.records)
    assert {r.candidate for r in out.records} == {CAND}
    assert len(judge_server.seen) == 40
    for body in judge_server.seen:
        text = orjson.dumps(body).decode()
        assert PROD not in text and CAND not in text  # blinded: no model names
        assert body["model"] == "judge-1" and body["temperature"] == 0
        assert "Prefer the correct answer." in body["messages"][0]["content"]
    # each pair is asked in both orders: the GOOD answer is A in one call and B in the other
    firsts = {b["messages"][1]["content"].split("## Answer A\n")[1][:4] for b in judge_server.seen}
    assert firsts == {"GOOD", "bad "}
    # which order comes first is fixed per id, and both occur
    assert {candidate_first(f"req-{i}") for i in range(20)} == {True, False}
    st = a.stats()[ROUTE]["judge"]
    assert st["calls"] == 40 and st["assessed"] == 20 and st["budget_left"] == 10_000 - 40


@pytest.mark.parametrize("judge_server", [("first", 0.0)], indirect=True)
async def test_a_judge_biased_to_the_first_position_gives_ties(judge_server: JudgeServer) -> None:
    cfg = make_config({"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 1000})
    a, out = await _run(cfg, [pair(i) for i in range(10)])
    assert [r.judge for r in out.records] == ["tie"] * 10
    assert all(r.inconsistent and set(r.orders or ()) == {"win", "loss"} for r in out.records)
    assert a.stats()[ROUTE]["judge"]["inconsistent"] == 10


@pytest.mark.parametrize("judge_server", [("chatty", 0.0)], indirect=True)
async def test_a_reasoned_reply_with_a_verdict_line_parses(judge_server: JudgeServer) -> None:
    cfg = make_config({"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 1000})
    _, out = await _run(cfg, [pair(0, prod="bad", cand="GOOD")])
    assert out.records[0].judge == "win"


@pytest.mark.parametrize("judge_server", [("unparseable", 0.0)], indirect=True)
async def test_unparseable_replies_are_recorded_never_guessed(judge_server: JudgeServer) -> None:
    cfg = make_config({"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 1000})
    a, out = await _run(cfg, [pair(i) for i in range(5)])
    assert [r.judge for r in out.records] == ["unparseable"] * 5
    assert all(r.orders == ("unparseable", "unparseable") for r in out.records)
    st = a.stats()[ROUTE]["judge"]
    assert st["unparseable"] == 10 and st["failures"] == {} and st["breaker"] == "closed"


@pytest.mark.parametrize(
    ("judge_server", "reason"),
    [(("failing", 0.0), "http_5xx"), (("malformed", 0.0), "bad_response"),
     (("wrong_shape", 0.0), "bad_response"), (("huge", 0.0), "bad_response")],
    indirect=["judge_server"],
)  # fmt: skip
async def test_failing_judge_is_counted_and_opens_its_breaker(
    judge_server: JudgeServer, reason: str
) -> None:
    cfg = make_config(
        {
            "url": judge_server.url,
            "sample_fraction": 1.0,
            "rate_per_s": 1000,
            "breaker": {"failures": 3, "open_s": 60},
            "concurrency": 1,
        }
    )
    a, out = await _run(cfg, [pair(i) for i in range(10)])
    assert [r.judge for r in out.records] == ["failed"] * 3
    assert all(r.judge_error == reason for r in out.records)
    st = a.stats()[ROUTE]["judge"]
    assert st["failures"] == {reason: 6}
    assert st["skipped"] == {"circuit_open": 7} and st["breaker"] == "open"
    assert st["breaker_opened"] == 1


@pytest.mark.parametrize("judge_server", [("slow", 1.0)], indirect=True)
async def test_slow_judge_times_out(judge_server: JudgeServer) -> None:
    cfg = make_config(
        {"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 1000, "timeout_s": 0.2}
    )
    _, out = await _run(cfg, [pair(0)])
    assert out.records[0].judge == "failed" and out.records[0].judge_error == "timeout"


async def test_unreachable_judge_is_connect() -> None:
    cfg = make_config({"url": "http://127.0.0.1:9", "sample_fraction": 1.0})
    _, out = await _run(cfg, [pair(0)])
    assert out.records[0].judge_error == "connect"


async def test_rate_limit_and_budget_skip_and_count(judge_server: JudgeServer) -> None:
    clock = [100.0]  # a frozen clock: no tokens come back during the test
    cfg = make_config({"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 4})
    a, out = await _run(cfg, [pair(i) for i in range(10)], clock=lambda: clock[0])
    assert len(out.records) == 2  # a burst of 4 calls: two pairs
    assert a.stats()[ROUTE]["judge"]["skipped"] == {"rate_limited": 8}
    # the budget starts from the calls recorded in the state before a restart
    cfg = make_config(
        {"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 1000, "max_calls": 10}
    )
    snap = {StateKey.cand(ROUTE, f"{CAND}@0123456789ab", 0): {"counts": {"judge_calls": 6.0}}}
    spent = calls_recorded(snap)
    assert spent == {(ROUTE, "judge"): 6}
    a, out = await _run(cfg, [pair(i) for i in range(10)], spent=spent)
    assert len(out.records) == 2
    st = a.stats()[ROUTE]["judge"]
    assert st["skipped"] == {"budget_exhausted": 8} and st["budget_left"] == 0


async def test_sampling_is_by_request_id(judge_server: JudgeServer) -> None:
    cfg = make_config({"url": judge_server.url, "sample_fraction": 0.3, "rate_per_s": 1000})
    _, first = await _run(cfg, [pair(i) for i in range(200)])
    _, again = await _run(cfg, [pair(i) for i in range(200)])
    ids = [r.id for r in first.records]
    assert 30 < len(ids) < 90
    assert sorted(ids) == sorted(r.id for r in again.records)


async def test_records_without_text_or_request_are_skipped(judge_server: JudgeServer) -> None:
    cfg = make_config({"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 1000})
    no_input = encode_pair(
        request_id="req-0", route=ROUTE, ts_ms=1,
        production=Side(PROD, None, 200, 1.0, ["GOOD"], None),
        candidate=Side(CAND, None, 200, 1.0, ["bad"], None), input=None,
    )  # fmt: skip
    failed = encode_pair(
        request_id="req-1", route=ROUTE, ts_ms=1,
        production=Side(PROD, None, 200, 1.0, ["GOOD"], None),
        candidate=Side(CAND, None, None, None, None, "timeout"), input={"prompt": "x"},
    )  # fmt: skip
    a, out = await _run(cfg, [no_input, failed, b"not json"])
    assert out.records == []
    assert a.stats()[ROUTE]["judge"]["skipped"] == {"no_input": 1, "no_text": 1}
    assert judge_server.seen == []


async def test_long_texts_are_cut_and_counted(judge_server: JudgeServer) -> None:
    cfg = make_config(
        {"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 1000, "max_chars": 100}
    )
    a, out = await _run(cfg, [pair(0, prod="GOOD " + "x" * 500)])
    assert out.records[0].judge == "loss"
    assert a.stats()[ROUTE]["judge"]["truncated"] == 1  # production's answer
    assert all(len(b["messages"][1]["content"]) < 500 for b in judge_server.seen)


@pytest.mark.parametrize(
    ("mode", "similarity", "error"),
    [
        ("good", 1.0, None),
        ("failing", None, "http_5xx"),
        ("malformed", None, "bad_response"),
        ("too_many_dims", None, "bad_response"),
    ],
)
async def test_embedding_similarity(mode: str, similarity: float | None, error: str | None) -> None:
    server = await EmbeddingServer(mode).start()
    try:
        cfg = make_config(similarity={"url": server.url})
        a, out = await _run(cfg, [pair(0, prod="abc", cand="cab"), pair(1, prod="a", cand="b")])
        rec = out.records[0]
        assert rec.judge is None and rec.similarity_calls == 1
        assert rec.similarity == (pytest.approx(similarity) if similarity else None)
        assert rec.similarity_error == error
        if mode == "good":
            assert out.records[1].similarity == pytest.approx(0.0)
            assert server.seen[0] == {"model": "embed-1", "input": ["abc", "cab"]}
        st = a.stats()[ROUTE]["similarity"]
        assert st["calls"] == 2
        assert st["failures"] == ({} if error is None else {error: 2})
    finally:
        await server.stop()


async def test_queue_is_bounded(judge_server: JudgeServer) -> None:
    cfg = make_config({"url": judge_server.url, "sample_fraction": 1.0, "rate_per_s": 1000})
    out = Collected()
    a = Assessor(cfg, out, max_queue=5)  # not started: nothing is taken off the queue
    a.offer([(f"req-{i}".encode(), pair(i)) for i in range(12)])
    assert a.queue_full == 7
