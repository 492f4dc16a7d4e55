"""The pure core of the pairwise judge and the embedding similarity (no I/O, no event loop).

A route with a ``judge`` has a sample of its pairs (``assess_sampled``: fixed by the request
id, independent of the proxy's mirror sampling) judged twice, once in each order of the two
answers. The judge never sees model names: the answers are "Answer A" and "Answer B", and
which of production and candidate is A in the first call is fixed per request id
(``candidate_first``). Each reply is parsed strictly (``parse_verdict``): nothing is guessed
from an answer that does not follow the format. Both orders are then combined
(``combine``): the same preference both ways is that preference; different ones are a tie,
counted as position-inconsistent.

The result is seen from the candidate's side: ``win`` (the candidate's answer is preferred),
``tie`` or ``loss``; it enters the paired judge metric as ``d = win − loss`` (``JUDGE_VALUES``).

The limits of the calls (token bucket, breaker, budget) are plain objects with an injected
clock, so they are tested without waiting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from shadowroute.core.sampling import sample_point

__all__ = [
    "JUDGE_RESULTS",
    "JUDGE_VALUES",
    "Breaker",
    "Budget",
    "Outcome",
    "TokenBucket",
    "Verdict",
    "assess_sampled",
    "candidate_first",
    "combine",
    "cosine",
    "judge_messages",
    "parse_verdict",
    "prompt_text",
    "seen_from_candidate",
]

Verdict = Literal["A", "B", "TIE"]
Outcome = Literal["win", "tie", "loss"]
JUDGE_RESULTS: Final = ("win", "tie", "loss", "unparseable", "failed")
"""What an assessment record's ``judge`` may be (or null: not judged)."""
JUDGE_VALUES: Final[dict[str, tuple[float, float]]] = {
    "win": (0.0, 1.0),
    "tie": (0.0, 0.0),
    "loss": (1.0, 0.0),
}
"""(production's value, candidate's value) of a combined result for the paired metric: the
difference is +1 for a win, 0 for a tie, −1 for a loss; unparseable and failed are left out."""

_FORMAT: Final = (
    "You compare two answers to the same request. Judge them only by the rubric below; the "
    "order in which the answers are shown says nothing about them. Reply with exactly one "
    "line: A if Answer A is better, B if Answer B is better, or TIE if neither is better. You "
    "may reason first; then the last line must be VERDICT: A, VERDICT: B or VERDICT: TIE."
)
_ONE: Final = re.compile(r"(?i)^\s*(?:verdict\s*:\s*)?(a|b|tie)\s*\.?\s*$")


def assess_sampled(request_id: str, fraction: float, kind: str) -> bool:
    """Whether a request is in the assessed sample of ``kind`` (``judge`` or ``similarity``):
    the request id's point under a salt of its own, so the sample is independent of the
    proxy's mirror sampling and of the other kind's."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    return sample_point(f"{request_id}#assess:{kind}".encode()) < fraction


def candidate_first(request_id: str) -> bool:
    """Whether the candidate's answer is Answer A in the first of the two calls (fixed by the
    request id, so a replay asks the same questions)."""
    return sample_point(f"{request_id}#judge:order".encode()) < 0.5


def prompt_text(doc: Any, max_chars: int) -> tuple[str, bool]:
    """The request as the judge reads it, and whether it was cut to ``max_chars``: the
    messages of a chat request (``role: content``, text parts only), a completion's
    ``prompt``, or else the captured input as JSON."""
    text: str
    if isinstance(doc, dict) and isinstance(doc.get("messages"), list):
        lines = []
        for m in doc["messages"]:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            lines.append(f"{m.get('role', 'user')}: {content if content is not None else ''}")
        text = "\n".join(lines)
    elif isinstance(doc, dict) and isinstance(doc.get("prompt"), str):
        text = doc["prompt"]
    elif doc is None:
        text = ""
    else:
        try:
            text = orjson.dumps(doc).decode()
        except TypeError:
            text = ""
    return clip(text, max_chars)


def clip(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` cut to ``max_chars`` characters, and whether it was cut."""
    return (text[:max_chars], True) if len(text) > max_chars else (text, False)


def judge_messages(rubric: str, request: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat messages of one judge call: the format and the rubric, then the request and
    the two answers, blinded (no model names)."""
    user = (
        f"## Request\n{request}\n\n## Answer A\n{answer_a}\n\n## Answer B\n{answer_b}\n\n"
        "Which answer is better by the rubric? Reply A, B or TIE."
    )
    return [
        {"role": "system", "content": f"{_FORMAT}\n\nRubric:\n{rubric}"},
        {"role": "user", "content": user},
    ]


def parse_verdict(reply: str) -> Verdict | None:
    """A judge's reply parsed strictly: the whole reply is ``A``, ``B`` or ``TIE``, or its
    last non-empty line is ``VERDICT: A`` / ``B`` / ``TIE`` (any case; surrounding spaces
    and one final full stop allowed). Anything else is None (unparseable), never a guess.

    >>> parse_verdict("B"), parse_verdict("thinking...\\nVERDICT: tie"), parse_verdict("A or B")
    ('B', 'TIE', None)
    """
    lines = [line for line in reply.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1]
    if len(lines) > 1 and not last.strip().lower().startswith("verdict"):
        return None
    m = _ONE.match(last)
    if m is None:
        return None
    word = m.group(1).upper()
    return "TIE" if word == "TIE" else ("A" if word == "A" else "B")


def seen_from_candidate(verdict: Verdict, candidate_is_a: bool) -> Outcome:
    """A verdict on (A, B) as the candidate's win, tie or loss."""
    if verdict == "TIE":
        return "tie"
    return "win" if (verdict == "A") == candidate_is_a else "loss"


def combine(first: Outcome, second: Outcome) -> tuple[Outcome, bool]:
    """The result of the two orders, and whether they disagreed (position-inconsistent: the
    result is then a tie)."""
    if first == second:
        return first, False
    return "tie", True


def cosine(u: Sequence[float], v: Sequence[float]) -> float | None:
    """Cosine similarity of two vectors of the same length, or None when either is empty,
    zero, of another length or not finite."""
    if not u or len(u) != len(v):
        return None
    dot = nu = nv = 0.0
    for a, b in zip(u, v, strict=True):
        dot += a * b
        nu += a * a
        nv += b * b
    if not (nu > 0 and nv > 0) or not math.isfinite(dot + nu + nv):
        return None
    return max(-1.0, min(1.0, dot / math.sqrt(nu * nv)))


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; ``take(n, now)`` spends ``n`` if
    they are there (never waits)."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, n: float, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens + 1e-9 < n:
            return False
        self.tokens -= n
        return True


@dataclass
class Breaker:
    """Opens after ``failures`` consecutive failed calls; after ``open_s`` one probe is let
    through (half-open): its success closes it, its failure opens it again."""

    failures: int
    open_s: float
    consecutive: int = 0
    opened_at: float | None = None
    probing: bool = False
    opened: int = 0
    """Times it opened."""

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if self.probing or now - self.opened_at < self.open_s:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.probing = False

    def failure(self, now: float) -> None:
        self.consecutive += 1
        if self.probing or self.consecutive >= self.failures:
            if self.opened_at is None or self.probing:
                self.opened += 1
            self.opened_at = now
            self.probing = False

    @property
    def state(self) -> str:
        return "closed" if self.opened_at is None else ("half_open" if self.probing else "open")


@dataclass
class Budget:
    """At most ``limit`` calls (None: no limit); ``spent`` counts the calls made, including
    those recorded before a restart."""

    limit: int | None
    spent: int = 0

    def take(self, n: int) -> bool:
        if self.limit is not None and self.spent + n > self.limit:
            return False
        self.spent += n
        return True

    @property
    def left(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.spent)
