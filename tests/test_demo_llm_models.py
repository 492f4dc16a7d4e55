"""The LLM demo's stand-ins: questions with known answers, and OpenAI-compatible chat servers
(real HTTP) whose answers the proxy's extractor reads, streamed and not, at the speed and
quality each model is given."""

from __future__ import annotations

import time

import httpx
import pytest

from shadowroute.core.config import parse_config
from shadowroute.core.extraction import extract
from shadowroute.demo.llm_models import (
    ChatModel,
    chat_app,
    judge_app,
    judge_reply,
    question,
    true_answer,
)
from shadowroute.demo.server import serve_app


def _route() -> object:
    cfg = parse_config(
        {
            "routes": [
                {
                    "name": "chat",
                    "protocol": "openai",
                    "task": "text",
                    "production": {"name": "p", "url": "http://127.0.0.1:1"},
                }
            ]
        },
        environ={},
    )
    return cfg.routes[0]


def test_questions_have_their_answers_and_topics_share_no_words() -> None:
    for i in range(100):
        for topic in ("arithmetic", "capitals"):
            q = question(i, topic)  # type: ignore[arg-type]
            assert true_answer(q.text) == q.answer
    words = [
        {w for i in range(50) for w in question(i, t).text.lower().split()}  # type: ignore[arg-type]
        for t in ("arithmetic", "capitals")
    ]
    assert words[0] & words[1] <= {"what", "is", "the"}  # only the question's frame
    assert true_answer("Tell me a joke") is None


def test_a_models_quality_is_its_share_of_right_answers_and_is_repeatable() -> None:
    good, poor = ChatModel("good", 0.95, 0, 0), ChatModel("poor", 0.6, 0, 0)
    qs = [question(i, "arithmetic").text for i in range(2000)]
    right = {m.name: sum(m.answer(q) == true_answer(q) for q in qs) / len(qs) for m in (good, poor)}
    assert right["good"] == pytest.approx(0.95, abs=0.02)
    assert right["poor"] == pytest.approx(0.6, abs=0.03)
    assert [poor.answer(q) for q in qs[:50]] == [poor.answer(q) for q in qs[:50]]


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_server_answers_as_an_openai_server_does(stream: bool) -> None:
    model = ChatModel("m", 1.0, ttft_s=0.15, itl_s=0.02)
    q = question(3, "capitals")
    body = {"model": "m", "messages": [{"role": "user", "content": q.text}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with serve_app(chat_app(model)) as port:
        async with httpx.AsyncClient() as client:
            t0 = time.perf_counter()
            first: float | None = None
            raw = b""
            async with client.stream(
                "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body
            ) as resp:
                assert resp.status_code == 200
                async for piece in resp.aiter_bytes():
                    first = first if first is not None else time.perf_counter() - t0
                    raw += piece
                ctype = resp.headers["content-type"]
            total = time.perf_counter() - t0
            bad = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=b"{")
            assert bad.status_code == 400
    assert extract(_route(), raw, content_type=ctype) == [q.answer]  # type: ignore[arg-type]
    assert first is not None and first >= 0.15
    words = len(q.answer.split())
    assert total >= 0.15 + 0.02 * (words - 1)
    if stream:
        assert raw.count(b"data: ") == words + 2  # a chunk per word, the last, [DONE]
        assert b'"usage"' in raw and raw.endswith(b"data: [DONE]\n\n")


def test_the_honest_judge_prefers_the_right_answer_whichever_its_position() -> None:
    q = question(5, "arithmetic")
    wrong = q.answer.replace(q.answer.split()[-1], "1.")

    def prompt(a: str, b: str) -> str:
        # the judge's prompt format (core.judging.judge_messages)
        return f"## Request\nuser: {q.text}\n\n## Answer A\n{a}\n\n## Answer B\n{b}\n\nWhich?"

    assert judge_reply(prompt(q.answer, wrong)) == "A"
    assert judge_reply(prompt(wrong, q.answer)) == "B"
    assert judge_reply(prompt(q.answer, q.answer)) == "TIE"
    assert judge_reply(prompt(wrong, wrong)) == "TIE"
    assert judge_reply("no sections at all") == "TIE"


async def test_judge_server_answers_in_the_openai_chat_format() -> None:
    q = question(2, "capitals")
    content = f"## Request\nuser: {q.text}\n\n## Answer A\nno idea\n\n## Answer B\n{q.answer}\n"
    body = {"model": "judge", "messages": [{"role": "user", "content": content}]}
    async with serve_app(judge_app()) as port:
        async with httpx.AsyncClient() as client:
            got = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
    assert got.json()["choices"][0]["message"]["content"] == "B"
