"""Streaming facts of language-model answers (``core.llm_timing``): pure, no event loop."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowroute.core.llm_timing import llm_facts, prompt_chars, sse_events

SSE = "text/event-stream"


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def content(text: str) -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": text}}]})


def stream(pieces: list[tuple[bytes, float]]) -> tuple[bytes, list[float]]:
    """A body made of ``pieces`` (bytes, arrival ms) and its ``Outcome.times``."""
    body, times = b"", []
    for data, ms in pieces:
        times += [float(len(body)), ms]
        body += data
    return body, times


def test_ttft_is_the_first_content_event_and_itl_the_mean_gap_after_it() -> None:
    role = event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    usage = event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    body, times = stream(
        [
            (role, 5.0),  # no content: not the first token
            (content("a"), 100.0),
            (content(" b"), 130.0),
            (content(" c") + usage + b"data: [DONE]\n\n", 190.0),
        ]
    )
    f = llm_facts(body, SSE, None, times, 200.0, 40)
    assert f == {
        "ttft_ms": 100.0,
        "itl_ms": 45.0,  # (190 - 100) / 2
        "tokens_in": 7,
        "tokens_out": 3,
        "tokens_counted": False,
        "streamed": True,
    }


def test_an_event_split_across_pieces_counts_when_its_last_byte_came() -> None:
    one = content("hello")
    body, times = stream([(one[:10], 50.0), (one[10:], 80.0), (content(" x"), 90.0)])
    f = llm_facts(body, SSE, None, times, 95.0, None)
    assert f is not None and f["ttft_ms"] == 80.0 and f["itl_ms"] == 10.0


def test_events_in_one_piece_share_its_time() -> None:
    body, times = stream([(content("a") + content("b") + content("c"), 60.0)])
    f = llm_facts(body, SSE, None, times, 61.0, None)
    assert f is not None and f["ttft_ms"] == 60.0 and f["itl_ms"] == 0.0


def test_without_usage_tokens_are_counted_and_flagged() -> None:
    body, times = stream([(content("one"), 10.0), (content(" two"), 20.0)])
    f = llm_facts(body, SSE, None, times, 30.0, 9)
    assert f is not None
    assert f["tokens_out"] == 2  # content events
    assert f["tokens_in"] == 3  # ceil(9 / 4)
    assert f["tokens_counted"] is True
    f = llm_facts(body, SSE, None, times, 30.0, None)
    assert f is not None and f["tokens_in"] is None and f["tokens_counted"] is True


def test_a_whole_answer_ttft_is_its_latency() -> None:
    doc = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "abcdefghi"}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
    }
    f = llm_facts(orjson.dumps(doc), "application/json", None, [0.0, 12.0], 42.5, None)
    assert f == {
        "ttft_ms": 42.5,
        "itl_ms": None,
        "tokens_in": 4,
        "tokens_out": 2,
        "tokens_counted": False,
        "streamed": False,
    }
    del doc["usage"]
    f = llm_facts(orjson.dumps(doc), "application/json", None, [0.0, 12.0], 42.5, 8)
    assert f is not None
    assert (f["tokens_in"], f["tokens_out"], f["tokens_counted"]) == (2, 3, True)


def test_capped_times_leave_the_untimed_events_out_of_the_itl() -> None:
    body, times = stream([(content(str(i)), 10.0 * (i + 1)) for i in range(6)])
    capped = [*times[:6], -1.0]  # three pieces timed, then the cap
    f = llm_facts(body, SSE, None, capped, 100.0, None)
    assert f is not None
    # the third piece's end is unknown: only the first two events are placed
    assert f["ttft_ms"] == 10.0 and f["itl_ms"] == 10.0
    assert f["tokens_out"] == 6  # every event is still counted


def test_a_compressed_stream_has_its_first_byte_as_ttft_and_no_itl() -> None:
    plain = content("a") + content("b")
    body = gzip.compress(plain)
    f = llm_facts(body, SSE, "gzip", [0.0, 33.0, 5.0, 50.0], 60.0, None)
    assert f is not None and f["ttft_ms"] == 33.0 and f["itl_ms"] is None
    assert f["tokens_out"] == 2


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"data: {not json\n\n", SSE),
        (b"data: [1]\n\n", SSE),
        (b"{nope", "application/json"),
        (b"[1, 2]", "application/json"),
    ],
)
def test_malformed_answers_have_no_facts(body: bytes, ctype: str) -> None:
    assert llm_facts(body, ctype, None, [0.0, 1.0], 2.0, None) is None


def test_an_undecodable_body_has_no_facts() -> None:
    assert llm_facts(b"not gzip", SSE, "gzip", [0.0, 1.0], 2.0, None) is None


def test_sse_events_offsets_and_line_endings() -> None:
    body = b"data: a\r\n\r\n: comment\n\ndata: b\ndata: c\n\ndata: d"
    assert list(sse_events(body)) == [(b"a", 7), (b"b\nc", 37), (b"d", 46)]


def test_prompt_chars() -> None:
    parts = [{"type": "text", "text": "cde"}, {"type": "image_url", "image_url": {"url": "x"}}]
    chat = {"messages": [{"role": "system", "content": "ab"}, {"role": "user", "content": parts}]}
    assert prompt_chars(orjson.dumps(chat)) == 5
    assert prompt_chars(b'{"prompt": "hello"}') == 5
    assert prompt_chars(b"{bad") is None
    assert prompt_chars(b'{"input": 1}') is None
    assert prompt_chars(None) is None


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 12),
    cuts=st.lists(st.integers(1, 400), max_size=12),
    gaps=st.lists(st.floats(0.0, 50.0), min_size=30, max_size=30),
)
def test_any_split_into_pieces_keeps_the_counts_and_orders_the_times(
    n: int, cuts: list[int], gaps: list[float]
) -> None:
    """However the stream is cut into pieces, the tokens are the same, TTFT is the time of
    the piece that completes the first content event, and the ITL spans the events timed."""
    role = event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    body = role + b"".join(content(f" w{i}") for i in range(n)) + b"data: [DONE]\n\n"
    at = sorted({c for c in cuts if 0 < c < len(body)})
    bounds = [0, *at, len(body)]
    times, t = [], 0.0
    for i in range(len(bounds) - 1):
        t += gaps[i]
        times += [float(bounds[i]), t]
    f = llm_facts(body, SSE, None, times, t + 1.0, None)
    assert f is not None
    assert f["tokens_out"] == n and f["tokens_counted"] is True
    first_end = len(role) + len(content(" w0")) - 2  # the first content event's last byte + 1
    piece = max(i for i in range(len(bounds) - 1) if bounds[i] <= first_end - 1)
    assert f["ttft_ms"] == pytest.approx(times[2 * piece + 1], abs=1e-3)
    if n >= 2:
        assert f["itl_ms"] is not None
        assert 0.0 <= f["itl_ms"] * (n - 1) <= t - f["ttft_ms"] + n * 1e-3  # (rounded to µs)
    else:
        assert f["itl_ms"] is None
