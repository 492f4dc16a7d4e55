"""Deterministic stand-ins for the LLM demo: questions with known answers, and OpenAI-compatible
model servers that answer them at a chosen speed and quality.

Nothing is downloaded and nothing is random across runs: a model's answer to a question is a
function of the question and the model's ``quality`` (a hash decides whether it is right), and its
timing (time to first token, time between tokens) is fixed per model. Two topics exist, so a
run can shift its traffic from one to the other: arithmetic ("What is 17 plus 25?") and
capitals ("What is the capital of Peru?"), whose words do not overlap.

``POST /v1/chat/completions`` answers the last user message, streamed (server-sent events, one
word per chunk, ``usage`` in the last chunk when ``stream_options.include_usage``) or not (one
JSON document with ``usage``).

The judge stand-in (``judge_app``) is an honest judge that knows the answers: it reads the
request and the two blinded answers from the judge's prompt (``## Request``, ``## Answer A``,
``## Answer B``) and replies ``A`` or ``B`` when exactly that answer is right, else ``TIE``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web

__all__ = [
    "CAPITALS",
    "ChatModel",
    "Question",
    "chat_app",
    "judge_app",
    "judge_reply",
    "question",
    "true_answer",
]

Topic = Literal["arithmetic", "capitals"]

CAPITALS: tuple[tuple[str, str], ...] = (
    ("Argentina", "Buenos Aires"), ("Australia", "Canberra"), ("Austria", "Vienna"),
    ("Belgium", "Brussels"), ("Brazil", "Brasilia"), ("Canada", "Ottawa"), ("Chile", "Santiago"),
    ("Colombia", "Bogota"), ("Denmark", "Copenhagen"), ("Egypt", "Cairo"),
    ("Finland", "Helsinki"), ("France", "Paris"), ("Germany", "Berlin"), ("Ghana", "Accra"),
    ("Greece", "Athens"), ("Hungary", "Budapest"), ("India", "New Delhi"),
    ("Indonesia", "Jakarta"), ("Ireland", "Dublin"), ("Italy", "Rome"), ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"), ("Mexico", "Mexico City"), ("Morocco", "Rabat"),
    ("Netherlands", "Amsterdam"), ("Norway", "Oslo"), ("Peru", "Lima"), ("Poland", "Warsaw"),
    ("Portugal", "Lisbon"), ("Senegal", "Dakar"), ("Spain", "Madrid"), ("Sweden", "Stockholm"),
    ("Thailand", "Bangkok"), ("Turkey", "Ankara"), ("Vietnam", "Hanoi"),
)  # fmt: skip
"""Countries and their capitals (the second topic)."""

_ARITH = re.compile(r"What is (\d+) plus (\d+)\?")
_CAPITAL = re.compile(r"What is the capital of ([A-Za-z ]+)\?")


@dataclass(frozen=True)
class Question:
    topic: Topic
    text: str
    answer: str
    """The right answer, as a short sentence."""


def question(i: int, topic: Topic) -> Question:
    """The ``i``-th question of a topic (deterministic)."""
    if topic == "arithmetic":
        a, b = 3 + (i * 37) % 89, 2 + (i * 53) % 97
        return Question(topic, f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
    country, capital = CAPITALS[i % len(CAPITALS)]
    return Question(
        topic, f"What is the capital of {country}?", f"The capital of {country} is {capital}."
    )


def true_answer(text: str) -> str | None:
    """The right answer to a question of either topic, or None when it is neither."""
    m = _ARITH.search(text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return f"{a} plus {b} is {a + b}."
    m = _CAPITAL.search(text)
    if m:
        country = m.group(1).strip()
        for name, capital in CAPITALS:
            if name == country:
                return f"The capital of {country} is {capital}."
    return None


def _wrong(text: str) -> str:
    """A plausible wrong answer to a question."""
    m = _ARITH.search(text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return f"{a} plus {b} is {a + b + 1 + (a % 3)}."
    m = _CAPITAL.search(text)
    if m:
        country = m.group(1).strip()
        names = [c for _, c in CAPITALS]
        at = next((k for k, (n, _) in enumerate(CAPITALS) if n == country), 0)
        return f"The capital of {country} is {names[(at + 7) % len(names)]}."
    return "I do not know."


def _unit(*parts: str) -> float:
    """A number in [0, 1) from the parts' hash (stable across runs and platforms)."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class ChatModel:
    """A stand-in chat model: how often it is right, and how fast it speaks."""

    name: str
    quality: float
    """Share of questions it answers right (decided per question by a hash, so repeatable)."""
    ttft_s: float
    """Request received -> first token."""
    itl_s: float
    """Between two tokens (words)."""

    def answer(self, prompt: str) -> str:
        right = true_answer(prompt)
        if right is None:
            return "I do not know."
        return right if _unit(self.name, prompt) < self.quality else _wrong(prompt)


MODEL = web.AppKey("model", ChatModel)


def _last_user_text(doc: Any) -> str | None:
    messages = doc.get("messages") if isinstance(doc, dict) else None
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


def _tokens(text: str) -> int:
    return len(text.split())


async def _chat(request: web.Request) -> web.StreamResponse:
    model = request.app[MODEL]
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
    prompt = _last_user_text(doc)
    if prompt is None:
        return web.json_response({"error": {"message": "no user message"}}, status=400)
    answer = model.answer(prompt)
    words = answer.split(" ")
    usage = {
        "prompt_tokens": _tokens(prompt),
        "completion_tokens": len(words),
        "total_tokens": _tokens(prompt) + len(words),
    }
    created = int(time.time())
    ident = f"chatcmpl-{hashlib.blake2b(prompt.encode(), digest_size=6).hexdigest()}"
    if not doc.get("stream"):
        await asyncio.sleep(model.ttft_s + model.itl_s * (len(words) - 1))
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(model.ttft_s)
    for n, word in enumerate(words):
        if n:
            await asyncio.sleep(model.itl_s)
        piece = word if n == 0 else " " + word
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model.name,
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    last: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model.name,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    options = doc.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        last["usage"] = usage
    await resp.write(b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


_SECTIONS = re.compile(r"(?ms)^## (Request|Answer A|Answer B)\n(.*?)(?=^## |\Z)")


def judge_reply(prompt: str) -> str:
    """What the honest judge replies to one judge prompt: ``A``, ``B`` or ``TIE``."""
    parts = {name: text.strip() for name, text in _SECTIONS.findall(prompt)}
    right = true_answer(parts.get("Request", ""))
    a = parts.get("Answer A", "").split("\n\n")[0].strip()
    b = parts.get("Answer B", "").split("\n\n")[0].strip()
    if right is None or (a == right) == (b == right):
        return "TIE"
    return "A" if a == right else "B"


async def _judge(request: web.Request) -> web.Response:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
    prompt = _last_user_text(doc)
    if prompt is None:
        return web.json_response({"error": {"message": "no user message"}}, status=400)
    reply = judge_reply(prompt)
    return web.json_response(
        {
            "id": "judge",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "judge",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": _tokens(prompt), "completion_tokens": 1},
        }
    )


def judge_app() -> web.Application:
    app = web.Application()
    app.add_routes([web.post("/v1/chat/completions", _judge)])
    return app


def chat_app(model: ChatModel) -> web.Application:
    app = web.Application()
    app[MODEL] = model
    app.add_routes([web.post("/v1/chat/completions", _chat)])
    return app
