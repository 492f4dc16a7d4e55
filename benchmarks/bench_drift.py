"""Cost of drift tracking, and the same PSI computed by Evidently as a peer.

Run from the repository root:

    .venv/bin/python benchmarks/bench_drift.py [--records 20000] [--evidently-python PATH]

Part 1, per record, 20 monitored numeric fields in a KServe-v1 style JSON body:
  * drift off: parse the body (orjson), as the comparator does for every record anyway;
  * drift on: parse, pull the 20 values by JSON path, and count them in frozen-bin histograms
    (buffered, added to numpy in batches).
Part 2, per window of ``--records`` rows × 20 columns against a 10,000-row reference:
  * shadowroute: histogram the window's values on the frozen bins and compute 20 PSIs;
  * Evidently: its PSI stattest on the same columns (``_psi``, Sturges bins on reference ∪
    current) and, for the full library path, ``Report([DataDriftPreset(method="psi")])``.
Evidently runs in its own interpreter (``--evidently-python``, e.g. a throwaway venv made with
``python -m venv /tmp/evvenv && /tmp/evvenv/bin/pip install evidently "pandas<3"``); the data
are handed over as a .npz file. Without it, part 2 prints shadowroute's figures only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from shadowroute.core.drift import DriftAccumulator, FrozenBins, Histogram, psi

FIELDS = 20
EVIDENTLY_SCRIPT = r"""
import json, sys, time
import numpy as np, pandas as pd
from evidently.legacy.calculations.stattests.psi import _psi
from evidently.legacy.core import ColumnType
d = np.load(sys.argv[1])
ref, cur = d["ref"], d["cur"]
cols = [f"f{i}" for i in range(ref.shape[1])]
rdf, cdf = pd.DataFrame(ref, columns=cols), pd.DataFrame(cur, columns=cols)
def stattest():
    return [float(_psi(rdf[c], cdf[c], ColumnType.Numerical, 0.1)[0]) for c in cols]
def best(fn, reps):
    out, times = None, []
    for _ in range(reps):
        t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
    return min(times), out
t_stat, values = best(stattest, 5)
res = {"stattest_s": t_stat, "psi": values}
try:
    from evidently import Report
    from evidently.presets import DataDriftPreset
    def report():
        return Report([DataDriftPreset(method="psi")]).run(current_data=cdf, reference_data=rdf)
    report()
    res["report_s"] = best(report, 3)[0]
except Exception as exc:
    res["report_error"] = repr(exc)
import evidently
res["version"] = evidently.__version__
print(json.dumps(res))
"""


def _bodies(rng: np.random.Generator, n: int) -> tuple[list[bytes], np.ndarray]:
    data = rng.normal(size=(n, FIELDS)) * np.arange(1, FIELDS + 1) + 100.0
    bodies = [
        orjson.dumps({"instances": [{f"f{j}": float(row[j]) for j in range(FIELDS)}]})
        for row in data
    ]
    return bodies, data


def _best(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def per_record(bodies: list[bytes], bins: dict[str, FrozenBins]) -> tuple[float, float]:
    def off() -> None:
        for b in bodies:
            orjson.loads(b)

    def on() -> None:
        acc = DriftAccumulator(bins)
        for b in bodies:
            acc.observe(orjson.loads(b))
        acc.histograms()

    return _best(off, 5) / len(bodies), _best(on, 5) / len(bodies)


def per_window(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float, list[float]]:
    bins = [FrozenBins.numeric(ref[:, j]) for j in range(FIELDS)]
    refs = []
    for j, b in enumerate(bins):
        h = Histogram(b)
        h.add(ref[:, j])
        refs.append(h)
    values: list[float] = []

    def window() -> None:
        values.clear()
        for j, b in enumerate(bins):
            h = Histogram(b)
            h.add(cur[:, j])
            values.append(psi(refs[j], h))

    cur_hists = []
    for j, b in enumerate(bins):
        h = Histogram(b)
        h.add(cur[:, j])
        cur_hists.append(h)

    def from_histograms() -> None:
        for j in range(FIELDS):
            psi(refs[j], cur_hists[j])

    return _best(window, 5), _best(from_histograms, 20), list(values)


def evidently_peer(python: str, ref: np.ndarray, cur: np.ndarray) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        np.savez(data, ref=ref, cur=cur)
        script = Path(tmp) / "peer.py"
        script.write_text(EVIDENTLY_SCRIPT)
        proc = subprocess.run(
            [python, str(script), str(data)], capture_output=True, text=True, timeout=600
        )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--evidently-python", default="/tmp/evvenv/bin/python")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10_000, FIELDS)) * np.arange(1, FIELDS + 1) + 100.0
    bodies, cur = _bodies(rng, args.records)
    paths = [f"$.instances[*].f{j}" for j in range(FIELDS)]
    bins = {p: FrozenBins.numeric(ref[:, j]) for j, p in enumerate(paths)}

    off, on = per_record(bodies, bins)
    w = sys.stdout.write
    w(f"Per record, {FIELDS} numeric fields, {args.records} records (best of 5)\n")
    w(f"  {'case':<38}{'µs/record':>12}{'ratio':>8}\n")
    w(f"  {'drift off (parse body)':<38}{off * 1e6:>12.2f}{1.0:>8.2f}\n")
    w(f"  {'drift on (parse + extract + count)':<38}{on * 1e6:>12.2f}{on / off:>8.2f}\n")
    w(f"  {'drift tracking alone':<38}{(on - off) * 1e6:>12.2f}\n\n")

    t_ours, t_hist, ours = per_window(ref, cur)
    peer = evidently_peer(args.evidently_python, ref, cur) if args.evidently_python else {}
    w(f"PSI for {FIELDS} columns, window of {args.records} rows vs 10,000 reference rows\n")
    w(f"  {'case':<52}{'ms':>10}{'× ours':>10}\n")
    w(f"  {'shadowroute: histogram window + PSI':<52}{t_ours * 1e3:>10.2f}{1.0:>10.2f}\n")
    w(f"  {'shadowroute: PSI from stored histograms':<52}{t_hist * 1e3:>10.3f}")
    w(f"{t_hist / t_ours:>10.3f}\n")
    if "stattest_s" in peer:
        version = peer.get("version")
        t_stat = float(peer["stattest_s"])  # type: ignore[arg-type]
        w(f"  {f'evidently {version}: psi stattest (Sturges bins)':<52}")
        w(f"{t_stat * 1e3:>10.2f}{t_stat / t_ours:>10.2f}\n")
        if "report_s" in peer:
            t_rep = float(peer["report_s"])  # type: ignore[arg-type]
            w(f"  {'evidently: Report(DataDriftPreset(method=psi))':<52}")
            w(f"{t_rep * 1e3:>10.2f}{t_rep / t_ours:>10.2f}\n")
        else:
            w(f"  evidently Report failed: {peer.get('report_error')}\n")
        theirs = [float(v) for v in peer["psi"]]  # type: ignore[attr-defined]
        w(f"  max PSI, ours (deciles) {max(ours):.4f}; Evidently (Sturges) {max(theirs):.4f}\n")
    else:
        w(f"  evidently peer not run: {peer.get('error', 'no --evidently-python')}\n")


if __name__ == "__main__":
    main()
