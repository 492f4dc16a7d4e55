"""Confidence sequences: exactness against reference loops, merging, and anytime validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import lambertw

from shadowroute.core.stats.confseq import (
    AsymState,
    EBState,
    Intersection,
    asymptotic_rho2,
    eb_path,
    lambertw_m1,
    running_intersection,
)

ALPHA = 0.05


def reference_eb(d: np.ndarray, alpha: float) -> list[tuple[float, float]]:
    """PrPl-EB written straight from STATISTICS.md §2 A2, one observation at a time."""
    log_term = math.log(2.0 / alpha)
    s, q = 0.0, 0.0
    lam_sum = lo_lx = lo_vp = hi_lx = hi_vp = 0.0
    out = []
    for n, di in enumerate(d):  # n observations seen before this one
        x = (float(di) + 1.0) / 2.0
        t = n + 1
        var_prev = (0.25 + q) / (n + 1)  # σ̂²_{t−1}, regularised
        lam = min(math.sqrt(2.0 * log_term / (var_prev * t * math.log(1 + t))), 0.5)
        psi = -math.log(1.0 - lam) - lam
        xbar_prev = s / n if n else 0.0  # plain running mean of x, x̄₀ = 0
        ybar_prev = (n - s) / n if n else 0.0  # the same for y = 1 − x
        lam_sum += lam
        lo_lx += lam * x
        lo_vp += (x - xbar_prev) ** 2 * psi
        hi_lx += lam * (1.0 - x)
        hi_vp += ((1.0 - x) - ybar_prev) ** 2 * psi
        s += x
        mu_hat = (0.5 + s) / (t + 1)  # μ̂_t includes x_t
        q += (x - mu_hat) ** 2
        lo = min(1.0, max(0.0, (lo_lx - log_term - lo_vp) / lam_sum))
        hi = min(1.0, max(0.0, (hi_lx - log_term - hi_vp) / lam_sum))
        out.append((2.0 * lo - 1.0, 2.0 * (1.0 - hi) - 1.0))
    return out


def _paired_stream(rng: np.random.Generator, n: int, b: float, c: float) -> np.ndarray:
    u = rng.random(n)
    return np.where(u < b, 1.0, np.where(u < b + c, -1.0, 0.0))


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_update_equals_scalar_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 1500
    d = (
        _paired_stream(rng, n, 0.15, 0.1)
        if seed % 2
        else np.clip(rng.normal(0.1, 0.4, n), -1.0, 1.0)
    )
    alpha = [0.05, 0.01, 0.2][seed % 3]
    ref = reference_eb(d, alpha)
    lo, up = eb_path(d, alpha)
    np.testing.assert_allclose(lo, [r[0] for r in ref], rtol=0, atol=1e-9)
    np.testing.assert_allclose(up, [r[1] for r in ref], rtol=0, atol=1e-9)

    state = EBState(alpha=alpha)
    cuts = np.sort(rng.choice(np.arange(1, n), size=20, replace=False))
    for chunk_end, chunk in zip(np.append(cuts, n), np.split(d, cuts), strict=True):
        state.update(chunk)
        got = state.interval()
        assert got == pytest.approx(ref[chunk_end - 1], abs=1e-9)
    assert state.n == n


def test_single_observation_updates_equal_one_batch() -> None:
    rng = np.random.default_rng(11)
    d = _paired_stream(rng, 400, 0.2, 0.1)
    one, many = EBState(alpha=ALPHA), EBState(alpha=ALPHA)
    one.update(d)
    for v in d:
        many.update(np.array([v]))
    assert many.interval() == pytest.approx(one.interval(), abs=1e-12)
    assert many.n == one.n


def test_interval_contains_estimate_and_narrows() -> None:
    rng = np.random.default_rng(3)
    d = _paired_stream(rng, 20_000, 0.3, 0.2)
    state = EBState(alpha=ALPHA)
    assert state.interval() == (-1.0, 1.0)
    widths = []
    for chunk in np.split(d, 10):
        state.update(chunk)
        lo, up = state.interval()
        widths.append(up - lo)
        assert lo <= state.sum_x * 2 / state.n - 1 <= up
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < 0.1


def test_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        EBState(alpha=ALPHA).update(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="alpha"):
        EBState(alpha=1.5)


def test_merge_adds_per_side_sums_and_alpha_must_match() -> None:
    rng = np.random.default_rng(5)
    a, b = EBState(alpha=ALPHA), EBState(alpha=ALPHA)
    a.update(_paired_stream(rng, 300, 0.2, 0.1))
    b.update(_paired_stream(rng, 500, 0.2, 0.1))
    m = a.merge(b)
    assert m.n == 800
    assert m.lo.lam == a.lo.lam + b.lo.lam
    assert m.hi.v_psi == a.hi.v_psi + b.hi.v_psi
    assert m.interval() == a.merge(b).interval()
    assert EBState(alpha=ALPHA).merge(a).interval() == a.interval()
    with pytest.raises(ValueError, match="alpha"):
        a.merge(EBState(alpha=0.1))
    assert EBState.from_dict(m.to_dict()) == m


def test_merged_partitions_cover_under_repeated_reads() -> None:
    """4 partitions, each with its own bet recursion, merged and read after every batch.

    300 runs × 40 reads, true Δ = 0.1. The CS promises miscoverage ≤ α = 0.05 at any time;
    we allow α + 3 binomial standard deviations (0.05 + 3·√(0.05·0.95/300) ≈ 0.088).
    """
    rng = np.random.default_rng(17)
    runs, batches, batch = 300, 40, 50
    true_delta = 0.2 - 0.1
    misses = 0
    for _ in range(runs):
        parts = [EBState(alpha=ALPHA) for _ in range(4)]
        missed = False
        for _ in range(batches):
            k = int(rng.integers(4))
            parts[k].update(_paired_stream(rng, batch, 0.2, 0.1))
            merged = parts[0].merge(parts[1]).merge(parts[2]).merge(parts[3])
            lo, up = merged.interval()
            missed = missed or not lo <= true_delta <= up
        misses += missed
    assert misses / runs <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)


def test_aa_false_promotions_bounded_under_peeking() -> None:
    """A/A: production and candidate equally accurate (discordant 10% each way).

    2000 runs × 3000 labels, read after every 25 labels (120 looks). A false promotion is
    L_t > 0 at any look; PrPl-EB gives it probability ≤ α/2 = 0.025 (one side of the CS). The
    test allows α/2 + 3 binomial standard deviations: 0.025 + 3·√(0.025·0.975/2000) ≈ 0.035.
    """
    rng = np.random.default_rng(23)
    runs, labels = 2000, 3000
    looks = np.arange(24, labels, 25)
    hits = 0
    for _ in range(4):
        d = np.stack([_paired_stream(rng, labels, 0.1, 0.1) for _ in range(runs // 4)])
        lo, _ = eb_path(d, ALPHA)
        hits += int(np.sum((lo[:, looks] > 0).any(axis=1)))
    rate = hits / runs
    assert rate <= ALPHA / 2 + 3 * math.sqrt(ALPHA / 2 * (1 - ALPHA / 2) / runs)


def test_naive_repeated_z_test_inflates_false_promotions() -> None:
    """The contrast: the same A/A streams judged by a z-test (z > 1.96, nominal 2.5% one
    side) at every one of 120 looks promote far more often than 2.5%, and far more often than
    the CS; this is why the verdict uses confidence sequences."""
    rng = np.random.default_rng(29)
    runs, labels = 1000, 3000
    looks = np.arange(24, labels, 25)
    d = np.stack([_paired_stream(rng, labels, 0.1, 0.1) for _ in range(runs)])
    t = np.arange(1, labels + 1)
    mean = np.cumsum(d, axis=1) / t
    var = (np.cumsum(d * d, axis=1) - t * mean**2) / np.maximum(t - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero prefixes: 0/0 → NaN
        z = mean[:, looks] / np.sqrt(var[:, looks] / t[looks])
    naive = float(np.mean((z > 1.96).any(axis=1)))
    lo, _ = eb_path(d, ALPHA)
    cs = float(np.mean((lo[:, looks] > 0).any(axis=1)))
    assert naive > 0.1
    assert naive > 4 * max(cs, 0.01)


def test_better_candidate_is_promoted_within_budget() -> None:
    """Production accuracy 0.80, candidate 0.85 (+5 pp; discordant: 8% only the candidate
    right, 3% only production right). With α split three ways (0.05/3, the default policy's
    Bonferroni share), L_t > 0 within 2000 labels in at least 90% of 500 runs (measured: the
    90th percentile is about 1200 labels)."""
    rng = np.random.default_rng(31)
    runs, labels = 500, 2000
    prod = rng.random((runs, labels)) < 0.8
    u = rng.random((runs, labels))
    cand = np.where(prod, u >= 0.03 / 0.8, u < 0.08 / 0.2)
    d = cand.astype(np.float64) - prod.astype(np.float64)
    lo, _ = eb_path(d, ALPHA / 3)
    assert np.mean((lo > 0).any(axis=1)) >= 0.9


# --- asymptotic CS -------------------------------------------------------------------------


def reference_asym(x: np.ndarray, alpha: float, t_opt: float) -> tuple[float, float]:
    """Waudby-Smith et al. (2021), from the formula with scipy's Lambert W."""
    t = len(x)
    a2 = alpha**2
    rho2 = (-lambertw(-a2 * np.exp(a2 - 1), k=-1).real - 1) / t_opt
    sd = np.std(x)
    r = sd * np.sqrt(2 * (t * rho2 + 1) / (t**2 * rho2) * np.log(np.sqrt(t * rho2 + 1) / alpha))
    return float(np.mean(x) - r), float(np.mean(x) + r)


@pytest.mark.parametrize("seed", range(5))
def test_asymptotic_cs_matches_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0, 1, 5000) - rng.lognormal(0, 1, 5000)
    state = AsymState()
    for chunk in np.array_split(x, 13):
        state.update(chunk)
    for alpha, t_opt in [(0.05, 1000), (0.01, 200), (0.0167, 5000)]:
        got = state.interval(alpha, t_opt)
        assert got == pytest.approx(reference_asym(x, alpha, t_opt), rel=1e-9, abs=1e-12)
    assert AsymState().interval(0.05, 100) == (-math.inf, math.inf)


def test_asymptotic_merge_is_chan_exact() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(3, 2, 10_000)
    parts = np.array_split(x, [100, 2500, 2501, 7000])
    states = []
    for p in parts:
        s = AsymState()
        s.update(p)
        states.append(s)
    merged = AsymState()
    for s in states:
        merged = merged.merge(s)
    assert merged.n == x.size
    assert merged.mean == pytest.approx(np.mean(x), rel=1e-12)
    assert merged.m2 == pytest.approx(np.sum((x - x.mean()) ** 2), rel=1e-12)
    assert AsymState.from_dict(merged.to_dict()) == merged


def test_rho2_close_to_documented_approximation() -> None:
    for alpha in (0.01, 0.05, 0.1):
        approx = (2 * math.log(1 / alpha) + math.log(1 + 2 * math.log(1 / alpha))) / 1000
        assert asymptotic_rho2(alpha, 1000) == pytest.approx(approx, rel=0.05)


def test_asymptotic_cs_coverage_on_heavy_tails() -> None:
    """Lognormal differences (true mean 0), 400 runs × 4000, read after every 20 observations
    from n = 200 (burn-in). The guarantee is asymptotic; we check miscoverage ≤ 0.1."""
    rng = np.random.default_rng(41)
    runs, n = 400, 4000
    x = rng.lognormal(0, 1, (runs, n)) - rng.lognormal(0, 1, (runs, n))
    t = np.arange(1, n + 1)
    mean = np.cumsum(x, axis=1) / t
    sd = np.sqrt(np.maximum(np.cumsum(x * x, axis=1) / t - mean**2, 0))
    rho2 = asymptotic_rho2(ALPHA, 1000)
    a = t * rho2 + 1
    r = sd * np.sqrt(2 * a / (t**2 * rho2) * np.log(np.sqrt(a) / ALPHA))
    looks = np.arange(199, n, 20)
    miss = (np.abs(mean[:, looks]) > r[:, looks]).any(axis=1)
    assert miss.mean() <= 0.1


def test_lambertw_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    zs = np.concatenate(
        [
            -np.exp(-1) * (1 - 10 ** rng.uniform(-8, 0, 500)),
            -(10 ** rng.uniform(-300, -0.6, 500)),
            [-1e-300, -0.25, -0.3],
        ]
    )
    for z in zs:
        expected = lambertw(z, k=-1).real
        assert lambertw_m1(float(z)) == pytest.approx(expected, rel=1e-9), z
    assert lambertw_m1(-math.exp(-1)) == pytest.approx(-1.0, abs=1e-7)
    with pytest.raises(ValueError):
        lambertw_m1(0.1)


def test_running_intersection() -> None:
    lo, up = running_intersection([-0.5, -0.2, -0.4, 0.1], [0.5, 0.6, 0.3, 0.4])
    assert lo.tolist() == [-0.5, -0.2, -0.2, 0.1]
    assert up.tolist() == [0.5, 0.5, 0.3, 0.3]
    inter = Intersection()
    assert inter.update(-0.5, 0.5) == (-0.5, 0.5)
    assert inter.update(-0.6, 0.2) == (-0.5, 0.2)
    assert inter.update(0.3, 0.4) == (0.3, 0.4)  # empty intersection: keep the new read
