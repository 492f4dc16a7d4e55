"""The demo's async entry point: model servers, the embedded stack, traffic, delayed labels, the
live view and the final verdict, in one process.

Usage, from a coroutine::

    result = await run_demo(DemoOptions(scenario="better", duration_s=20, port=0))
    result.exit_code  # 0 when the verdict matched the scenario
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import aiohttp

from shadowroute.demo.config import demo_config, drift_field, write_reference
from shadowroute.demo.expectation import Outcome, check
from shadowroute.demo.feeder import FeederStats, LabelFeeder
from shadowroute.demo.models import Dataset, TrainedModel, load_dataset, train
from shadowroute.demo.scenarios import (
    DRIFT_FIELDS,
    ROUTE,
    SERVED_NAME,
    Scenario,
    ScenarioName,
    Shift,
    scenario,
)
from shadowroute.demo.server import serve_model
from shadowroute.demo.traffic import Body, TrafficPlan, TrafficStats, row_bodies, send_traffic
from shadowroute.demo.view import Snapshot, TerminalView, decision_line, fmt_interval

SETTLE_S = 6.0
"""After the last label is posted, how long to wait for the comparator to count it."""


@dataclass(frozen=True)
class DemoOptions:
    scenario: ScenarioName = "better"
    duration_s: float = 60.0
    rate: float = 40.0
    """Requests per second through the proxy."""
    port: int = 9090
    """Admin/API port (0: a free one); the proxy listens on the next port, or a free one."""
    seed: int = 0
    interactive: bool | None = None
    """Redraw the view in place (default: when the output is a terminal)."""
    keep_open: bool = False
    """After the verdict, keep serving the scorecard until interrupted."""
    label_delay_s: tuple[float, float] = (0.5, 3.0)


@dataclass
class DemoResult:
    scenario: ScenarioName
    outcome: Outcome
    decision: dict[str, Any] | None
    production: dict[str, Any] | None
    traffic: TrafficStats
    labels: FeederStats
    admin_url: str
    proxy_url: str
    history: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome.ok else 1


class Stack(Protocol):
    @property
    def proxy_port(self) -> int: ...
    @property
    def admin_port(self) -> int: ...


@dataclass(frozen=True)
class Drive:
    """What one run sends and how its outcome is judged and told."""

    scenario: ScenarioName
    route: str
    candidate: str
    path: str
    """The proxy path requests go to."""
    bodies: Body
    shift: Shift | None
    judge: Callable[[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None], Outcome]
    """(decision, production, scores) -> the outcome."""
    tell: Callable[[TextIO, DemoResult], None]
    """Prints the final verdict and figures."""
    primary: str = "accuracy"


OnStart = Callable[[str], None]
"""Called with the scorecard URL once everything listens."""
OnVerdict = Callable[["DemoResult"], Awaitable[None]]
"""Awaited with the result while everything still listens (traffic and labels are done)."""


def free_port_after(port: int) -> int:
    """``port + 1`` when it can be bound on 127.0.0.1, else 0 (a free port)."""
    if port == 0 or port >= 65535:
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port + 1))
        except OSError:
            return 0
    return port + 1


async def _train(scn: Scenario, data: Dataset, seed: int) -> tuple[TrainedModel, TrainedModel]:
    prod, cand = await asyncio.gather(
        asyncio.to_thread(train, scn.production, data, seed),
        asyncio.to_thread(train, scn.candidate, data, seed),
    )
    return prod, cand


async def _get(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            if resp.status != 200:
                return None
            doc = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class _Api:
    session: aiohttp.ClientSession
    base: str
    candidate: str
    route: str = ROUTE

    def _cand(self, what: str) -> str:
        return f"{self.base}/v1/routes/{self.route}/candidates/{self.candidate}/{what}"

    async def decision(self) -> dict[str, Any] | None:
        return await _get(self.session, self._cand("decision"))

    async def history(self) -> list[dict[str, Any]]:
        doc = await _get(self.session, self._cand("history"))
        items = (doc or {}).get("history")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def production(self) -> dict[str, Any] | None:
        return await _get(self.session, f"{self.base}/v1/routes/{self.route}/production")

    async def scores(self) -> dict[str, Any] | None:
        return await _get(self.session, self._cand("scores"))


def _header(
    out: TextIO, scn: Scenario, data: Dataset, models: tuple[TrainedModel, TrainedModel]
) -> None:
    names = data.feature_names
    out.write(f"shadowroute demo: scenario {scn.name!r}: {scn.expect}\n")
    for role, m in zip(("production", "candidate "), models, strict=True):
        acc = m.accuracy(data.x_test, data.y_test)
        out.write(
            f"  {role} {m.spec.name} v{m.spec.version}: {m.spec.describe(names)} "
            f"(held-out accuracy {acc:.3f})\n"
        )
    if scn.shift is not None:
        cols = ", ".join(names[i] for i in scn.shift.features)
        out.write(
            f"  at {scn.shift.at:.0%} of the run, {cols} arrive ×{scn.shift.factor:g} "
            "(an upstream change of units)\n"
        )
    watched = ", ".join(f"{drift_field(i)} = {names[i]}" for i in DRIFT_FIELDS)
    out.write(f"  drift watched on {watched}\n")


async def _live(
    view: TerminalView,
    snap: Snapshot,
    api: _Api,
    traffic: TrafficStats,
    feeder: LabelFeeder,
    started: float,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        decision, production = await asyncio.gather(api.decision(), api.production())
        snap.elapsed_s = time.monotonic() - started
        snap.sent, snap.ok, snap.failed = traffic.sent, traffic.ok, traffic.failed
        snap.labels_posted = feeder.stats.posted
        snap.shifted = traffic.shifted
        if decision is not None:
            snap.decisions = {api.candidate: decision}
        snap.production = production
        view.show(snap)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def _settle(api: _Api, accepted: int, max_s: float = SETTLE_S) -> dict[str, Any] | None:
    """The decision once the comparator has counted the labels (or after ``max_s``)."""
    deadline = time.monotonic() + max_s
    decision = await api.decision()
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        labelled = int((decision or {}).get("labelled", 0))
        if labelled >= accepted:
            return decision
        if labelled != last:
            last, stable_since = labelled, time.monotonic()
        elif time.monotonic() - stable_since > 2.0:
            return decision
        await asyncio.sleep(0.25)
        decision = await api.decision()
    return decision


def _final(out: TextIO, result: DemoResult, candidate: str) -> None:
    out.write("\n")
    d = result.decision or {}
    out.write(decision_line(candidate, d, "accuracy") + "\n")
    for reason in d.get("reasons", []):
        out.write(f"  - {reason}\n")
    for name, ev in sorted((d.get("metrics") or {}).items()):
        out.write(f"    {name:<14} {fmt_interval(ev)}  n={ev.get('n')}  {ev.get('status')}\n")
    t = result.traffic
    p50 = t.p50_ms()
    out.write(
        f"traffic: {t.sent} requests, {t.ok} ok, {t.failed} failed"
        + (f", client p50 {p50:.1f} ms" if p50 is not None else "")
        + f"; labels: {result.labels.accepted} accepted of {result.labels.posted} posted\n"
    )
    if result.outcome.ok:
        out.write(f"OK: {result.outcome.summary}\n")
    else:
        out.write(f"UNEXPECTED: {result.outcome.summary}\n")
        out.write(_why(result) + "\n")
    out.write(f"scorecard: {result.admin_url}/\n")


def _why(result: DemoResult) -> str:
    d = result.decision or {}
    if not d:
        return "why: the API gave no decision (is the comparator running?)"
    if result.labels.accepted < 100:
        return (
            f"why: only {result.labels.accepted} labels were accepted; "
            "run longer (--duration) or faster (--rate)"
        )
    reasons = d.get("reasons") or []
    return "why: " + (reasons[0] if reasons else "see the reasons above")


@contextlib.asynccontextmanager
async def _model_servers(
    prod: TrainedModel, cand: TrainedModel, n_features: int
) -> AsyncIterator[tuple[int, int]]:
    async with (
        serve_model(prod, SERVED_NAME, n_features) as pport,
        serve_model(cand, SERVED_NAME, n_features) as cport,
    ):
        yield pport, cport


async def run_demo(
    opts: DemoOptions,
    out: TextIO | None = None,
    on_start: OnStart | None = None,
    on_verdict: OnVerdict | None = None,
) -> DemoResult:
    """Run one scenario end to end and return its outcome (see ``DemoResult.exit_code``)."""
    from shadowroute.runtime import embedded_stack

    out = out or sys.stdout
    if opts.scenario == "llm":
        from shadowroute.demo.llm_run import run_llm_demo

        return await run_llm_demo(opts, out, on_start, on_verdict)
    scn = scenario(opts.scenario)
    data = await asyncio.to_thread(load_dataset, opts.seed)
    models = await _train(scn, data, opts.seed)
    _header(out, scn, data, models)
    n_features = len(data.feature_names)
    with tempfile.TemporaryDirectory(prefix="shadowroute-demo-") as tmp:
        state_dir = Path(tmp)
        reference = write_reference(data, state_dir / "reference.jsonl")
        async with _model_servers(*models, n_features) as (pport, cport):
            cfg = demo_config(
                scn,
                pport,
                cport,
                admin_port=opts.port,
                listen_port=free_port_after(opts.port),
                state_dir=state_dir,
                reference_file=reference,
            )
            drive = Drive(
                scenario=scn.name,
                route=ROUTE,
                candidate=scn.candidate.name,
                path=f"/v2/models/{SERVED_NAME}/infer",
                bodies=row_bodies(data.x_test, data.y_test, scn.shift),
                shift=scn.shift,
                judge=lambda d, p, _s: check(scn.name, d, p),
                tell=lambda o, r: _final(o, r, scn.candidate.name),
            )
            async with embedded_stack(cfg) as stack:
                return await drive_demo(opts, out, (on_start, on_verdict), drive, stack)
    raise AssertionError("unreachable")  # pragma: no cover


async def drive_demo(
    opts: DemoOptions,
    out: TextIO,
    hooks: tuple[OnStart | None, OnVerdict | None],
    drive: Drive,
    stack: Stack,
) -> DemoResult:
    """Send the run's traffic and labels through ``stack`` while the live view runs, then
    settle, judge and tell the outcome."""
    admin_url = f"http://127.0.0.1:{stack.admin_port}"
    proxy_url = f"http://127.0.0.1:{stack.proxy_port}"
    out.write(f"scorecard: {admin_url}/   proxy: {proxy_url}   (Ctrl-C stops)\n")
    out.flush()
    on_start, on_verdict = hooks
    if on_start is not None:
        on_start(admin_url)
    interactive = out.isatty() if opts.interactive is None else opts.interactive
    view = TerminalView(out, interactive)
    rng_seed = opts.seed * 1_000_003 + secrets.randbelow(1 << 30)
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(connector=connector) as session:
        api = _Api(session, admin_url, drive.candidate, drive.route)
        feeder = LabelFeeder(session, admin_url, random.Random(rng_seed), opts.label_delay_s)
        plan = TrafficPlan(
            url=f"{proxy_url}{drive.path}",
            rate=opts.rate,
            duration_s=opts.duration_s,
            run_tag=f"demo-{secrets.token_hex(4)}",
            shift=drive.shift,
        )
        traffic = TrafficStats()
        stop_labels, stop_view = asyncio.Event(), asyncio.Event()
        snap = Snapshot(drive.scenario, 0.0, opts.duration_s, primary=drive.primary)
        started = time.monotonic()
        feeding = asyncio.create_task(feeder.run(stop_labels), name="demo-labels")
        viewing = asyncio.create_task(
            _live(view, snap, api, traffic, feeder, started, stop_view), name="demo-view"
        )
        try:
            await send_traffic(session, plan, drive.bodies, feeder.schedule, traffic)
            stop_labels.set()
            await asyncio.wait_for(feeding, timeout=opts.label_delay_s[1] + 10)
            decision = await _settle(api, feeder.stats.accepted)
        finally:
            stop_labels.set()
            stop_view.set()
            for task in (feeding, viewing):
                if not task.done():
                    task.cancel()
            await asyncio.gather(feeding, viewing, return_exceptions=True)
        production, history, scores = await asyncio.gather(
            api.production(), api.history(), api.scores()
        )
        view.release()
        result = DemoResult(
            scenario=drive.scenario,
            outcome=drive.judge(decision, production, scores),
            decision=decision,
            production=production,
            traffic=traffic,
            labels=feeder.stats,
            admin_url=admin_url,
            proxy_url=proxy_url,
            history=history,
            scores=scores,
        )
        drive.tell(out, result)
    out.flush()
    if on_verdict is not None:
        await on_verdict(result)
    if opts.keep_open:
        out.write("serving the scorecard until interrupted (Ctrl-C)\n")
        out.flush()
        await _forever()
    return result


async def _forever() -> None:
    from shadowroute.runtime import wait_for_signal

    await wait_for_signal()
