"""The proxy benchmark: shadowroute's data plane against nginx, side by side in one run.

    .venv/bin/python benchmarks/bench_proxy.py            # 3 x 8 s per point, ~9 minutes
    .venv/bin/python benchmarks/bench_proxy.py --quick    # 1 x 2 s per point
    .venv/bin/python benchmarks/bench_proxy.py --profile  # also a cProfile run of the proxy

Same upstreams, same load generator, same run for every case:

  direct          wrk -> production (static nginx)
  nginx           nginx reverse proxy, keep-alive upstream, no mirror (reference)
  sr-nomirror     shadowroute, route without candidates
  sr-mirror       shadowroute, 100% mirrored to one candidate (records to the in-process sink)
  nginx-mirror    nginx reverse proxy + ``mirror /mirror;`` to the candidate (the peer)
  sr-slow         shadowroute, 100% mirrored to a candidate that answers after 1 s
  nginx-slow      nginx + mirror to the same 1-s candidate
  sr-w2-mirror    shadowroute --workers 2, 100% mirror (the proxy may use both cores)
  dp-nomirror     shadowroute's data plane alone (DataPlane + admin /metrics, records to a null
  dp-mirror       sink, no comparator), without and with 100% mirroring
  dp-kafka-mirror the data plane alone, 100% mirroring, pair records into a real Kafka broker
                  (started here from tests/kafka_harness.py, on CPU 0): the Kafka sink's cost
                  when the producer shares the data plane's process (``serve --workers 0``)
  sr-kafka-mirror ``serve`` with ``transport: kafka``, 100% mirroring: the worker ships its
                  records to the supervisor, whose producer writes them to the same broker

Load: ``wrk -t1`` pinned to CPU 0 with a Lua script POSTing a ~300-byte JSON body; upstreams
(nginx, one worker each) also on CPU 0; the proxy under test alone on CPU 1 (``--workers 2``:
CPUs 0-1). All proxies run at once (idle between their turns) and the cases are interleaved:
each repetition runs every case in turn. Only 127.0.0.1. Every process started here is stopped
at the end, also on Ctrl-C.

``--python-O`` runs shadowroute as ``python -O -m shadowroute`` (asserts off); the default is
``python -m shadowroute``, the same code as the ``shadowroute`` console script.

Per point: req/s, client p50/p99 (wrk), the proxy's CPU µs per request (utime+stime of the
proxy's process tree from /proc, before/after, over requests completed), requests seen by
production and by the candidate (nginx stub_status / the slow server's counter), and for
shadowroute the mirror outcomes and records built from its /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NGINX_DIR = HERE / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
LOAD_CPU = "0"
PROXY_CPU = "1"
BOTH_CPUS = "0,1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ~300-byte KServe-v1 request and ~180-byte response.
REQUEST_BODY = json.dumps(
    {
        "instances": [
            {
                "amount": 120.5,
                "country": "DE",
                "merchant": "m-48213",
                "channel": "web",
                "hour": 14,
                "device": "ios",
                "features": [0.12, 0.5, 0.91, 0.33, 0.07, 0.68, 0.24, 0.81, 0.45, 0.19],
            },
            {
                "amount": 18.0,
                "country": "FR",
                "merchant": "m-11007",
                "channel": "pos",
                "hour": 9,
                "device": "android",
                "features": [0.44, 0.02, 0.73],
            },
        ]
    },
    separators=(",", ":"),
)
RESPONSE_BODY = json.dumps(
    {
        "predictions": [0.91327514, 0.12044187],
        "model_name": "fraud",
        "model_version": "7",
        "id": "3f1c9b6e-2a4d-4e8b-9c7f-1a2b3c4d5e6f",
        "latency_ms": 1.25,
        "served_by": "model-server-0",
        "cache": "miss",
    },
    separators=(",", ":"),
)

WRK_LUA = """
wrk.method = "POST"
wrk.body = [[@@BODY@@]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d," ..
    "\\"p99_us\\":%d,\\"max_us\\":%d,\\"mean_us\\":%.1f,\\"connect\\":%d,\\"read\\":%d," ..
    "\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
    e.status, e.timeout))
end
"""


# --- processes -------------------------------------------------------------------------------


class Procs:
    """Every child process started by the benchmark; ``stop_all`` ends them by pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str], cpus: str | None) -> subprocess.Popen[bytes]:
        full = (["taskset", "-c", cpus] if cpus else []) + list(argv)
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            full, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            # nginx: QUIT is a graceful stop; the others take SIGTERM.
            proc.send_signal(signal.SIGQUIT if name.startswith("nginx") else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(name, timeout=5.0)

    def log_tail(self, name: str, n: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


NGINX_MASTER: dict[int, bool] = {}


def dataplane_pids(root: int) -> list[int]:
    """The processes that serve client traffic: ``serve``'s worker processes (its children;
    the supervisor beside them runs the comparator and API), or ``root`` itself when it has
    no children (the data plane alone, nginx)."""
    tree = tree_pids(root)
    return tree[1:] if len(tree) > 1 and not NGINX_MASTER.get(root) else tree


def cpu_times(root: int, pids: list[int] | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of the data-plane processes under ``root`` (or of ``pids``)."""
    user = system = 0
    for pid in dataplane_pids(root) if pids is None else pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def supervisor_cpu(root: int) -> float | None:
    """CPU seconds of ``serve``'s supervisor (``root`` when it has worker children), else None."""
    if len(tree_pids(root)) < 2 or NGINX_MASTER.get(root):
        return None
    return sum(cpu_times(root, [root]))


def core_busy(cpu: str) -> float:
    """Seconds CPU ``cpu`` has spent not idle (from /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            f = [int(x) for x in line.split()[1:]]
            return (sum(f[:8]) - f[3] - f[4]) / CLK_TCK  # minus idle and iowait
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def rss_mib(root: int) -> float:
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


# --- upstreams -------------------------------------------------------------------------------


def render(template: str, values: dict[str, str]) -> str:
    text = (NGINX_DIR / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    leftover = re.findall(r"@@[A-Z_]+@@", text)
    if leftover:
        raise ValueError(f"unfilled placeholders in {template}: {leftover}")
    return text


def start_nginx(
    procs: Procs, name: str, template: str, values: dict[str, str], cpus: str
) -> subprocess.Popen[bytes]:
    d = procs.workdir / name
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(render(template, {"DIR": str(d), **values}))
    proc = procs.start(
        name, [NGINX, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")], cpus
    )
    wait_port(int(values["PORT"]), proc)
    NGINX_MASTER[proc.pid] = True
    return proc


def stub_requests(port: int) -> int:
    """Requests handled by an nginx (stub_status), not counting this query."""
    text = http_get(port, "/__status")
    return int(text.splitlines()[2].split()[2]) - 1


class SlowServer(asyncio.Protocol):
    """HTTP/1.1 keep-alive server answering every request after ``delay`` seconds.

    ``GET /__count`` answers at once with the number of other requests received.
    """

    count = 0

    def __init__(self, delay: float, body: bytes) -> None:
        self.delay = delay
        self.body = body
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        loop = asyncio.get_running_loop()
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            m = re.search(r"(?im)^content-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            if head.startswith("GET /__count"):
                self.reply(str(SlowServer.count).encode(), b"text/plain")
            else:
                SlowServer.count += 1
                loop.call_later(self.delay, self.reply, self.body, b"application/json")

    def reply(self, body: bytes, ctype: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def serve_until_signal(factory: Callable[[], asyncio.Protocol], port: int) -> None:
    """Serve ``factory``'s protocol on 127.0.0.1:``port`` (uvloop) until SIGTERM or SIGINT."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", port, backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())


def run_slow_server(port: int, delay: float) -> None:
    serve_until_signal(lambda: SlowServer(delay, RESPONSE_BODY.encode()), port)


# --- shadowroute -----------------------------------------------------------------------------


KAFKA_PREFIX = "benchproxy"


def run_dataplane_only(config_path: str) -> None:
    """The data plane alone, admin /metrics on, no comparator: pair records to a null sink, or
    with ``transport: kafka`` to the real Kafka sink."""
    import uvloop

    try:
        from shadowroute.configfile import load_config
    except ImportError:  # a build from before configfile (side-by-side runs)
        from shadowroute.core.config import load_config  # type: ignore[attr-defined,no-redef]
    from shadowroute.dataplane.server import DataPlane
    from shadowroute.stream.sink import FanoutSink

    try:  # the runtime package
        from shadowroute.runtime import admin, backend, lifecycle
    except ImportError:  # a build from before it (side-by-side runs against an older build)
        from shadowroute import runtime as admin  # type: ignore[no-redef]
        from shadowroute import runtime as backend  # type: ignore[no-redef]
        from shadowroute import runtime as lifecycle  # type: ignore[no-redef]

    async def main() -> None:
        config = load_config(config_path)
        sink, kafka = backend.pair_sinks(config)
        dp = DataPlane(config, sink if kafka else FanoutSink([]))
        await dp.start()
        ctx = admin.dataplane_context(config, dp)
        if kafka:
            ctx.registry.register(admin.kafka_collector(kafka))
        async with admin.admin_server(ctx, config.admin.host, config.admin.port):
            lifecycle.freeze_startup_heap()  # as serve's workers do
            await lifecycle.wait_for_signal()
        await dp.stop()

    uvloop.run(main())


def shadowroute_config(
    workdir: Path,
    name: str,
    port: int,
    admin: int,
    prod: int,
    cand: int | None,
    kafka: str | None = None,
) -> Path:
    transport = (
        f"transport: {{kind: kafka, bootstrap: '{kafka}', topic_prefix: {KAFKA_PREFIX}, "
        f"spool: {{path: '{workdir / 'spool'}'}}}}"
        if kafka
        else "transport: {kind: embedded}"
    )
    lines = [
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        f"admin: {{host: 127.0.0.1, port: {admin}}}",
        transport,
        # each case a state file of its own (a file holds one config's evidence)
        f"comparator: {{state_path: '{workdir / (name + '.sqlite')}'}}",
        "routes:",
        "  - name: bench",
        "    path_prefix: /",
        "    protocol: kserve-v1",
        "    task: regression",
        f'    production: {{name: prod, url: "http://127.0.0.1:{prod}", timeout_s: 2}}',
    ]
    if cand is not None:
        lines += [
            "    candidates:",
            f'      - {{name: cand, url: "http://127.0.0.1:{cand}", fraction: 1.0, timeout_s: 2}}',
        ]
    path = workdir / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


_METRIC = re.compile(r"^shadowroute_(\w+?)(?:_total)?(?:\{([^}]*)\})? ([0-9.eE+-]+)$")


COUNTERS = ("requests", "mirror_requests", "records_", "extract_failed", "candidate_pairs")


def sr_metrics(admin: int) -> dict[str, float]:
    """Flat {name[label=value,...]: value} from the admin /metrics, counters only."""
    out: dict[str, float] = {}
    for line in http_get(admin, "/metrics").splitlines():
        m = _METRIC.match(line)
        if m and m.group(1).startswith(COUNTERS):
            labels = m.group(2) or ""
            keep = ",".join(p for p in labels.split(",") if p.startswith(("outcome", "class")))
            key = m.group(1) + (f"[{keep}]" if keep else "")
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


# --- load ------------------------------------------------------------------------------------


@dataclass
class Point:
    case: str
    conns: int
    rep: int
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    cpu_us: float | None
    prod_seen: int
    cand_seen: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    other_cpu: float = 0.0
    """Share of the proxy's core busy with anything but the proxy during the run."""
    user_share: float | None = None
    """Share of the proxy's CPU time spent in user mode (the rest is the kernel)."""
    supervisor_cpu_us: float | None = None
    """``serve``'s supervisor (API, comparator or Kafka producer): CPU µs per request."""


def run_wrk(port: int, conns: int, seconds: float, lua: Path) -> dict[str, Any]:
    argv = [
        "taskset", "-c", LOAD_CPU, WRK, "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "5s",
        "-s", str(lua), f"http://127.0.0.1:{port}/v1/models/fraud:predict",
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            doc: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
            doc["raw"] = out.stdout
            return doc
    raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")


@dataclass
class Case:
    name: str
    port: int
    proxy_pid: int | None
    cand_count: Callable[[], int] | None
    admin: int | None = None
    settle_s: float = 0.3
    workers: int = 1
    notes: list[str] = field(default_factory=list)


@dataclass
class Bench:
    procs: Procs
    lua: Path
    seconds: float
    reps: int
    conns: list[int]
    prod_port: int
    raw: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.raw.append(text)

    def measure(self, cases: list[Case]) -> list[Point]:
        """Every case at every connection count, round-robin per repetition, so that outside
        load on the machine falls on all cases alike."""
        points = []
        rss0 = {}
        for case in cases:
            run_wrk(case.port, 8, min(1.0, self.seconds), self.lua)  # warm-up
            time.sleep(case.settle_s)
            if case.proxy_pid:
                rss0[case.name] = rss_mib(case.proxy_pid)
        for rep in range(self.reps):
            for conns in self.conns:
                self.say(f"## repetition {rep}, {conns} connections")
                for case in cases:
                    points.append(self.one(case, conns, rep))
        for case in cases:
            if case.proxy_pid:
                rss1 = rss_mib(case.proxy_pid)
                self.say(f"  {case.name}: RSS {rss0[case.name]:.1f} MiB -> {rss1:.1f} MiB")
        return points

    def one(self, case: Case, conns: int, rep: int) -> Point:
        prod0 = stub_requests(self.prod_port)
        cand0 = case.cand_count() if case.cand_count else None
        met0 = sr_metrics(case.admin) if case.admin else {}
        user0, sys0 = cpu_times(case.proxy_pid) if case.proxy_pid else (0.0, 0.0)
        sup0 = supervisor_cpu(case.proxy_pid) if case.proxy_pid else None
        core0 = core_busy(PROXY_CPU)
        res = run_wrk(case.port, conns, self.seconds, self.lua)
        user1, sys1 = cpu_times(case.proxy_pid) if case.proxy_pid else (0.0, 0.0)
        sup1 = supervisor_cpu(case.proxy_pid) if case.proxy_pid else None
        cpu0, cpu1 = user0 + sys0, user1 + sys1
        core1 = core_busy(PROXY_CPU)
        wall = res["duration_us"] / 1e6
        # --workers spreads the proxy over both cores: no "other" figure then.
        other = ((core1 - core0) - (cpu1 - cpu0)) / wall if case.workers == 1 else math.nan
        time.sleep(case.settle_s)  # let mirrors finish and worker snapshots arrive
        prod1 = stub_requests(self.prod_port)
        cand1 = case.cand_count() if case.cand_count else None
        met1 = sr_metrics(case.admin) if case.admin else {}
        n = int(res["requests"])
        errors = {k: int(res[k]) for k in ("connect", "read", "write", "status", "timeout")}
        point = Point(
            case=case.name,
            conns=conns,
            rep=rep,
            rps=n / (res["duration_us"] / 1e6),
            requests=n,
            p50_ms=res["p50_us"] / 1000,
            p99_ms=res["p99_us"] / 1000,
            errors=errors,
            cpu_us=(cpu1 - cpu0) / n * 1e6 if case.proxy_pid and n else None,
            prod_seen=prod1 - prod0,
            cand_seen=(cand1 - cand0) if cand0 is not None and cand1 is not None else None,
            metrics={k: v - met0.get(k, 0.0) for k, v in met1.items() if v - met0.get(k, 0.0)},
            other_cpu=other,
            user_share=(user1 - user0) / (cpu1 - cpu0) if cpu1 > cpu0 else None,
            supervisor_cpu_us=(sup1 - sup0) / n * 1e6
            if sup0 is not None and sup1 is not None and n
            else None,
        )
        cpu = f"{point.cpu_us:.1f}" if point.cpu_us is not None else "-"
        if point.user_share is not None:
            cpu += f" ({point.user_share:.0%} user)"
        if point.supervisor_cpu_us is not None:
            cpu += f", supervisor {point.supervisor_cpu_us:.1f}"
        self.say(
            f"  {case.name:13s} c{conns:<3d} rep{rep} {point.rps:9.0f} req/s "
            f"p50 {point.p50_ms:7.3f} p99 {point.p99_ms:8.3f} ms  cpu {cpu} us/req  "
            f"n={n} prod={point.prod_seen} cand={point.cand_seen} err={errors} "
            f"cpu{PROXY_CPU}-busy-other={other:.0%}"
        )
        if point.metrics:
            self.say(f"    metrics delta: {json.dumps(point.metrics, sort_keys=True)}")
        return point


# --- cases -----------------------------------------------------------------------------------


@contextlib.contextmanager
def nginx_proxy(
    procs: Procs, name: str, prod: int, cand: int, mirror: bool
) -> Iterator[tuple[int, int]]:
    port = free_port()
    values = {
        "PORT": str(port),
        "PROD_PORT": str(prod),
        "CAND_PORT": str(cand),
        "MIRROR": "mirror /mirror;" if mirror else "",
    }
    proc = start_nginx(procs, name, "proxy_mirror.conf", values, PROXY_CPU)
    try:
        yield port, proc.pid
    finally:
        procs.stop(name)


@contextlib.contextmanager
def shadowroute_proxy(
    procs: Procs,
    name: str,
    prod: int,
    cand: int | None,
    *,
    optimize: bool,
    workers: int = 1,
    profile: Path | None = None,
    dataplane_only: bool = False,
    kafka: str | None = None,
) -> Iterator[tuple[int, int, int]]:
    port, admin = free_port(), free_port()
    cfg = shadowroute_config(procs.workdir, name, port, admin, prod, cand, kafka)
    opt = ["-O"] if optimize else []
    if profile is not None:
        opt += ["-m", "cProfile", "-o", str(profile)]
    if dataplane_only:
        argv = [sys.executable, *opt, str(Path(__file__).resolve()), "--dataplane-only", str(cfg)]
    else:
        argv = [sys.executable, *opt, "-m", "shadowroute", "--log-level", "warning"]
        argv += ["serve", "-c", str(cfg)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    proc = procs.start(name, argv, BOTH_CPUS if workers > 1 else PROXY_CPU)
    try:
        wait_port(port, proc)
        wait_port(admin, proc)
        if workers == 1 and not dataplane_only:
            # `serve` = a supervisor (comparator, API) and one data-plane worker: the worker
            # gets the proxy's core to itself, the supervisor shares the load generator's.
            for pid in tree_pids(proc.pid)[1:]:
                subprocess.run(["taskset", "-a", "-p", "-c", PROXY_CPU, str(pid)], check=True,
                               capture_output=True)  # fmt: skip
            subprocess.run(["taskset", "-a", "-p", "-c", LOAD_CPU, str(proc.pid)], check=True,
                           capture_output=True)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # --workers: ready once every worker reported
            with contextlib.suppress(OSError):
                http_get(admin, "/readyz")
                break
            time.sleep(0.1)
        yield port, admin, proc.pid
    finally:
        rc = procs.stop(name, timeout=30.0)
        if rc not in (0, None):
            print(f"  {name} exited with {rc}:\n{procs.log_tail(name)}", flush=True)


def start_case(
    stack: contextlib.ExitStack,
    procs: Procs,
    name: str,
    prod_port: int,
    cand_port: int,
    slow_port: int,
    optimize: bool,
    kafka: str | None = None,
) -> Case:
    def cand_stub() -> int:
        return stub_requests(cand_port)

    def cand_slow() -> int:
        return int(http_get(slow_port, "/__count"))

    slow = name.endswith("-slow")
    count = cand_slow if slow else cand_stub
    settle = 2.5 if slow else 0.3
    if name == "direct":
        return Case(name, prod_port, None, None)
    if name.startswith("nginx"):
        mirror = name != "nginx"
        target = slow_port if slow else cand_port
        port, pid = stack.enter_context(nginx_proxy(procs, name, prod_port, target, mirror))
        return Case(name, port, pid, count if mirror else None, settle_s=settle)
    cand = None if name.endswith("-nomirror") else slow_port if slow else cand_port
    workers = 2 if name == "sr-w2-mirror" else 1
    port, admin, pid = stack.enter_context(
        shadowroute_proxy(
            procs,
            name,
            prod_port,
            cand,
            optimize=optimize,
            workers=workers,
            dataplane_only=name.startswith("dp-"),
            kafka=kafka if "kafka" in name else None,
        )
    )
    settle = max(settle, 1.2) if workers > 1 else settle  # worker counter snapshots: 0.5 s
    return Case(name, port, pid, count if cand else None, admin, settle, workers=workers)


# --- report ----------------------------------------------------------------------------------


DROPPED_FULL = 'mirror_requests[outcome="dropped_full"]'


def med(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarise(
    points: list[Point], conns: list[int], best: bool = False
) -> tuple[str, dict[tuple[str, int], dict[str, Any]]]:
    """The table of medians over repetitions, or with ``best`` the best repetition per figure
    (highest req/s, lowest latency and CPU): the capacity least disturbed by outside load."""
    hi: Callable[[Sequence[float]], float] = max if best else med
    lo: Callable[[Sequence[float]], float] = min if best else med
    cases = list(dict.fromkeys(p.case for p in points))
    agg: dict[tuple[str, int], dict[str, Any]] = {}
    for case in cases:
        for c in conns:
            pts = [p for p in points if p.case == case and p.conns == c]
            if not pts:
                continue
            cpu = [p.cpu_us for p in pts if p.cpu_us is not None]
            sup = [p.supervisor_cpu_us for p in pts if p.supervisor_cpu_us is not None]
            cand = [p.cand_seen for p in pts if p.cand_seen is not None]
            agg[(case, c)] = {
                "rps": hi([p.rps for p in pts]),
                "p50": lo([p.p50_ms for p in pts]),
                "p99": lo([p.p99_ms for p in pts]),
                "cpu": lo(cpu) if cpu else None,
                "sup": lo(sup) if sup else None,
                "errors": sum(sum(p.errors.values()) for p in pts),
                "non2xx": sum(p.errors["status"] for p in pts),
                "client": sum(p.requests for p in pts),
                "prod": sum(p.prod_seen for p in pts),
                "cand": sum(cand) if cand else None,
                "dropped": sum(p.metrics.get(DROPPED_FULL, 0) for p in pts),
                "other": med([p.other_cpu for p in pts]),
            }
    lines = [
        "| case | conns | req/s | × nginx-mirror | p50 ms | p99 ms | proxy CPU µs/req "
        "| supervisor CPU µs/req | candidate / client requests | errors "
        "| other load on proxy core |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        for c in conns:
            a = agg.get((case, c))
            if a is None:
                continue
            ref = agg.get(("nginx-mirror", c))
            ratio = f"{a['rps'] / ref['rps']:.2f}" if ref else "-"
            cpu_text = f"{a['cpu']:.1f}" if a["cpu"] is not None else "-"
            sup_text = f"{a['sup']:.1f}" if a["sup"] is not None else "-"
            other = "-" if math.isnan(a["other"]) else f"{a['other']:.0%}"
            if a["cand"] is None:
                comp = "-"
            else:
                comp = f"{a['cand']}/{a['client']} ({a['cand'] / max(a['client'], 1):.1%})"
                if a["dropped"]:
                    comp += f", {int(a['dropped'])} dropped (full)"
            lines.append(
                f"| {case} | {c} | {a['rps']:,.0f} | {ratio} | {a['p50']:.3f} | {a['p99']:.3f} "
                f"| {cpu_text} | {sup_text} | {comp} | {a['errors']} | {other} |"
            )
    return "\n".join(lines), agg


def verdicts(agg: dict[tuple[str, int], dict[str, Any]], conns: list[int]) -> list[str]:
    out = []

    def get(case: str, c: int, key: str) -> Any:
        a = agg.get((case, c))
        return None if a is None else a[key]

    # The targets are for one data-plane process producing pair records to the
    # in-process sink (dp-mirror). `serve` adds a supervisor process (the API and the embedded
    # comparator consuming every record) that this harness puts on the load generator's core:
    # its figures are reported beside, measured against the same bars.
    for case, what in (
        ("dp-mirror", "one data-plane process, 100% mirror, pair records to the in-process sink"),
        ("sr-mirror", "`serve`, one worker + supervisor with the embedded comparator"),
    ):
        for c in conns:
            sr, ng = get(case, c, "rps"), get("nginx-mirror", c, "rps")
            if sr and ng:
                ratio = sr / ng
                verdict = (
                    "met (stretch 2x met)" if ratio >= 2 else "met" if ratio >= 1.5 else "NOT met"
                )
                out.append(
                    f"- c{c}: {what} = {ratio:.2f}x nginx-with-mirror "
                    f"(target >= 1.5x, stretch 2x): {verdict}"
                )
        p99 = get(case, 8, "p99")
        if p99 is not None:
            out.append(
                f"- c8 client p99, {what} = {p99:.3f} ms (target <= 1 ms): "
                f"{'met' if p99 <= 1.0 else 'NOT met'}"
            )
    for c in conns:
        slow, ok = get("sr-slow", c, "p99"), get("sr-mirror", c, "p99")
        if slow is not None and ok:
            d = slow / ok - 1
            out.append(
                f"- c{c}: 1-s candidate p99 {slow:.3f} ms vs healthy {ok:.3f} ms "
                f"({d:+.1%}; target within 10%): {'met' if d <= 0.10 else 'NOT met'}"
            )
    for c in conns:
        w2, w1 = get("sr-w2-mirror", c, "rps"), get("sr-mirror", c, "rps")
        if w2 and w1:
            out.append(f"- c{c}: --workers 2 = {w2 / w1:.2f}x one worker (throughput)")
    for c in conns:
        k, m = get("dp-kafka-mirror", c, "rps"), get("dp-mirror", c, "rps")
        kc, mc = get("dp-kafka-mirror", c, "cpu"), get("dp-mirror", c, "cpu")
        if k and m:
            cost = 1 - k / m
            line = (
                f"- c{c}: 100% mirror into real Kafka = {k / m:.2f}x the in-process sink's "
                f"throughput (Kafka sink costs {cost:.1%}; target <= 10%): "
                f"{'met' if cost <= 0.10 else 'NOT met'}"
            )
            if kc and mc:
                line += f"; CPU {kc:.1f} vs {mc:.1f} us/req"
            out.append(line + " (producer in the data plane's process, `--workers 0`)")
    for c in conns:
        k, m = get("sr-kafka-mirror", c, "rps"), get("sr-mirror", c, "rps")
        if k and m:
            cost = 1 - k / m
            ks, ms = get("sr-kafka-mirror", c, "sup"), get("sr-mirror", c, "sup")
            kc, mc = get("sr-kafka-mirror", c, "cpu"), get("sr-mirror", c, "cpu")
            sup = f"; supervisor {ks:.1f} vs {ms:.1f} us/req" if ks and ms else ""
            cpu = f"; worker CPU {kc:.1f} vs {mc:.1f} us/req" if kc and mc else ""
            out.append(
                f"- c{c}: `serve` (one worker) into real Kafka = {k / m:.2f}x `serve` with the "
                f"in-process sink (Kafka sink costs {cost:.1%}; target <= 10%): "
                f"{'met' if cost <= 0.10 else 'NOT met'}{cpu}{sup} (producer in the supervisor)"
            )
    return out


# --- main ------------------------------------------------------------------------------------

ALL_CASES = (
    "direct", "nginx", "sr-nomirror", "sr-mirror", "nginx-mirror", "sr-slow", "nginx-slow",
    "sr-w2-mirror", "dp-nomirror", "dp-mirror", "dp-kafka-mirror", "sr-kafka-mirror",
)  # fmt: skip


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """A real Kafka broker (tests/kafka_harness.py) on the load generator's core, with the
    pairs topic created; yields its bootstrap address."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from kafka_harness import KafkaBroker  # type: ignore[import-not-found]
    from shadowroute.core.config import Transport
    from shadowroute.stream.kafka import create_topics

    broker = KafkaBroker()
    broker.start()
    try:
        for pid in tree_pids(broker.pid):
            subprocess.run(["taskset", "-a", "-p", "-c", LOAD_CPU, str(pid)], capture_output=True)
        transport = Transport(kind="kafka", bootstrap=broker.bootstrap, topic_prefix=KAFKA_PREFIX)
        asyncio.run(create_topics(transport))
        yield broker.bootstrap
    finally:
        broker.cleanup()


def profile_run(
    procs: Procs, bench: Bench, prod: int, cand: int, seconds: float, optimize: bool
) -> str:
    import pstats

    prof = procs.workdir / "proxy.prof"
    with shadowroute_proxy(
        procs, "sr-profile", prod, cand, optimize=optimize, profile=prof, dataplane_only=True
    ) as (
        port,
        _admin,
        _pid,
    ):
        for conns in (8, 64):
            res = run_wrk(port, conns, seconds, bench.lua)
            bench.say(
                f"  profiled c{conns}: {res['requests']} requests, "
                f"{res['requests'] / (res['duration_us'] / 1e6):.0f} req/s under cProfile"
            )
    deadline = time.monotonic() + 10
    while not prof.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not prof.exists():
        return "(no profile written)"
    import io

    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.sort_stats("tottime").print_stats(25)
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 rep x 2 s per point")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--conns", default="8,64")
    p.add_argument("--cases", default=",".join(ALL_CASES))
    p.add_argument("--profile", action="store_true", help="also profile the proxy with cProfile")
    p.add_argument(
        "--python-O",
        dest="optimize",
        action="store_true",
        help="run shadowroute as `python -O -m shadowroute` (asserts off)",
    )
    p.add_argument("--no-write", action="store_true", help="do not write README/results")
    p.add_argument("--note", default="", help="text appended under the README table")
    p.add_argument("--slow-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--dataplane-only", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dataplane_only:
        run_dataplane_only(args.dataplane_only)
        return 0
    if args.slow_upstream:
        run_slow_server(args.slow_upstream, 1.0)
        return 0
    if args.quick:
        args.seconds, args.reps = 2.0, 1
    conns = [int(c) for c in args.conns.split(",")]
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(ALL_CASES)
    if unknown:
        p.error(f"unknown cases: {sorted(unknown)}")
    if os.cpu_count() != 2:
        print(f"note: {os.cpu_count()} CPUs; the pinning assumes CPUs 0 and 1", file=sys.stderr)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    workdir.chmod(0o755)  # nginx workers may run as another user
    procs = Procs(workdir)
    lua = workdir / "post.lua"
    lua.write_text(WRK_LUA.replace("@@BODY@@", REQUEST_BODY))
    cmd = "python benchmarks/bench_proxy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = dt.datetime.now(dt.UTC)
    points: list[Point] = []
    bench: Bench | None = None
    profile_text = ""
    try:
        body = RESPONSE_BODY.replace("'", "\\'")
        prod_port, cand_port, slow_port = free_port(), free_port(), free_port()
        for name, port in (("nginx-prod", prod_port), ("nginx-cand", cand_port)):
            values = {"PORT": str(port), "BODY": body}
            start_nginx(procs, name, "upstream.conf", values, LOAD_CPU)
        slow = procs.start(
            "slow-cand",
            [sys.executable, str(Path(__file__).resolve()), "--slow-upstream", str(slow_port)],
            LOAD_CPU,
        )
        wait_port(slow_port, slow)
        bench = Bench(procs, lua, args.seconds, args.reps, conns, prod_port)
        bench.say(f"# proxy benchmark {started:%Y-%m-%d %H:%M}Z: {cmd}")
        bench.say(
            f"# request {len(REQUEST_BODY)} B, response {len(RESPONSE_BODY)} B; wrk -t1 on CPU "
            f"{LOAD_CPU} with the upstreams; proxy on CPU {PROXY_CPU} (--workers 2: {BOTH_CPUS}); "
            f"{args.reps} x {args.seconds:g} s per point, median"
        )
        bench.say(f"# {platform_line()}")
        bench.say(
            f"# cases interleaved: each repetition runs every case in turn; "
            f"cpu{PROXY_CPU}-busy-other = share of the proxy's core used by other processes"
        )
        with contextlib.ExitStack() as stack:
            wants_kafka = any("kafka" in name for name in cases)
            kafka = stack.enter_context(kafka_broker()) if wants_kafka else None
            running = [
                start_case(
                    stack, procs, name, prod_port, cand_port, slow_port, args.optimize, kafka
                )
                for name in cases
            ]
            points += bench.measure(running)
        for name in cases:
            if name.startswith(("sr-", "dp-")):
                bench.say(f"  {name} log tail:\n{procs.log_tail(name, 10) or '  (empty)'}")
        if args.profile:
            bench.say("## cProfile of the data plane alone (dp-mirror setup), 100% mirror")
            profile_text = profile_run(
                procs, bench, prod_port, cand_port, max(args.seconds, 5.0), args.optimize
            )
            bench.say(profile_text)
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        return 130
    except Exception:
        print(f"failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
    assert bench is not None
    table, agg = summarise(points, conns)
    checks = verdicts(agg, conns)
    best_table, best_agg = summarise(points, conns, best=True)
    best_checks = verdicts(best_agg, conns)
    bench.say("\nMedian of the repetitions:\n\n" + table + "\n")
    bench.say("\n".join(checks))
    bench.say("\nBest repetition per figure:\n\n" + best_table + "\n")
    bench.say("\n".join(best_checks))
    table = (
        "Median of the repetitions:\n\n"
        + table
        + "\n\n"
        + "\n".join(checks)
        + "\n\nBest repetition per figure (least disturbed by other load on the machine):\n\n"
        + best_table
    )
    checks = best_checks
    if not args.no_write:
        write_outputs(bench, cmd, started, table, checks, args.note)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def platform_line() -> str:
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {nginx_v}, {wrk_v}"


README_INTRO = """## Proxy: shadowroute vs nginx `mirror`

`benchmarks/bench_proxy.py` runs every case below in one run, on the same upstreams and the
same load generator, and reports ratios against nginx-with-mirror measured in that run.

- Upstreams: static nginx servers (one worker each; `return 200` of a 186-byte KServe-v1
  `{"predictions": [...]}` body) for production and the candidate; for the slow-candidate
  cases a small uvloop server (in `bench_proxy.py`) that answers after 1 s, keep-alive.
- Load: `wrk -t1`, a Lua script POSTing a 295-byte JSON body, 8 and 64 connections.
- Pinning (2-vCPU machine): wrk **and the upstreams** on CPU 0, the proxy under test alone
  on CPU 1; `--workers 2` gets CPUs 0-1 and so shares CPU 0 with wrk and the upstreams.
- Cases: `direct` (wrk to production), `nginx` (nginx reverse proxy, keep-alive upstream, no
  mirror), `sr-nomirror` (shadowroute, route without candidates), `sr-mirror` (100% mirrored to
  one candidate, every pair record to the supervisor's embedded comparator), `nginx-mirror` (the
  peer: the same nginx plus `mirror /mirror;` with `internal; proxy_pass` to the candidate),
  `sr-slow` / `nginx-slow` (the candidate answers after 1 s; shadowroute's candidate timeout 2
  s, max_in_flight 128, so excess mirrors are dropped and counted), `sr-w2-mirror` (`serve
  --workers 2`, 100% mirror), `dp-nomirror` / `dp-mirror` (the data plane alone: `DataPlane`
  plus the admin `/metrics`, pair records built and queued to the in-process sink, here a null
  one, no comparator: the issue's target case), `dp-kafka-mirror` (the data plane alone with the
  Kafka sink in its own process, as `serve --workers 0` runs it) and `sr-kafka-mirror` (`serve`
  with `transport: kafka`: the worker ships its records to the supervisor, whose producer writes
  them). The Kafka cases use a real broker started from `tests/kafka_harness.py` on CPU 0.
- `sr-*` cases run `python -m shadowroute serve` (the console script's code; `--python-O`
  adds `-O`): a supervisor process (the API, and the embedded comparator consuming every
  record or, with `transport: kafka`, the producer) beside one data-plane worker
  (`--workers 2`: two). The worker is pinned to the proxy's core; the supervisor shares
  CPU 0 with the load generator and the upstreams, so its work slows them too.
- All proxies are started at once and the cases are interleaved (each repetition runs
  every case in turn), so outside load on the machine falls on all of them alike.
- Columns: median of the repetitions (a second table takes the best repetition per figure:
  highest req/s, lowest latency and CPU); proxy CPU = utime+stime of the data-plane processes
  (`serve`'s workers, not its supervisor; nginx's master and worker) over requests completed;
  supervisor CPU = the same for `serve`'s supervisor; candidate / client =
  requests the candidate received (nginx `stub_status` or the slow server's counter) over
  requests wrk completed, summed over repetitions (a few more than 100% is requests in flight
  when wrk stops); other load on proxy core = share of CPU 1 busy with processes other
  than the proxy during the run (from /proc/stat; "-" for `--workers`), a measure of how
  disturbed the point is (for `direct` it is whatever else ran on CPU 1).
- Templates: `benchmarks/nginx/upstream.conf`, `benchmarks/nginx/proxy_mirror.conf`.
  Raw output, including shadowroute's mirror-outcome counters per run and the cProfile
  listing (`--profile`), goes to `benchmarks/results/proxy-<date>.txt` (`<date>b`, `c`, ...
  for a later run the same day).

"""
BEGIN, END = "<!-- bench_proxy:begin -->", "<!-- bench_proxy:end -->"


def free_result_path(name: str, day: dt.datetime) -> Path:
    """``benchmarks/results/<name>-<date>.txt``, or with ``b``, ``c``, ... after the date when a
    run of the same day is already there: a later run never overwrites a written result."""
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    for suffix in ("", *"bcdefghijklmnopqrstuvwxyz"):
        path = results / f"{name}-{day:%Y-%m-%d}{suffix}.txt"
        if not path.exists():
            return path
    raise RuntimeError(f"26 results of {name} on {day:%Y-%m-%d} already: move some away")


def write_outputs(
    bench: Bench, cmd: str, started: dt.datetime, table: str, checks: list[str], notes: str
) -> None:
    raw_path = free_result_path("proxy", started)
    raw_path.write_text("\n".join(bench.raw) + "\n")
    print(f"raw output: {raw_path.relative_to(REPO)}")
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    block = (
        f"{BEGIN}\nMeasured {started:%Y-%m-%d} with `{cmd.strip()}` "
        f"(raw output: `benchmarks/results/{raw_path.name}`).\n\n{table}\n\n"
        + "\n".join(checks)
        + (f"\n\n{notes}" if notes else "")
        + f"\n{END}\n"
    )
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + README_INTRO + block
    readme.write_text(text)
    print(f"table written to {readme.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
