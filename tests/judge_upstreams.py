"""Real HTTP stand-ins for an OpenAI-compatible judge (`/v1/chat/completions`) and embeddings
server (`/v1/embeddings`), on loopback, for the assessor's tests.

The judge reads the two answers out of the prompt the assessor sends (``## Answer A`` /
``## Answer B``) and answers by ``mode``:

- ``good``: prefers the answer containing ``GOOD`` (TIE when both or neither do);
- ``first``: always ``A`` (a judge biased to the first position);
- ``chatty``: reasons, then ``VERDICT: <x>`` on the last line (as ``good`` decides);
- ``unparseable``: a reply that names no verdict in the format;
- ``failing``: HTTP 503; ``malformed``: a 200 whose body is not JSON; ``wrong_shape``: JSON
  without ``choices``; ``huge``: a reply over 1 MiB; ``slow``: answers as ``good`` after
  ``delay`` seconds.

The embeddings server gives a bag-of-letters vector per input (``good``), or the built-in
lexical embedder's vector (``hashing``: ``HashingEmbedder(dims)``, a deterministic model for
embedding drift), or fails (``failing``: 500), or answers ``malformed`` (one vector fewer than
inputs), ``not_json`` (a 200 that is not JSON), ``too_many_dims`` (70,000 dimensions),
``wrong_dims`` (hashing vectors of ``dims + 1`` dimensions) or ``slow`` (as ``hashing`` after
``delay`` seconds).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
from aiohttp import web

from shadowroute.core.embedding import HashingEmbedder
from standin import StandIn

_ANSWERS = re.compile(r"## Answer A\n(.*)\n\n## Answer B\n(.*)\n\nWhich answer", re.S)


def good_verdict(a: str, b: str) -> str:
    ga, gb = "GOOD" in a, "GOOD" in b
    if ga == gb:
        return "TIE"
    return "A" if ga else "B"


class JudgeServer(StandIn):
    """An OpenAI-compatible chat endpoint that judges as its ``mode`` says; every request
    body is kept in ``seen``."""

    def __init__(self, mode: str = "good", delay: float = 0.0) -> None:
        self.mode = mode
        self.delay = delay
        self.seen: list[dict[str, Any]] = []

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self._chat)]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body)
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(self.delay)
        if mode == "failing":
            return web.json_response({"error": "overloaded"}, status=503)
        if mode == "malformed":
            return web.Response(body=b"<html>oops</html>", content_type="text/html")
        if mode == "wrong_shape":
            return web.json_response({"result": "A"})
        if mode == "huge":  # a reply over the assessor's 1 MiB limit
            return web.json_response({"choices": [{"message": {"content": "A" * (2 << 20)}}]})
        user = body["messages"][-1]["content"]
        m = _ANSWERS.search(user)
        assert m is not None, user
        verdict = good_verdict(m.group(1), m.group(2))
        reply = {
            "good": verdict,
            "slow": verdict,
            "first": "A",
            "chatty": f"Answer A says one thing.\nAnswer B another.\nVERDICT: {verdict}",
            "unparseable": "Both answers have merit; A is shorter but B is better, probably.",
        }[mode]
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
            }
        )


def letters(text: str) -> list[float]:
    """A 26-dimensional bag of letters (a deterministic stand-in for an embedding)."""
    v = [0.0] * 26
    for ch in text.lower():
        if "a" <= ch <= "z":
            v[ord(ch) - 97] += 1.0
    return v


class EmbeddingServer(StandIn):
    """An OpenAI-compatible ``/v1/embeddings`` endpoint; requests kept in ``seen``."""

    def __init__(self, mode: str = "good", dims: int = 64, delay: float = 0.0) -> None:
        self.mode = mode
        self.delay = delay
        self.seen: list[dict[str, Any]] = []
        self._hashing = HashingEmbedder(dims + 1 if mode == "wrong_dims" else dims)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/embeddings", self._embed)]

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body)
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "failing":
            return web.json_response({"error": "down"}, status=500)
        if self.mode == "not_json":
            return web.Response(body=b"<html>oops</html>", content_type="text/html")
        inputs = body["input"]
        if self.mode in ("hashing", "wrong_dims", "slow"):
            vecs = self._hashing.embed(inputs)[0].tolist()
        else:
            vecs = [letters(t) for t in inputs]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)]
        if self.mode == "malformed":
            data = data[:-1]
        if self.mode == "too_many_dims":
            data = [{"index": i, "embedding": [1.0] * 70_000} for i in range(len(inputs))]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data, "model": body["model"]}),
            content_type="application/json",
        )
