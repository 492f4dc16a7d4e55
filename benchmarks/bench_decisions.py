"""Decision quality: how often the verdict is wrong, and how many labels it needs to be right.

The verdict is read after every batch of labelled pairs, as deploy tooling polling
``/decision`` would read it, under the default policy (superiority, α = 0.05 split between
accuracy and the default guardrails) for a classification route. Each scenario simulates
paired correctness differences ``d ∈ {−1, 0, +1}`` with known per-request conditional means, so
the target of the verdict, the average of those means over the traffic seen so far, is known
at every read.

A **false promotion** is a read that says promote while the candidate is not better on the
traffic seen so far (that average ≤ 0). The policy promises this happens in at most α of the
runs, however often the verdict is read and however the traffic moves. "Ever promoted" counts
any promote read at all: on a candidate that is truly better for a while (the daily cycle's
good hours, the first third of better-then-worse) a promote then is correct about the traffic
seen, and the verdict is expected to come back to hold or reject later.

Nulls: i.i.d. A/A; outcomes correlated with request ids (each batch fed sorted by id, as a
sorted join does); a daily cycle with zero average difference; better-then-worse with a
negative average (the case that once ended in promote). Power: a +2 point candidate at 85%
base accuracy, labels to the first promote against the fixed-horizon exact McNemar test at the
same α (the primary metric's share, and the whole α). For contrast, the method this replaced
(predictable plug-in empirical Bernstein with a running intersection) on the same streams.

The verdicts are computed vectorised from the same confidence sequence the comparator uses;
a self-check replays runs of every scenario through ``PairedMetric`` and ``decide()`` and
stops if any verdict differs.

    .venv/bin/python benchmarks/bench_decisions.py            # 2000 runs per scenario
    .venv/bin/python benchmarks/bench_decisions.py --runs 300 # quicker
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from shadowroute.core.config import Policy
from shadowroute.core.stats.confseq import eb_path
from shadowroute.core.stats.paired import PairedMetric
from shadowroute.core.stats.policy import decide, guardrail_thresholds, metric_alpha

Arrays = tuple[np.ndarray, np.ndarray]
BATCH = 50
POLICY = Policy()
ALPHAS = metric_alpha(POLICY, "classification")
A_PRIMARY = ALPHAS["accuracy"]


# --- scenarios: (d, mu) with d the paired differences and mu their conditional means ---------


def _from_rates(rng: np.random.Generator, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """d = +1 with probability b (only the candidate right), −1 with c, else 0."""
    u = rng.random(b.shape)
    return np.where(u < b, 1.0, np.where(u < b + c, -1.0, 0.0))


def aa_iid(rng: np.random.Generator, runs: int) -> Arrays:
    b = np.full((runs, 6000), 0.06)
    return _from_rates(rng, b, b), np.zeros(b.shape)


def ids_sorted(rng: np.random.Generator, runs: int) -> Arrays:
    """Two segments, the candidate +10 points on one and −10 on the other (zero average);
    segment A's ids sort first, and each batch reaches the engine sorted by id."""
    n = 6000
    seg_a = rng.random((runs, n)) < 0.5
    b = np.where(seg_a, 0.12, 0.02)
    c = np.where(seg_a, 0.02, 0.12)
    mu = b - c
    d = _from_rates(rng, b, c)
    order = np.argsort(~seg_a.reshape(runs, -1, BATCH), axis=-1, kind="stable")
    d = np.take_along_axis(d.reshape(runs, -1, BATCH), order, axis=-1).reshape(runs, n)
    mu = np.take_along_axis(mu.reshape(runs, -1, BATCH), order, axis=-1).reshape(runs, n)
    return d, mu


def daily_cycle(rng: np.random.Generator, runs: int) -> Arrays:
    """The candidate ±6 points around production over a day of 2400 labelled pairs, starting
    with its good hours; zero average over whole days; 4 days."""
    n, day = 9600, 2400
    mu1 = 0.06 * np.sin(2 * math.pi * np.arange(n) / day)
    b = np.broadcast_to(0.06 + mu1 / 2, (runs, n))
    c = np.broadcast_to(0.06 - mu1 / 2, (runs, n))
    return _from_rates(rng, b, c), np.broadcast_to(mu1, (runs, n))


def better_then_worse(rng: np.random.Generator, runs: int) -> Arrays:
    """Production 0.85 accurate; the candidate 0.99 on the first third, 0.70 after (independent
    errors): paired mean +0.14 then −0.15, −0.053 on average over 9000 pairs."""
    n = 9000
    p_cand = np.where(np.arange(n) < n // 3, 0.99, 0.70)
    prod = rng.random((runs, n)) < 0.85
    cand = rng.random((runs, n)) < p_cand
    d = cand.astype(np.float64) - prod.astype(np.float64)
    return d, np.broadcast_to(p_cand - 0.85, d.shape)


def worse_iid(rng: np.random.Generator, runs: int) -> Arrays:
    b = np.full((runs, 9000), 0.04)
    return _from_rates(rng, b, b + 0.02), np.full(b.shape, -0.02)


def plus_two(rng: np.random.Generator, runs: int) -> Arrays:
    """+2 points at 85% base accuracy, 10% of pairs discordant (6% candidate-only right)."""
    b = np.full((runs, 12000), 0.06)
    return _from_rates(rng, b, b - 0.02), np.full(b.shape, 0.02)


NULLS: dict[str, Callable[[np.random.Generator, int], Arrays]] = {
    "i.i.d. A/A": aa_iid,
    "ids correlated with outcomes": ids_sorted,
    "daily cycle, zero average": daily_cycle,
    "better then worse, average −0.053": better_then_worse,
}


# --- verdicts --------------------------------------------------------------------------------


def guardrails_pass_from() -> int:
    """With no errors on either side the guardrails pass from this many pairs on."""
    thresholds = guardrail_thresholds(POLICY)
    n = 1
    while True:
        ok = True
        for name, threshold in thresholds.items():
            m = PairedMetric.create(name, ALPHAS[name])
            same = np.ones(n) if name == "availability" else np.zeros(n)
            m.update(same, same)
            ok = ok and m.interval()[0] > threshold
        if ok:
            return n
        n += 1


@dataclass
class Verdicts:
    looks: np.ndarray  # labels seen at each read
    verdict: np.ndarray  # runs × reads: 1 promote, 0 hold, −1 reject
    target: np.ndarray  # runs × reads: average conditional mean over the pairs seen


def verdicts(d: np.ndarray, mu: np.ndarray, guard_from: int) -> Verdicts:
    n = d.shape[1]
    looks = np.arange(BATCH, n + 1, BATCH)
    lo, up = eb_path(d, 2 * A_PRIMARY)
    lo, up = lo[:, looks - 1], up[:, looks - 1]
    enough = (looks >= max(POLICY.min_pairs, POLICY.min_labelled)) & (looks >= guard_from)
    v = np.where(up < 0, -1, np.where((lo > 0) & enough[None, :], 1, 0))
    target = (np.cumsum(mu, axis=1) / np.arange(1, n + 1))[:, looks - 1]
    return Verdicts(looks, v, target)


def self_check(d: np.ndarray, got: Verdicts, runs: int = 3) -> None:
    """Replay runs through the comparator's own aggregates and policy."""
    for r in range(min(runs, d.shape[0])):
        states = {k: PairedMetric.create(k, a) for k, a in ALPHAS.items()}
        seen = 0
        for j, look in enumerate(got.looks):
            chunk = d[r, seen:look]
            prod = (chunk < 0).astype(np.float64)
            states["accuracy"].update(prod, prod + chunk)
            for name, m in states.items():
                if name != "accuracy":  # no errors, every answer with a prediction
                    same = np.ones(chunk.size) if name == "availability" else np.zeros(chunk.size)
                    m.update(same, same)
            seen = int(look)
            want = decide(POLICY, "classification", states, None, seen, seen).verdict
            code = {"promote": 1, "hold": 0, "reject": -1}[want]
            if code != got.verdict[r, j]:
                sys.exit(f"self-check failed: run {r}, read {j}: {want} vs {got.verdict[r, j]}")


def first_read(mask: np.ndarray, looks: np.ndarray) -> np.ndarray:
    return np.where(mask.any(axis=1), looks[mask.argmax(axis=1)], np.inf)


def upper95(k: int, n: int) -> float:
    return float(stats.beta.ppf(0.95, k + 1, n - k)) if k < n else 1.0


# --- the method this replaced, for contrast --------------------------------------------------


def prpl_eb_intersected(d: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """PrPl-EB (Waudby-Smith & Ramdas 2023, STATISTICS.md A2) with the running intersection."""
    x = (d + 1.0) / 2.0
    m = x.shape[-1]
    t = np.arange(1, m + 1, dtype=np.float64)
    s_t = np.cumsum(x, axis=-1)
    mu_hat = (0.5 + s_t) / (t + 1.0)
    var_t = (0.25 + np.cumsum((x - mu_hat) ** 2, axis=-1)) / (t + 1.0)
    var_prev = np.concatenate([np.full((*x.shape[:-1], 1), 0.25), var_t[..., :-1]], axis=-1)
    log_term = math.log(2.0 / alpha)
    lam = np.minimum(np.sqrt(2.0 * log_term / (var_prev * t * np.log1p(t))), 0.5)
    s_prev = np.concatenate([np.zeros((*x.shape[:-1], 1)), s_t[..., :-1]], axis=-1)
    mean_prev = np.where(t > 1.0, s_prev / np.maximum(t - 1.0, 1.0), 0.0)
    psi = -np.log1p(-lam) - lam
    v_lo = (x - mean_prev) ** 2
    v_hi = np.where(t > 1.0, v_lo, (1.0 - x) ** 2)
    lam_c = np.cumsum(lam, axis=-1)
    lo = (np.cumsum(lam * x, axis=-1) - log_term - np.cumsum(v_lo * psi, axis=-1)) / lam_c
    hi = (np.cumsum(lam * (1 - x), axis=-1) - log_term - np.cumsum(v_hi * psi, axis=-1)) / lam_c
    lo = 2.0 * np.clip(lo, 0.0, 1.0) - 1.0
    up = 2.0 * (1.0 - np.clip(hi, 0.0, 1.0)) - 1.0
    return np.maximum.accumulate(lo, axis=-1), np.minimum.accumulate(up, axis=-1)


# --- fixed-horizon McNemar -------------------------------------------------------------------


def mcnemar_power(n: int, b: float, c: float, alpha: float) -> float:
    """Exact power of the two-sided exact McNemar test at n pairs, rejecting in the
    candidate's favour: sum over the discordant count m of P(m)·P(b-count ≥ critical | m)."""
    m = np.arange(n + 1)
    pm = stats.binom.pmf(m, n, b + c)
    # critical k: smallest k > m/2 with 2·P(X ≥ k | m, ½) < alpha
    k = np.ceil(stats.binom.isf(alpha / 2, m, 0.5)).astype(int)
    k = np.maximum(k, m // 2 + 1)
    while True:
        bad = (2 * stats.binom.sf(k - 1, m, 0.5) >= alpha) & (k <= m)
        if not bad.any():
            break
        k = np.where(bad, k + 1, k)
    pk = stats.binom.sf(k - 1, m, b / (b + c))
    return float(np.sum(pm * np.where(k <= m, pk, 0.0)))


def mcnemar_n(power: float, b: float, c: float, alpha: float) -> int:
    lo, hi = 10, 40_000
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if mcnemar_power(mid, b, c, alpha) >= power else (mid, hi)
    return hi


# --- the run ---------------------------------------------------------------------------------


def run(runs: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    guard_from = guardrails_pass_from()
    out = [
        f"bench_decisions: {runs} runs per scenario, verdict read every {BATCH} labelled pairs,",
        f"default policy (α = {POLICY.alpha}, accuracy's share {A_PRIMARY:.4f}; with no errors",
        f"the guardrails pass from {guard_from} pairs; min_pairs {POLICY.min_pairs}).",
        "",
        "| null | reads | false promotions (95% upper) | ever promoted | final: promote / hold /"
        " reject | previous method: false promotions | previous: final interval excludes"
        " estimate |",
        "|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for name, make in NULLS.items():
        d, mu = make(rng, runs)
        got = verdicts(d, mu, guard_from)
        self_check(d, got)
        false = ((got.verdict == 1) & (got.target <= 0)).any(axis=1)
        ever = (got.verdict == 1).any(axis=1)
        final = got.verdict[:, -1]
        k = int(false.sum())
        worst = max(worst, k / runs)
        lo_old, up_old = prpl_eb_intersected(d, 2 * A_PRIMARY)
        looks = got.looks - 1
        t_old = got.target
        old_false = ((lo_old[:, looks] > 0) & (t_old <= 0)).any(axis=1).mean()
        est = d.mean(axis=1)
        old_excl = ((lo_old[:, -1] > est) | (up_old[:, -1] < est)).mean()
        out.append(
            f"| {name} | {got.looks.size} | {k / runs:.4f} ({upper95(k, runs):.4f}) |"
            f" {ever.mean():.4f} | {np.mean(final == 1):.3f} / {np.mean(final == 0):.3f} /"
            f" {np.mean(final == -1):.3f} | {old_false:.4f} | {old_excl:.3f} |"
        )
    out.append("")
    out.append(f"Largest false-promotion rate: {worst:.4f} (α = {POLICY.alpha}).")

    # Time to a correct reject.
    out += ["", "| worse candidate | labels to first reject: median / p90 | never rejected |"]
    out.append("|---|---|---|")
    for name, make in [("i.i.d. −2 points", worse_iid), ("better then worse", better_then_worse)]:
        d, mu = make(rng, runs)
        got = verdicts(d, mu, guard_from)
        first = first_read(got.verdict == -1, got.looks)
        seen = first[np.isfinite(first)]
        med = np.median(seen) if seen.size else math.nan
        p90 = np.percentile(seen, 90) if seen.size else math.nan
        line = f"| {name} | {med:.0f} / {p90:.0f} | {np.mean(~np.isfinite(first)):.3f} |"
        out.append(line)
    turn = better_then_worse(rng, 1)[1][0]
    crossing = int(np.argmax(np.cumsum(turn) / np.arange(1, turn.size + 1) < 0)) + 1
    out.append(
        f"(better then worse: the average over the traffic seen turns negative at {crossing})"
    )

    # Power against fixed-horizon McNemar.
    d, mu = plus_two(rng, runs)
    got = verdicts(d, mu, guard_from)
    self_check(d, got)
    first = first_read(got.verdict == 1, got.looks)
    capped = np.minimum(first, d.shape[1])
    seq = {
        "median": float(np.median(first)),
        "p80": float(np.percentile(first, 80)),
        "mean": float(np.mean(capped)),
    }
    out += [
        "",
        "+2 points at 85% base accuracy (discordant 6% / 4%): labels to the first promote",
        f"median {seq['median']:.0f}, p80 {seq['p80']:.0f}, mean {seq['mean']:.0f}"
        f" (not promoted within {d.shape[1]}: {np.mean(~np.isfinite(first)):.3f}).",
        "",
        "| fixed-horizon exact McNemar at | n for 50% power | n for 80% power |"
        " sequential median / n(50%) | sequential p80 / n(80%) | sequential mean / n(80%) |",
        "|---|---|---|---|---|---|",
    ]
    for label, alpha in [(f"α = {A_PRIMARY:.4f} (accuracy's share)", A_PRIMARY)]:
        n50 = mcnemar_n(0.5, 0.06, 0.04, alpha)
        n80 = mcnemar_n(0.8, 0.06, 0.04, alpha)
        out.append(
            f"| {label} | {n50} | {n80} | {seq['median'] / n50:.2f}x |"
            f" {seq['p80'] / n80:.2f}x | {seq['mean'] / n80:.2f}x |"
        )
    n50 = mcnemar_n(0.5, 0.06, 0.04, POLICY.alpha)
    n80 = mcnemar_n(0.8, 0.06, 0.04, POLICY.alpha)
    out.append(
        f"| α = {POLICY.alpha} (the whole budget) | {n50} | {n80} | {seq['median'] / n50:.2f}x |"
        f" {seq['p80'] / n80:.2f}x | {seq['mean'] / n80:.2f}x |"
    )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=20261204)
    args = ap.parse_args()
    started = time.perf_counter()
    print(run(args.runs, args.seed))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
