"""``shadowroute serve`` / ``compare`` as real subprocesses, and their ``/metrics`` read back as
Prometheus text: for tests where the process layout (``--workers 0``, 1, N) matters."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxyutil import free_port, wait_ready

Samples = list[tuple[str, dict[str, str], float]]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, labels, value)."""
    return [
        (s.name, dict(s.labels), float(s.value))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        v
        for n, lab, v in samples
        if n == name and all(lab.get(k) == want for k, want in labels.items())
    )


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [lab for n, lab, _ in samples if n == name]


@dataclass
class Served:
    """A running ``shadowroute`` subprocess with its ports."""

    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    log: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def metrics_text(self) -> str:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"{self.api}/metrics")
            r.raise_for_status()
            return r.text

    async def metrics(self) -> Samples:
        return parse_metrics(await self.metrics_text())

    async def until(
        self, check: Callable[[Samples], bool], timeout_s: float = 15.0, pause_s: float = 0.3
    ) -> Samples:
        """Read /metrics until ``check`` holds (then returns them) or the time is up (then
        returns the last read, for the caller's assertion to show)."""
        deadline = time.monotonic() + timeout_s
        while True:
            samples = await self.metrics()
            if check(samples) or time.monotonic() > deadline:
                return samples
            await asyncio.sleep(pause_s)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def write_config(tmp_path: Path, cfg: dict[str, Any]) -> tuple[Path, int, int]:
    """The config with fresh listen and admin ports, written to ``tmp_path``."""
    port, admin = free_port(), free_port()
    full = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        **cfg,
        "comparator": {"state_path": str(tmp_path / "state.sqlite"), **cfg.get("comparator", {})},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(full))
    return path, port, admin


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, cfg: dict[str, Any], args: Sequence[str], *, ready_timeout_s: float = 40.0
) -> AsyncIterator[Served]:
    """``python -m shadowroute ARGS -c CFG`` until the block ends (then SIGTERM, and a kill
    if it does not stop within 30 s); ready once /readyz answers 200."""
    path, port, admin = write_config(tmp_path, cfg)
    log = tmp_path / "process.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, stopped below
            [sys.executable, "-m", "shadowroute", *args, "-c", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(proc, port, admin, log)
    try:
        try:
            await wait_ready(f"{served.api}/readyz", timeout=ready_timeout_s)
        except Exception as exc:
            raise AssertionError(f"not ready: {exc!r}\n{served.output()}") from None
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)


async def send_requests(
    base: str, n: int, *, concurrency: int = 8, body: bytes = b'{"instances": [[1.0]]}'
) -> list[int]:
    """``n`` POSTs through the proxy, each on a new connection (so the kernel spreads them
    over the workers); their statuses."""
    sem = asyncio.Semaphore(concurrency)
    statuses: list[int] = []

    async def one(c: httpx.AsyncClient, i: int) -> None:
        async with sem:
            r = await c.post(
                "/v1/models/m:predict",
                content=body,
                headers={"Connection": "close", "x-request-id": f"req-{i}"},
            )
            statuses.append(r.status_code)

    async with httpx.AsyncClient(base_url=base, timeout=20) as c:
        await asyncio.gather(*(one(c, i) for i in range(n)))
    return statuses


def route(prod_url: str, candidates: Sequence[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": "r",
        "protocol": "kserve-v1",
        "task": "regression",
        "production": {"name": "p", "url": prod_url},
        "candidates": list(candidates),
        **extra,
    }
