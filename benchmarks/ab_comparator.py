"""The comparator's engine, this tree against another build, side by side in one run.

    .venv/bin/python benchmarks/ab_comparator.py --base-tree ../base --base-site /tmp/base-site
        [--pairs 100000] [--reps 3] [--callgrind 40000]

``--base-tree`` is a checkout of the other build (its ``benchmarks/bench_comparator.py`` and
``tests/test_comparator_gen.py`` are used, since internals differ between builds) and
``--base-site`` its installed, compiled package (``pip install --no-deps --target DIR TREE``);
this tree runs with whatever ``shadowroute`` this interpreter imports.

Three in-process cases (``bench_comparator.in_process``): no labels, each batch with its labels,
and all pairs first then their labels (each label joins a pair pending in the store). Each
case runs in a fresh process per build, the builds alternating, ``--reps`` times; the best
figure of each build is compared (the best is the least disturbed by other work). Both wall
time and the process's CPU time are reported.

``--callgrind N`` also counts the instructions of ``Engine.process`` for N pairs under
valgrind's callgrind (when installed): a figure other work on the machine does not move.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("no labels", "with labels", "labels later")

_CHILD = """
import importlib.util, sys, tempfile, time
from pathlib import Path
tree, n, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec = importlib.util.spec_from_file_location("b", f"{tree}/benchmarks/bench_comparator.py")
b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)
if case == "count":
    from test_comparator_gen import classification
    mode = sys.argv[4]
    s = classification(n, seed=1, label_share=0.0 if mode == "no labels" else 1.0)
    B = 20000
    if mode == "labels later":
        batches = [(s.pairs[i:i+B], []) for i in range(0, n, B)]
        batches += [([], s.labels[i:i+B]) for i in range(0, n, B)]
    else:
        batches = [(s.pairs[i:i+B], s.labels[i:i+B]) for i in range(0, n, B)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.sqlite"
        engine = b.Engine(b.config(str(path)), b.Store(path))
        for pairs, labels in batches:
            engine.process(0, pairs, labels)
        engine.store.close()
else:
    args = {"no labels": (False,), "with labels": (True,), "labels later": (True, True)}[case]
    wall, cpu = b.in_process(n, *args)
    print(f"{wall:.1f} {cpu:.1f}")
"""


def _env(site: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if site:
        env["PYTHONPATH"] = site
    return env


def run_case(tree: Path, site: str | None, n: int, case: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), str(n), case],
        env=_env(site),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def instructions(tree: Path, site: str | None, n: int, case: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--toggle-collect=CPyPy_engine___Engine___process",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                _CHILD,
                str(tree),
                str(n),
                "count",
                case,
            ],
            env=_env(site),
            check=True,
            capture_output=True,
        )
        text = out.read_text(errors="replace")
    m = re.search(r"^summary:\s*(\d+)", text, re.M) or re.search(r"^totals:\s*(\d+)", text, re.M)
    if m is None:
        raise RuntimeError("no instruction total in the callgrind output")
    return int(m.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-tree", type=Path, required=True)
    parser.add_argument("--base-site", required=True)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--callgrind", type=int, default=0, metavar="N")
    args = parser.parse_args()
    builds = {"base": (args.base_tree.resolve(), args.base_site), "this": (HERE.parent, None)}
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for rep in range(args.reps):
        for case in CASES:
            for name, (tree, site) in builds.items():
                wall, cpu = run_case(tree, site, args.pairs, case)
                old = best.get((name, case), (0.0, 0.0))
                best[(name, case)] = (max(old[0], wall), max(old[1], cpu))
                print(f"rep {rep + 1} {case:12s} {name}: {wall:9,.0f} pairs/s ({cpu:,.0f}/CPU s)")
    if args.reps:
        _table(best, args.reps, args.pairs)
    if args.callgrind:
        _instructions(builds, args.callgrind)


def _table(best: dict[tuple[str, str], tuple[float, float]], reps: int, pairs: int) -> None:
    print(f"\nbest of {reps}, {pairs:,} pairs, pairs/s (per CPU second):")
    print("| in-process | base | this | change (wall) | change (CPU) |\n|---|---|---|---|---|")
    for case in CASES:
        (bw, bc), (tw, tc) = best[("base", case)], best[("this", case)]
        print(
            f"| {case} | {bw:,.0f} ({bc:,.0f}) | {tw:,.0f} ({tc:,.0f}) | "
            f"{(tw / bw - 1) * 100:+.1f}% | {(tc / bc - 1) * 100:+.1f}% |"
        )


def _instructions(builds: dict[str, tuple[Path, str | None]], n: int) -> None:
    if shutil.which("valgrind") is None:
        print("\n(valgrind not installed: no instruction counts)")
        return
    print(f"\ninstructions per pair in Engine.process ({n:,} pairs, callgrind):")
    print("| in-process | base | this | change |\n|---|---|---|---|")
    for case in CASES:
        b, t = (instructions(tree, site, n, case) for tree, site in builds.values())
        print(f"| {case} | {b / n:,.0f} | {t / n:,.0f} | {(t / b - 1) * 100:+.1f}% |")


if __name__ == "__main__":
    main()
