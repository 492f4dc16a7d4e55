"""``shadowroute demo --scenario llm``: a language-model route end to end, on loopback, with
deterministic stand-ins (``llm_models.py``).

Production answers right more often and slowly; the candidate answers faster, cheaper and
wrong more often. An honest judge that knows the answers compares them (blinded, both orders),
an embeddings server gives the answers' similarity and embeds the prompts and answers watched
for drift (``drift.embedding.endpoint``), and the traffic moves from arithmetic to capitals
half-way. Labels (the right answers) arrive late, as in the other scenarios, so production's
own exact-match quality is monitored too. Expected: the candidate is held or rejected on the
judge's interval, with its TTFT and cost ratios shown, and the topic shift is flagged by the
prompts' embedding drift.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import orjson
from aiohttp import web

from shadowroute.core.config import Config
from shadowroute.core.embedding import HashingEmbedder
from shadowroute.demo.config import one_route_config
from shadowroute.demo.expectation import PROMPT_FIELD, check_llm
from shadowroute.demo.llm_models import ChatModel, chat_app, judge_app, question
from shadowroute.demo.run import (
    DemoOptions,
    DemoResult,
    Drive,
    OnStart,
    OnVerdict,
    drive_demo,
    free_port_after,
)
from shadowroute.demo.scenarios import Shift
from shadowroute.demo.server import serve_app
from shadowroute.demo.traffic import Body
from shadowroute.demo.view import fmt_interval

ROUTE = "chat"
PATH = "/v1/chat/completions"
SHIFT_AT = 0.5
"""From this fraction of the run on, the questions are about capitals, not arithmetic."""

PRODUCTION = ChatModel("chat-large", quality=0.95, ttft_s=0.12, itl_s=0.01)
CANDIDATE = ChatModel("chat-small", quality=0.6, ttft_s=0.03, itl_s=0.004)
PRICES: dict[str, dict[str, float]] = {
    PRODUCTION.name: {"input_per_million": 3.0, "output_per_million": 15.0},
    CANDIDATE.name: {"input_per_million": 0.5, "output_per_million": 2.5},
}
RUBRIC = (
    "The request is a question with one right answer. Prefer the answer that states it "
    "correctly; when both are right, or both wrong, neither is better."
)
EMBED_DIMS = 64


def chat_bodies(shift_at: float = SHIFT_AT) -> Body:
    """Chat requests: arithmetic questions, then capitals from ``shift_at`` of the run on;
    every other one streamed (asking for the usage). The label is the right answer."""

    def body(i: int, fraction: float) -> tuple[bytes, Any]:
        q = question(i, "capitals" if fraction >= shift_at else "arithmetic")
        doc: dict[str, Any] = {
            "model": "chat",
            "messages": [{"role": "user", "content": q.text}],
        }
        if i % 2:
            doc["stream"] = True
            doc["stream_options"] = {"include_usage": True}
        return orjson.dumps(doc), q.answer

    return body


EMBEDDER = web.AppKey("embedder", HashingEmbedder)


async def _embeddings(request: web.Request) -> web.Response:
    """``POST /v1/embeddings`` with the built-in lexical embedder."""
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
    texts = doc.get("input") if isinstance(doc, dict) else None
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return web.json_response({"error": {"message": "input must be texts"}}, status=400)
    vectors, _ = request.app[EMBEDDER].embed(texts)
    data = [
        {"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)
    ]
    return web.json_response({"object": "list", "data": data, "model": doc.get("model")})


def embeddings_app() -> web.Application:
    app = web.Application()
    app[EMBEDDER] = HashingEmbedder(dims=EMBED_DIMS)
    app.add_routes([web.post("/v1/embeddings", _embeddings)])
    return app


def llm_config(
    ports: dict[str, int], *, admin_port: int, listen_port: int, state_dir: Path
) -> Config:
    """The demo's one route: ``openai`` chat, the candidate mirrored every time, judged and
    compared by embeddings on every pair, the prompts and answers watched for drift."""

    def url(name: str) -> str:
        return f"http://127.0.0.1:{ports[name]}"

    route: dict[str, Any] = {
        "name": ROUTE,
        "path_prefix": PATH,
        "protocol": "openai",
        "task": "text",
        "production": {
            "name": PRODUCTION.name,
            "url": url("production"),
            "timeout_s": 10,
            "price": PRICES[PRODUCTION.name],
        },
        "candidates": [
            {
                "name": CANDIDATE.name,
                "url": url("candidate"),
                "fraction": 1.0,
                "timeout_s": 10,
                "price": PRICES[CANDIDATE.name],
            }
        ],
        "judge": {
            "url": url("judge"),
            "model": "honest-judge",
            "rubric": RUBRIC,
            "sample_fraction": 1.0,
            "rate_per_s": 1000,
            "max_calls": 1_000_000,
            "timeout_s": 5,
            "concurrency": 16,
        },
        "similarity": {
            "url": url("embeddings"),
            "model": "hashing-lexical",
            "sample_fraction": 1.0,
            "rate_per_s": 1000,
            "max_calls": 1_000_000,
            "timeout_s": 5,
        },
        "drift": {
            "embedding": {
                "fields": ["$.messages[-1].content"],
                "outputs": True,
                "dims": EMBED_DIMS,
                "reference_size": 200,
                # the texts are embedded by the embeddings server, as a real TEI, vLLM or
                # Ollama would (here with the built-in lexical model)
                "endpoint": {
                    "url": url("embeddings"),
                    "model": "hashing-lexical",
                    "rate_per_s": 1000,
                    "max_calls": 1_000_000,
                    "timeout_s": 5,
                },
            }
        },
        "policy": {
            "primary_metric": "judge",
            "min_pairs": 100,
            "min_labelled": 50,
            "guardrails": {
                "ttft_p99_ratio": 1.5,
                "cost_ratio": 1.0,
                "error_rate_delta": 0.05,
                "timeout_rate_delta": 0.05,
                "availability_delta": 0.05,
            },
        },
        "label_ttl_s": 600,
    }
    return one_route_config(
        route, admin_port=admin_port, listen_port=listen_port, state_dir=state_dir
    )


@contextlib.asynccontextmanager
async def _servers() -> AsyncIterator[dict[str, int]]:
    async with (
        serve_app(chat_app(PRODUCTION)) as prod,
        serve_app(chat_app(CANDIDATE)) as cand,
        serve_app(judge_app()) as judge,
        serve_app(embeddings_app()) as embed,
    ):
        yield {"production": prod, "candidate": cand, "judge": judge, "embeddings": embed}


def _header(out: TextIO) -> None:
    out.write("shadowroute demo: scenario 'llm': ")
    out.write("a faster, cheaper candidate that is wrong more often: hold or reject on the judge\n")
    for role, m in (("production", PRODUCTION), ("candidate ", CANDIDATE)):
        price = PRICES[m.name]
        out.write(
            f"  {role} {m.name}: right {m.quality:.0%} of the time, first token after "
            f"{m.ttft_s * 1000:.0f} ms, {m.itl_s * 1000:.0f} ms a token, "
            f"{price['input_per_million']:g}/{price['output_per_million']:g} per million "
            "tokens in/out\n"
        )
    out.write(
        "  a blinded judge compares every pair in both orders; the prompts move from arithmetic "
        f"to capitals at {SHIFT_AT:.0%} of the run (embedding drift watched on "
        "$.messages[-1].content)\n"
    )


def _final(out: TextIO, result: DemoResult) -> None:
    out.write("\n")
    d = result.decision or {}
    out.write(
        f"{CANDIDATE.name:<18} {str(d.get('verdict', '?')).upper():<8} pairs "
        f"{d.get('pairs', 0)}  labelled {d.get('labelled', 0)}\n"
    )
    for reason in d.get("reasons", []):
        out.write(f"  - {reason}\n")
    for name, ev in sorted((d.get("metrics") or {}).items()):
        out.write(f"    {name:<18} {fmt_interval(ev)}  n={ev.get('n')}  {ev.get('status')}\n")
    llm = (result.scores or {}).get("llm") or {}
    ttft = llm.get("ttft_ms") or {}
    cost = llm.get("cost") or {}

    def q(side: str, at: str) -> str:
        v = (ttft.get(side) or {}).get(at)
        return f"{v:.0f} ms" if isinstance(v, int | float) else "n/a"

    def num(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, int | float) else "n/a"

    out.write(
        f"time to first token p99: production {q('production', 'p99')}, candidate "
        f"{q('candidate', 'p99')} (×{num((ttft.get('ratio') or {}).get('p99'), '.2f')}); cost "
        f"per request: production {num(cost.get('production'), '.3g')}, candidate "
        f"{num(cost.get('candidate'), '.3g')} (×{num(cost.get('ratio'), '.2f')})\n"
    )
    judge = (result.scores or {}).get("judge") or {}
    if judge:
        out.write(
            f"judge: {judge.get('wins', 0)} wins, {judge.get('ties', 0)} ties, "
            f"{judge.get('losses', 0)} losses for the candidate, "
            f"{judge.get('inconsistent', 0)} position-inconsistent, "
            f"{judge.get('unparseable', 0)} unparseable\n"
        )
    drift = ((result.production or {}).get("drift") or {}).get(PROMPT_FIELD) or {}
    if drift:
        out.write(
            f"prompt embedding drift: {drift.get('state')} (MMD² {num(drift.get('mmd2'), '.4f')},"
            f" p {num(drift.get('p_value'), '.2g')}, centroid shift "
            f"{num(drift.get('centroid_shift'), '.3f')})\n"
        )
    t = result.traffic
    out.write(
        f"traffic: {t.sent} requests, {t.ok} ok, {t.failed} failed; labels: "
        f"{result.labels.accepted} accepted of {result.labels.posted} posted\n"
    )
    out.write(("OK: " if result.outcome.ok else "UNEXPECTED: ") + result.outcome.summary + "\n")
    out.write(f"scorecard: {result.admin_url}/\n")


async def run_llm_demo(
    opts: DemoOptions,
    out: TextIO,
    on_start: OnStart | None = None,
    on_verdict: OnVerdict | None = None,
) -> DemoResult:
    """Run the LLM scenario end to end and return its outcome."""
    from shadowroute.runtime import embedded_stack

    _header(out)
    with tempfile.TemporaryDirectory(prefix="shadowroute-demo-") as tmp:
        async with _servers() as ports:
            cfg = llm_config(
                ports,
                admin_port=opts.port,
                listen_port=free_port_after(opts.port),
                state_dir=Path(tmp),
            )
            drive = Drive(
                scenario="llm",
                route=ROUTE,
                candidate=CANDIDATE.name,
                path=PATH,
                bodies=chat_bodies(),
                shift=Shift(at=SHIFT_AT, features=(), factor=1.0),
                judge=check_llm,
                tell=_final,
                primary="judge",
            )
            async with embedded_stack(cfg) as stack:
                return await drive_demo(opts, out, (on_start, on_verdict), drive, stack)
    raise AssertionError("unreachable")  # pragma: no cover
