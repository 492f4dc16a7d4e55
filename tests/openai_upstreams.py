"""OpenAI-compatible model servers for tests: real HTTP (aiohttp) on loopback, deterministic.

``OpenAIStandIn`` answers ``POST /v1/chat/completions`` and ``POST /v1/completions``: whole
(JSON) answers, or server-sent events when the request says ``"stream": true``. Its answer is
a fixed function of the prompt (``answer_words``), one token per word; its timing, usage and
failures are set per server:

- ``first_token_s``: the wait between the response head and the first content event (a slow
  first token); ``token_gap_s``: the wait between content events;
- ``usage``: send ``usage`` (a stream's last event carries it when the request asks with
  ``stream_options: {include_usage: true}``, as OpenAI's API does);
- ``fail``: answer 500; ``malformed``: a stream with an event that is not JSON (or a whole
  answer that is not JSON);
- ``reverse``: answer the prompt's words reversed (a worse model, for exact match).

``seen`` keeps every request body, and ``started``/``finished`` the loop times each answer
began and ended (for tests of what the client got when).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from standin import StandIn


def prompt_text(doc: dict[str, Any]) -> str:
    messages = doc.get("messages")
    if isinstance(messages, list):
        return " ".join(
            m["content"]
            for m in messages
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
    prompt = doc.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def answer_words(prompt: str, *, reverse: bool = False, n: int | None = None) -> list[str]:
    """The stand-in's answer to ``prompt``: its words (reversed for a worse model), at most
    ``n`` of them."""
    words = prompt.split() or ["ok"]
    if reverse:
        words = words[::-1]
    return words if n is None else words[:n]


class OpenAIStandIn(StandIn):
    def __init__(
        self,
        name: str = "llm",
        *,
        first_token_s: float = 0.0,
        token_gap_s: float = 0.0,
        usage: bool = True,
        fail: bool = False,
        malformed: bool = False,
        reverse: bool = False,
    ) -> None:
        self.name = name
        self.first_token_s = first_token_s
        self.token_gap_s = token_gap_s
        self.usage = usage
        self.fail = fail
        self.malformed = malformed
        self.reverse = reverse
        self.seen: list[dict[str, Any]] = []
        self.started: list[float] = []
        self.finished: list[float] = []

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/completions", self._completions),
        ]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def _answer(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        self.started.append(loop.time())
        doc = orjson.loads(await request.read())
        self.seen.append(doc)
        try:
            if self.fail:
                return web.json_response({"error": {"message": "overloaded"}}, status=500)
            prompt = prompt_text(doc)
            words = answer_words(prompt, reverse=self.reverse, n=doc.get("max_tokens"))
            usage = {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": len(words),
                "total_tokens": len(prompt.split()) + len(words),
            }
            if doc.get("stream"):
                include = bool((doc.get("stream_options") or {}).get("include_usage"))
                return await self._stream(request, words, usage if include else None, chat)
            text = " ".join(words)
            if self.first_token_s:
                await asyncio.sleep(self.first_token_s)
            if self.malformed:
                return web.Response(body=b'{"choices": [', content_type="application/json")
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            body: dict[str, Any] = {"id": "x", "model": self.name, "choices": [choice]}
            if self.usage:
                body["usage"] = usage
            return web.json_response(body)
        finally:
            self.finished.append(loop.time())

    async def _stream(
        self,
        request: web.Request,
        words: list[str],
        usage: dict[str, int] | None,
        chat: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        async def event(obj: Any) -> None:
            await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")

        if chat:  # the role comes first, without content (as OpenAI's API sends it)
            await event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        for i, word in enumerate(words):
            await asyncio.sleep(self.first_token_s if i == 0 else self.token_gap_s)
            piece = word if i == 0 else " " + word
            if chat:
                await event({"choices": [{"index": 0, "delta": {"content": piece}}]})
            else:
                await event({"choices": [{"index": 0, "text": piece}]})
            if self.malformed and i == 0:
                await resp.write(b"data: {not json\n\n")
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        await event(
            {"choices": [end if chat else {"index": 0, "text": "", "finish_reason": "stop"}]}
        )
        if usage is not None and self.usage:
            await event({"choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def started(*servers: OpenAIStandIn) -> AsyncIterator[tuple[OpenAIStandIn, ...]]:
    """The servers, started; stopped after."""
    for s in servers:
        await s.start()
    try:
        yield servers
    finally:
        for s in servers:
            await s.stop()
