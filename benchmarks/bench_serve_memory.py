"""Memory of `serve`'s supervisor under mirrored traffic that never gets labels.

The embedded comparator keeps every unlabelled pair pending (in SQLite, not in RAM) until its
TTL ends. This drives `shadowroute serve` (one worker, 100% mirroring, the embedded
comparator) with the proxy benchmark's upstreams and load generator, in windows, and prints the
supervisor's RSS after each: it should level off, not grow with the records.

    .venv/bin/python benchmarks/bench_serve_memory.py [--windows 10] [--seconds 10] [--conns 8]

Bounded: ``windows × seconds`` of load on loopback only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_proxy as bp  # noqa: E402


def status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--conns", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-memory-"))
    procs = bp.Procs(workdir)
    lua = workdir / "post.lua"
    lua.write_text(bp.WRK_LUA.replace("@@BODY@@", bp.REQUEST_BODY))
    try:
        prod, cand = bp.free_port(), bp.free_port()
        for name, port in (("ups-prod", prod), ("ups-cand", cand)):
            values = {"PORT": str(port), "BODY": bp.RESPONSE_BODY}
            bp.start_nginx(procs, name, "upstream.conf", values, bp.LOAD_CPU)
        with bp.shadowroute_proxy(procs, "sr", prod, cand, optimize=False) as (port, _, pid):
            total = 0
            print(f"serve, 1 worker, 100% mirror, c{args.conns}, no labels ever:")
            for w in range(args.windows):
                cpu0 = bp.supervisor_cpu(pid) or 0.0
                r = bp.run_wrk(port, args.conns, args.seconds, lua)
                cpu1 = bp.supervisor_cpu(pid) or 0.0
                total += r["requests"]
                time.sleep(1.0)  # the comparator's last flush of the window
                rate = r["requests"] / (r["duration_us"] / 1e6)
                rss, peak = status_mib(pid, "VmRSS"), status_mib(pid, "VmHWM")
                print(
                    f"  window {w + 1:2d}: {total:9,d} records, {rate:8,.0f} req/s, "
                    f"supervisor {(cpu1 - cpu0) / r['requests'] * 1e6:5.1f} µs/req, "
                    f"RSS {rss:5.0f} MiB (peak {peak:.0f})",
                    flush=True,
                )
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
