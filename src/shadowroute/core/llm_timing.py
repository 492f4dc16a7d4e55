"""Streaming facts of one language-model answer: time to first token, inter-token latency,
tokens in and out (``docs/llm.md``). Pure: no event loop, no clock.

The data plane records when each body piece of an ``openai`` route's answer arrived
(``Outcome.times``: offsets into the body and milliseconds since the request was started);
the recorder, off the client's path and after extraction succeeded, calls ``llm_facts`` with
them. A server-sent-events answer is split into its events; an event's time is the arrival of
the piece holding its last byte. A *content event* is one whose choices carry text (``delta
.content``, ``text``) or a tool call. Then

- ``ttft_ms``: the first content event's time (the request was started at 0);
- ``itl_ms``: the mean gap between content events after the first, ``(t_last − t_first) /
  (k − 1)`` over the ``k`` timed content events (None with fewer than two);
- ``tokens_in``, ``tokens_out``: ``usage.prompt_tokens`` and ``usage.completion_tokens``
  when the answer carries them (the last event of a stream, with ``stream_options:
  {include_usage: true}``); else counted, and ``tokens_counted`` is true: ``tokens_out`` is
  the number of content events of a stream (servers send about one token per event), or
  ``ceil(characters / 4)`` of a whole answer's texts; ``tokens_in`` is ``ceil(characters /
  4)`` of the prompt's texts (messages' contents, or ``prompt``), None without the request.

A whole (not streamed) answer has ``ttft_ms`` = its latency and ``itl_ms`` None. A compressed
stream (``Content-Encoding``) cannot be placed piece by piece: ``ttft_ms`` is its first body
byte's time and ``itl_ms`` None.

>>> body = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\\n\\n' \\
...        b'data: {"choices":[{"delta":{"content":" you"}}]}\\n\\ndata: [DONE]\\n\\n'
>>> f = llm_facts(body, "text/event-stream", None, [0.0, 40.0, 48.0, 60.0], 70.0, None)
>>> f["ttft_ms"], f["itl_ms"], f["tokens_out"], f["tokens_counted"], f["streamed"]
(40.0, 20.0, 2, True, True)
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterator
from typing import Any, Final

import orjson

from shadowroute.core.extraction import ExtractError, decode_body

__all__ = ["llm_facts", "prompt_chars"]

CHARS_PER_TOKEN: Final = 4
"""Characters per token when tokens are counted (no ``usage``): the usual rule of thumb for
English with GPT-style tokenizers; a rough figure, flagged ``tokens_counted``."""

_LINE: Final = re.compile(rb"\r\n|\r|\n")


def _ms3(ms: float) -> float:
    return math.floor(ms * 1000.0 + 0.5) / 1000.0


def _is_event_stream(body: bytes, content_type: str | None) -> bool:
    if content_type and content_type.split(";")[0].strip().lower() == "text/event-stream":
        return True
    return body.lstrip()[:6].startswith((b"data:", b"event:", b":"))


def sse_events(body: bytes) -> Iterator[tuple[bytes, int]]:
    """Each event's data, with the offset just past the event's last data line.

    >>> list(sse_events(b"data: a\\n\\ndata: b\\n"))
    [(b'a', 7), (b'b', 16)]
    """
    data: list[bytes] = []
    end = 0
    pos = 0
    for m in _LINE.finditer(body):
        line = body[pos : m.start()]
        if not line:
            if data:
                yield b"\n".join(data), end
                data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
            end = m.start()
        pos = m.end()
    line = body[pos:]
    if line.startswith(b"data:"):
        value = line[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
        end = len(body)
    if data:
        yield b"\n".join(data), end


def _carries_content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return (isinstance(content, str) and content != "") or bool(delta.get("tool_calls"))
    text = choice.get("text")
    return isinstance(text, str) and text != ""


def _usage(doc: Any) -> tuple[int | None, int | None]:
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(usage, dict):
        return None, None

    def count(key: str) -> int | None:
        v = usage.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    return count("prompt_tokens"), count("completion_tokens")


def _text_chars(doc: Any) -> int:
    """Characters of a whole answer's texts (messages' contents, completions' texts)."""
    total = 0
    for choice in doc.get("choices") or () if isinstance(doc, dict) else ():
        if not isinstance(choice, dict):
            continue
        msg = choice.get("message")
        if isinstance(msg, dict):
            total += _content_chars(msg.get("content"))
        elif isinstance(choice.get("text"), str):
            total += len(choice["text"])
    return total


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(p["text"])
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return 0


def prompt_chars(request: bytes | None) -> int | None:
    """Characters of a chat or completions request's prompt texts; None when there is no
    request or it is not such a JSON object.

    >>> prompt_chars(b'{"messages": [{"role": "user", "content": "Hello"}]}')
    5
    >>> prompt_chars(b'{"prompt": ["ab", "cd"]}'), prompt_chars(b"[1]")
    (4, None)
    """
    if request is None:
        return None
    try:
        doc = orjson.loads(request)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    messages = doc.get("messages")
    if isinstance(messages, list):
        return sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(len(p) for p in prompt if isinstance(p, str))
    return None


def _counted(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def _piece_time(times: list[float], end: int) -> float | None:
    """The arrival time of the piece holding byte ``end - 1``; None when it was not timed."""
    n = len(times) // 2
    capped = len(times) % 2 == 1
    offsets = times[0 : 2 * n : 2]
    i = bisect.bisect_right(offsets, float(end - 1)) - 1
    if i < 0:
        return None
    if capped and i == n - 1:
        return None  # the last timed piece's end is unknown: the byte may be past it
    return times[2 * i + 1]


def llm_facts(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    times: list[float] | None,
    latency_ms: float | None,
    prompt_len: int | None,
) -> dict[str, Any] | None:
    """A side's ``llm`` object (``records.LLM_KEYS``), from its answer (as received), the pieces'
    times, its latency and the prompt's characters (``prompt_chars``); None when the answer
    is neither a JSON object nor an event stream of them."""
    encoded = content_encoding is not None and content_encoding.strip().lower() not in (
        "",
        "identity",
    )
    try:
        decoded = decode_body(body, content_encoding) if encoded else body
    except ExtractError:
        return None
    usage_in: int | None = None
    usage_out: int | None = None
    ttft: float | None = None
    itl: float | None = None
    if _is_event_stream(decoded, content_type):
        streamed = True
        events = 0
        first: float | None = None
        last: float | None = None
        timed = 0
        for data, end in sse_events(decoded):
            if data.strip() == b"[DONE]":
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(chunk, dict):
                return None
            pin, pout = _usage(chunk)
            if pin is not None or pout is not None:
                usage_in, usage_out = pin, pout
            choices = chunk.get("choices")
            if not isinstance(choices, list) or not any(_carries_content(c) for c in choices):
                continue
            events += 1
            if encoded or times is None:
                continue
            t = _piece_time(times, end)
            if t is None:
                continue
            timed += 1
            if first is None:
                first = t
            last = t
        if encoded:
            first = times[1] if times and len(times) >= 2 else None
        ttft = first
        if not encoded and first is not None and last is not None and timed >= 2:
            itl = (last - first) / (timed - 1)
        counted_out = events
    else:
        streamed = False
        try:
            doc = orjson.loads(decoded)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(doc, dict):
            return None
        usage_in, usage_out = _usage(doc)
        ttft = latency_ms
        counted_out = _counted(_text_chars(doc))
    counted = False
    tokens_out = usage_out
    if tokens_out is None:
        tokens_out, counted = counted_out, True
    tokens_in = usage_in
    if tokens_in is None and prompt_len is not None:
        tokens_in, counted = _counted(prompt_len), True
    return {
        "ttft_ms": None if ttft is None else _ms3(max(ttft, 0.0)),
        "itl_ms": None if itl is None else _ms3(max(itl, 0.0)),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "tokens_counted": counted,
        "streamed": streamed,
    }
