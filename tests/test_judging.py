"""The judge's pure core (parsing, orders, limits), assessment records, the judge config, and
the engine's handling of assessments (order-free, persisted, bad ones dead-lettered)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from shadowroute.comparator.engine import Engine
from shadowroute.comparator.store import Store
from shadowroute.core.assessments import AssessmentRecord, decode_assessment, encode_assessment
from shadowroute.core.config import Config, ConfigError, parse_config
from shadowroute.core.judging import (
    Breaker,
    Budget,
    TokenBucket,
    assess_sampled,
    candidate_first,
    combine,
    cosine,
    judge_messages,
    parse_verdict,
    prompt_text,
    seen_from_candidate,
)
from shadowroute.core.records import RecordError, Side, encode_pair
from shadowroute.core.revision import revision_id
from shadowroute.dataplane.planner import route_plans
from test_records import load_schema, valid

ROUTE, PROD, CAND = "chat", "big", "small"


# --- parsing and orders ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"), ("b", "B"), ("TIE", "TIE"), (" tie. ", "TIE"), ("B\n", "B"),
        ("VERDICT: A", "A"), ("Long reasoning.\nMore.\n\nverdict: b", "B"),
        ("", None), ("A or B", None), ("A is better", None), ("AB", None), ("Answer A", None),
        ("VERDICT: C", None), ("reasoning\nA", None), ("VERDICT: A\nreasoning", None),
        ("**A**", None), ("A.\nB.", None),
    ],
)  # fmt: skip
def test_verdicts_are_parsed_strictly(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


def test_verdicts_seen_from_the_candidate_and_combined() -> None:
    assert seen_from_candidate("A", candidate_is_a=True) == "win"
    assert seen_from_candidate("A", candidate_is_a=False) == "loss"
    assert seen_from_candidate("B", candidate_is_a=False) == "win"
    assert seen_from_candidate("TIE", candidate_is_a=True) == "tie"
    assert combine("win", "win") == ("win", False)
    assert combine("loss", "loss") == ("loss", False)
    assert combine("tie", "tie") == ("tie", False)
    assert combine("win", "loss") == ("tie", True)  # position bias: both A
    assert combine("win", "tie") == ("tie", True)


def test_order_and_sampling_are_fixed_by_id_and_independent() -> None:
    ids = [f"r{i}" for i in range(4000)]
    firsts = [candidate_first(i) for i in ids]
    assert firsts == [candidate_first(i) for i in ids]
    assert 0.45 < sum(firsts) / len(ids) < 0.55
    judged = {i for i in ids if assess_sampled(i, 0.25, "judge")}
    embedded = {i for i in ids if assess_sampled(i, 0.25, "similarity")}
    assert 0.22 < len(judged) / len(ids) < 0.28
    # the two samples are independent of each other: about a quarter overlap
    assert 0.18 < len(judged & embedded) / len(judged) < 0.32
    assert all(assess_sampled(i, 1.0, "judge") for i in ids[:10])
    assert not any(assess_sampled(i, 0.0, "judge") for i in ids[:10])


def test_the_judge_prompt_is_blinded() -> None:
    msgs = judge_messages("Be correct.", "user: 2+2?", "4", "5")
    text = orjson.dumps(msgs).decode()
    assert "Be correct." in msgs[0]["content"] and "VERDICT" in msgs[0]["content"]
    assert "## Answer A\n4\n\n## Answer B\n5" in msgs[1]["content"]
    assert "production" not in text.lower() and "candidate" not in text.lower()


def test_prompt_text() -> None:
    parts = [{"type": "text", "text": "hi"}]
    chat = {
        "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": parts}]
    }
    assert prompt_text(chat, 100) == ("system: Be brief\nuser: hi", False)
    assert prompt_text({"prompt": "complete me"}, 100) == ("complete me", False)
    assert prompt_text({"x": 1}, 100) == ('{"x":1}', False)
    assert prompt_text({"prompt": "y" * 50}, 10) == ("y" * 10, True)
    assert prompt_text(None, 10) == ("", False)


def test_cosine() -> None:
    assert cosine([1.0, 0.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert cosine([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)
    assert cosine([], []) is None
    assert cosine([0.0, 0.0], [1.0, 0.0]) is None
    assert cosine([1.0], [1.0, 2.0]) is None
    assert cosine([float("inf"), 1.0], [1.0, 1.0]) is None


def test_token_bucket_breaker_budget() -> None:
    b = TokenBucket(rate=2.0, burst=2.0)
    assert b.take(2, now=0.0) and not b.take(1, now=0.0)
    assert b.take(1, now=0.5) and not b.take(1, now=0.5)
    br = Breaker(failures=2, open_s=10.0)
    assert br.allow(0.0)
    br.failure(0.0)
    assert br.state == "closed"
    br.failure(1.0)
    assert br.state == "open" and not br.allow(5.0) and br.opened == 1
    assert br.allow(11.5) and br.state == "half_open"
    assert not br.allow(11.6)  # one probe at a time
    br.failure(12.0)  # the probe failed: open again
    assert br.state == "open" and br.opened == 2 and not br.allow(13.0)
    assert br.allow(22.5)
    br.success()
    assert br.state == "closed" and br.allow(22.6)
    budget = Budget(limit=5, spent=2)
    assert budget.take(2) and not budget.take(2) and budget.left == 1
    assert Budget(limit=None).take(10**9)


# --- assessment records ------------------------------------------------------------------------


def _rec(**kw: Any) -> AssessmentRecord:
    base = AssessmentRecord("r1", ROUTE, CAND, "0123456789ab", 5, judge="loss",
                            orders=("loss", "loss"), judge_calls=2)  # fmt: skip
    return dataclasses.replace(base, **kw)


def test_assessment_records_round_trip() -> None:
    for rec in (
        _rec(),
        _rec(judge="tie", orders=("win", "loss"), inconsistent=True),
        _rec(judge="failed", orders=("failed", "win"), judge_error="timeout"),
        _rec(judge=None, orders=None, judge_calls=0, similarity=0.5, similarity_calls=1),
        _rec(similarity_error="http_5xx", similarity_calls=1),
    ):
        assert decode_assessment(encode_assessment(rec)) == rec


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"v": 2}, "schema_version"),
        ({"v": None}, "bad_type:v"),
        ({"kind": "pair"}, "bad_value:kind"),
        ({"id": "has space"}, "bad_value:id"),
        ({"id": 5}, "bad_type:id"),
        ({"route": ""}, "bad_type:route"),
        ({"candidate": "x" * 300}, "bad_value:candidate"),
        ({"revision": "XYZ"}, "bad_value:revision"),
        ({"ts": -1}, "bad_value:ts"),
        ({"ts": 1.5}, "bad_type:ts"),
        ({"judge": "maybe"}, "bad_value:judge"),
        ({"judge": 1}, "bad_type:judge"),
        ({"orders": ["win"]}, "bad_type:orders"),
        ({"orders": ["win", "great"]}, "bad_value:orders"),
        ({"orders": None}, "missing_field:orders"),
        ({"inconsistent": 1}, "bad_type:inconsistent"),
        ({"similarity": 1.5}, "bad_value:similarity"),
        ({"similarity": "high"}, "bad_type:similarity"),
        ({"judge_error": "exploded"}, "bad_value:judge_error"),
        ({"calls": {"judge": 10**6}}, "bad_value:calls.judge"),
        ({"calls": {"judge": "2"}}, "bad_type:calls.judge"),
        ({"calls": []}, "bad_type:calls"),
    ],
)
def test_bad_assessment_records_name_the_reason(patch: dict[str, Any], reason: str) -> None:
    doc = orjson.loads(encode_assessment(_rec())) | patch
    with pytest.raises(RecordError) as err:
        decode_assessment(orjson.dumps(doc))
    assert err.value.reason == reason
    for value in (b"{", b"[]"):
        with pytest.raises(RecordError):
            decode_assessment(value)


def test_assessment_schema_accepts_what_is_encoded_and_refuses_the_bad() -> None:
    schema = load_schema("assessment")
    for rec in (_rec(), _rec(judge=None, orders=None, similarity=-0.25, similarity_calls=1)):
        assert valid(orjson.loads(encode_assessment(rec)), schema, schema)
    for patch in ({"judge": "maybe"}, {"similarity": 2}, {"revision": "x"}, {"v": 2},
                  {"orders": ["win", "great"]}, {"judge_error": "exploded"}):  # fmt: skip
        bad = orjson.loads(encode_assessment(_rec())) | patch
        assert not valid(bad, schema, schema), patch
        with pytest.raises(RecordError):
            decode_assessment(orjson.dumps(bad))


# --- config ------------------------------------------------------------------------------------


def _cfg(state: str = ":memory:", **route: Any) -> Config:
    r: dict[str, Any] = {
        "name": ROUTE,
        "protocol": "openai",
        "task": "text",
        "production": {"name": PROD, "url": "http://127.0.0.1:9"},
        "candidates": [{"name": CAND, "url": "http://127.0.0.1:9"}],
        "judge": {"url": "http://127.0.0.1:9", "model": "j", "rubric": "r"},
        "policy": {"primary_metric": "judge", "min_pairs": 10},
    }
    r.update(route)
    return parse_config({"routes": [r], "comparator": {"state_path": state}}, environ={})


def test_judge_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="judge and similarity compare texts"):
        _cfg(task="classification", policy={})
    with pytest.raises(ConfigError, match="primary_metric 'judge' needs a judge"):
        _cfg(judge=None)
    with pytest.raises(ConfigError, match=r"routes\[0\]\.judge\.rubric"):
        _cfg(judge={"url": "http://127.0.0.1:9", "model": "j"})
    with pytest.raises(ConfigError, match=r"routes\[0\]\.judge\.url"):
        _cfg(judge={"url": "ftp://x", "model": "j", "rubric": "r"})
    with pytest.raises(ConfigError, match=r"sample_fraction"):
        _cfg(judge={"url": "http://x", "model": "j", "rubric": "r", "sample_fraction": 2})
    with pytest.raises(ConfigError, match=r"env:VARIABLE or file:PATH"):
        _cfg(judge={"url": "http://x", "model": "j", "rubric": "r",
                    "secret_headers": {"Authorization": "Bearer sk-1"}})  # fmt: skip


def test_judge_secret_headers_and_the_prompt_in_records() -> None:
    raw = {
        "routes": [
            {
                "name": ROUTE, "protocol": "openai", "task": "text",
                "production": {"name": PROD, "url": "http://127.0.0.1:9"},
                "judge": {"url": "http://127.0.0.1:9", "model": "j", "rubric": "r",
                          "headers": {"x-team": "ml"},
                          "secret_headers": {"Authorization": "env:JUDGE_KEY"}},
                "similarity": {"url": "http://127.0.0.1:9", "model": "e",
                               "secret_headers": {"Authorization": "env:EMBED_KEY"}},
            }
        ]
    }  # fmt: skip
    cfg = parse_config(raw, environ={"JUDGE_KEY": "Bearer j", "EMBED_KEY": "Bearer e"})
    judge, sim = cfg.routes[0].judge, cfg.routes[0].similarity
    assert judge is not None and sim is not None
    assert judge.secret_header_values() == {"Authorization": "Bearer j"}
    assert sim.secret_header_values() == {"Authorization": "Bearer e"}
    with pytest.raises(ConfigError, match="JUDGE_KEY"):
        parse_config(raw, environ={"EMBED_KEY": "x"})
    # a judged route's records carry the request (the prompt); without a judge, not
    assert route_plans(cfg)[0].needs_input
    raw["routes"][0].pop("judge")
    assert not route_plans(parse_config(raw, environ={"EMBED_KEY": "x"}))[0].needs_input


# --- the engine --------------------------------------------------------------------------------


def _pair(i: int) -> tuple[bytes, bytes]:
    value = encode_pair(
        request_id=f"q{i}", route=ROUTE, ts_ms=1_000 + i,
        production=Side(PROD, None, 200, 9.0, ["GOOD"], None, url="http://p"),
        candidate=Side(CAND, None, 200, 1.0, ["bad"], None, url="http://c"),
        input={"prompt": "x"},
    )  # fmt: skip
    return f"q{i}".encode(), value


def _assessment(i: int, judge: str = "loss") -> bytes:
    rid = revision_id(("http://c", None, None), ("http://p", None, None))
    return encode_assessment(
        AssessmentRecord(f"q{i}", ROUTE, CAND, rid, 1_000 + i, judge=judge,
                         orders=(judge, judge), judge_calls=2, similarity=0.25,
                         similarity_calls=1)
    )  # fmt: skip


def _judge_state(engine: Engine) -> dict[str, Any]:
    slot = next(k.candidate for k in engine.states if k.kind == "cand")
    state = engine.candidate(ROUTE, slot, 0)
    assert state is not None and state.judge is not None
    return {"n": state.judge.n, "sum": state.judge.diff_sum, "scores": state.scores()["judge"],
            "sim": state.scores()["embedding_similarity"], "rev": state.revision}  # fmt: skip


def test_assessments_count_the_same_before_or_after_their_pairs(tmp_path: Path) -> None:
    results = ["loss"] * 8 + ["tie", "win", "unparseable", "failed"]
    pairs = [_pair(i) for i in range(12)]
    assessed = [_assessment(i, r) for i, r in enumerate(results)]
    after = Engine(_cfg(str(tmp_path / "a.sqlite")), Store(tmp_path / "a.sqlite"), clock=None)
    after.process(0, pairs, [])
    after.process(0, [], [], assessments=assessed)
    before = Engine(_cfg(str(tmp_path / "b.sqlite")), Store(tmp_path / "b.sqlite"), clock=None)
    before.process(0, [], [], assessments=assessed[:6])
    before.process(0, pairs, [], assessments=assessed[6:])
    a, b = _judge_state(after), _judge_state(before)
    assert a["n"] == b["n"] == 10  # unparseable and failed are left out
    assert a["sum"] == b["sum"] == -8 + 0 + 1
    assert a["scores"] == b["scores"]
    assert a["scores"]["unparseable"] == 1 and a["scores"]["failed"] == 1
    assert a["scores"]["calls"] == 24
    assert a["sim"] == b["sim"] and a["sim"]["n"] == 12 and a["sim"]["mean"] == 0.25
    assert b["rev"]["candidate"] is not None  # completed once its pairs came
    assert after.position(0).assessments == 12 and before.position(0).assessments == 12
    # persisted: a new engine on the same file reads the same evidence and positions
    again = Engine(_cfg(str(tmp_path / "a.sqlite")), Store(tmp_path / "a.sqlite"), clock=None)
    assert _judge_state(again)["scores"] == a["scores"]
    assert again.position(0).assessments == 12


def test_an_assessment_of_a_pair_already_assessed_counts_once(tmp_path: Path) -> None:
    """A pair judged twice (a re-delivered or replayed pair record): the second assessment is
    counted as a duplicate, in the same batch or a later one, and after a restart."""
    path = tmp_path / "s.sqlite"
    engine = Engine(_cfg(str(path)), Store(path), clock=None)
    engine.process(0, [_pair(0), _pair(1)], [], assessments=[_assessment(0), _assessment(0)])
    engine.process(0, [], [], assessments=[_assessment(0, "win"), _assessment(1)])
    again = Engine(_cfg(str(path)), Store(path), clock=None)
    again.process(0, [], [], assessments=[_assessment(1, "win")])
    state = _judge_state(again)
    assert state["n"] == 2 and state["sum"] == -2
    assert again.counters(0).get("duplicate_assessments", 0) == 3
    # another time under the same id is another pair: counted
    later = encode_assessment(
        dataclasses.replace(decode_assessment(_assessment(0, "win")), ts=9_999)
    )
    again.process(0, [], [], assessments=[later])
    assert _judge_state(again)["n"] == 3


def test_bad_assessments_are_dead_letters(tmp_path: Path) -> None:
    engine = Engine(_cfg(str(tmp_path / "s.sqlite")), Store(tmp_path / "s.sqlite"), clock=None)
    other = dataclasses.replace(decode_assessment(_assessment(0)), candidate="nope")
    gone = dataclasses.replace(decode_assessment(_assessment(0)), route="nope")
    dead = engine.process(
        0, [], [], assessments=[b"{", encode_assessment(other), encode_assessment(gone)]
    )
    assert [d[2] for d in dead] == [
        "assessment:unparseable", "assessment:unknown_candidate", "assessment:unknown_route",
    ]  # fmt: skip
    assert engine.counters(0).get("assessments_read", 0) == 3
