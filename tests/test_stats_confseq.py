"""Confidence sequences: the bounded CS against the papers' formulas, its invariants, merging,
and its guarantee by simulation under i.i.d. and non-stationary traffic; the asymptotic CS."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, special
from scipy.special import lambertw

from shadowroute.core.stats.confseq import (
    AsymState,
    asymptotic_rho2,
    best_rho,
    bet_mixture,
    eb_interval,
    eb_path,
    lambertw_m1,
    mixture_bound,
    mixture_bounds,
)

ALPHA = 0.05


def _paired_stream(rng: np.random.Generator, n: int, b: float, c: float) -> np.ndarray:
    u = rng.random(n)
    return np.where(u < b, 1.0, np.where(u < b + c, -1.0, 0.0))


def _binomial_slack(p: float, runs: int) -> float:
    return p + 3 * math.sqrt(p * (1 - p) / runs)


# --- the boundary against the papers' formulas ---------------------------------------------


def reference_mixture_root(v: float, alpha: float, c: float, v_opt: float) -> float:
    """The same discrete mixture, solved independently: scipy's logsumexp and Brent's method
    on ``log Σ w_k exp(λ_k s − ψ_c(λ_k) V) = log(1/α)`` with ψ_c from HRMS (2021), eq. (6)."""
    mix = bet_mixture(c, alpha, v_opt)
    lam = np.asarray(mix.lams)
    psi = (-np.log1p(-c * lam) - c * lam) / c**2 if c > 0 else lam**2 / 2

    def f(s: float) -> float:
        return float(special.logsumexp(mix.log_w + lam * s - psi * v) - math.log(1 / alpha))

    return float(optimize.brentq(f, 0.0, 1e7, xtol=1e-12, rtol=1e-12))


def gamma_exponential_bound(v: float, alpha: float, c: float, v_opt: float) -> float:
    """HRMS (2021) Proposition 9, the gamma-exponential conjugate mixture (as in confseq's
    ``gamma_exponential_mixture_bound``), solved with scipy's regularised incomplete gamma."""
    la = math.log(1 / (2 * alpha))
    rho = v_opt / (2 * la + math.log(1 + 2 * la))
    rc = rho / c**2
    lead = rc * math.log(rc) - special.gammaln(rc) - math.log(special.gammainc(rc, rc))

    def f(s: float) -> float:
        cs, vr = (c * s + v) / c**2, (v + rho) / c**2
        log_m = lead + special.gammaln(vr) + math.log(special.gammainc(vr, cs + rc))
        return float(log_m - vr * math.log(cs + rc) + cs - math.log(1 / alpha))

    return float(optimize.brentq(f, 0.0, 1e7, xtol=1e-10))


def one_sided_normal_mixture_bound(v: float, alpha: float, v_opt: float) -> float:
    """HRMS (2021) Proposition 6, the one-sided normal mixture (a half-normal prior of
    precision ρ over bets; sub-Gaussian, ``c → 0``), as in confseq's ``OneSidedNormalMixture``:
    ``log M = ½·log(4ρ/(V+ρ)) + s²/(2(V+ρ)) + log Φ(s/√(V+ρ))``."""
    rho = best_rho(v_opt, alpha)

    def f(s: float) -> float:
        log_m = 0.5 * math.log(4 * rho / (v + rho)) + s * s / (2 * (v + rho))
        return float(log_m + special.log_ndtr(s / math.sqrt(v + rho)) - math.log(1 / alpha))

    return float(optimize.brentq(f, 0.0, 1e7, xtol=1e-10))


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0083, 0.025, 0.1])
def test_mixture_bound_solves_the_mixture_exactly(c: float, alpha: float) -> None:
    vs = [0.0, 1.0, 10.0, 250.0, 3000.0, 1e5]
    got = mixture_bounds(vs, alpha, bet_mixture(c, alpha))
    for v, g in zip(vs, got, strict=True):
        ref = reference_mixture_root(v, alpha, c, 250.0)
        assert g == pytest.approx(ref, rel=1e-9)
        assert mixture_bound(v, alpha, bet_mixture(c, alpha)) == pytest.approx(ref, rel=1e-9)


def test_mixture_weights_are_a_probability() -> None:
    for c in (0.0, 1.0):
        mix = bet_mixture(c, 0.025)
        assert float(np.exp(mix.log_w).sum()) == pytest.approx(1.0, abs=1e-12)
        assert np.all(mix.lams > 0) and (c == 0 or np.all(mix.lams < 1 / c))


@pytest.mark.parametrize("v", [10.0, 100.0, 250.0, 1000.0, 10_000.0, 100_000.0])
def test_mixture_is_as_tight_as_the_papers_conjugate_mixtures(v: float) -> None:
    """Within 3% of the gamma-exponential mixture (same tuning, c = 1) from V = 100 on, and
    the one-sided normal mixture within 1% when c = 0: the grid costs nothing that matters."""
    alpha = 0.025
    ours = mixture_bound(v, alpha, bet_mixture(1.0, alpha))
    gexp = gamma_exponential_bound(v, alpha, 1.0, 250.0)
    if v >= 100:
        assert ours == pytest.approx(gexp, rel=0.03)
    else:
        assert ours <= gexp * 1.01
    sub_gauss = mixture_bound(v, alpha, bet_mixture(0.0, alpha))
    assert sub_gauss == pytest.approx(one_sided_normal_mixture_bound(v, alpha, 250.0), rel=0.01)


# --- invariants -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([-1.0, 0.0, 1.0]), min_size=1, max_size=400)
    | st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=1, max_size=200),
    st.sampled_from([0.0083, 0.05, 0.3]),
)
def test_interval_always_contains_its_estimate(xs: list[float], alpha: float) -> None:
    d = np.asarray(xs)
    lo, up = eb_interval(d.size, float(d.sum()), float((d * d).sum()), alpha)
    est = float(d.sum()) / d.size
    assert -1.0 <= lo <= est <= up <= 1.0
    plo, pup = eb_path(d, alpha)
    mean = np.cumsum(d) / np.arange(1, d.size + 1)
    assert np.all(plo <= mean + 1e-12) and np.all(mean <= pup + 1e-12)


def test_rate_interval_contains_its_estimate_and_tightens_with_disagreements_only() -> None:
    lo, up = eb_interval(5000, 4990.0, 4990.0, 0.05, lo=0.0, hi=1.0, centre=1.0)
    assert lo <= 0.998 <= up <= 1.0
    assert up - lo < 0.01
    lo, up = eb_interval(5000, 2500.0, 2500.0, 0.05, lo=0.0, hi=1.0, centre=1.0)
    assert lo <= 0.5 <= up


def test_order_never_changes_the_interval() -> None:
    """The interval is a function of (t, Σx, Σx²): any permutation of the pairs (a sorted join,
    another partition interleaving) gives the same interval, to the last bit."""
    rng = np.random.default_rng(5)
    d = _paired_stream(rng, 4000, 0.12, 0.08)
    base = eb_path(d, ALPHA)
    for _ in range(5):
        perm = rng.permutation(d)
        lo, up = eb_path(perm, ALPHA)
        assert (lo[-1], up[-1]) == (base[0][-1], base[1][-1])
    assert eb_interval(d.size, float(d.sum()), float((d * d).sum()), ALPHA) == pytest.approx(
        (base[0][-1], base[1][-1]), abs=1e-9
    )


def test_no_observation_gives_the_whole_range_and_bad_input_is_refused() -> None:
    assert eb_interval(0, 0.0, 0.0, ALPHA) == (-1.0, 1.0)
    with pytest.raises(ValueError):
        eb_interval(3, 0.0, 0.0, 1.5)
    with pytest.raises(ValueError):
        eb_interval(3, 0.0, 0.0, ALPHA, lo=0.0, hi=1.0, centre=2.0)
    with pytest.raises(ValueError):
        eb_path(np.array([0.5, 1.5]), ALPHA)
    with pytest.raises(ValueError):
        mixture_bounds([-1.0], ALPHA, bet_mixture(1.0, ALPHA))


# --- the guarantee, by simulation -----------------------------------------------------------


def _misses(d: np.ndarray, mu: np.ndarray, looks: np.ndarray, alpha: float) -> float:
    """Share of runs whose CS ever misses the running average of the conditional means."""
    lo, up = eb_path(d, alpha)
    target = np.cumsum(mu, axis=-1) / np.arange(1, mu.shape[-1] + 1)
    miss = (lo[:, looks] > target[:, looks] + 1e-12) | (up[:, looks] < target[:, looks] - 1e-12)
    return float(miss.any(axis=1).mean())


def test_aa_false_promotions_bounded_under_peeking() -> None:
    """A/A: production and candidate equally accurate (discordant 10% each way).

    2000 runs × 3000 labels, read after every 25 labels (120 looks). A false promotion is
    L_t > 0 at any look; the CS gives it probability ≤ α/2 = 0.025 (one side). We allow
    α/2 + 3 binomial standard deviations."""
    rng = np.random.default_rng(23)
    runs, labels = 2000, 3000
    looks = np.arange(24, labels, 25)
    d = np.stack([_paired_stream(rng, labels, 0.1, 0.1) for _ in range(runs)])
    lo, _ = eb_path(d, ALPHA)
    rate = float(np.mean((lo[:, looks] > 0).any(axis=1)))
    assert rate <= _binomial_slack(ALPHA / 2, runs)


def _better_then_worse(rng: np.random.Generator, runs: int, n: int) -> tuple[np.ndarray, ...]:
    """The issue's case: production 0.85 accurate; candidate 0.99 over the first third and
    0.70 after (paired mean +0.14, then −0.15; −0.053 on average), independent errors."""
    first = n // 3
    p_cand = np.where(np.arange(n) < first, 0.99, 0.70)
    prod = rng.random((runs, n)) < 0.85
    cand = rng.random((runs, n)) < p_cand
    d = cand.astype(np.float64) - prod.astype(np.float64)
    mu = np.broadcast_to(p_cand - 0.85, d.shape)
    return d, mu


def test_better_then_worse_is_covered_and_ends_rejected() -> None:
    """Non-stationary: the CS covers the running average of the conditional means at every
    look (miscoverage ≤ α), and at the end it excludes 0 from above in nearly every run, with
    the estimate inside."""
    rng = np.random.default_rng(7)
    runs, n = 1000, 9000
    d, mu = _better_then_worse(rng, runs, n)
    looks = np.arange(49, n, 50)
    assert _misses(d, mu, looks, ALPHA) <= _binomial_slack(ALPHA, runs)
    lo, up = eb_path(d, ALPHA)
    est = d.mean(axis=1)
    assert np.all((lo[:, -1] <= est) & (est <= up[:, -1]))
    assert np.mean(up[:, -1] < 0) > 0.95


def test_daily_cycle_and_sorted_ids_are_covered() -> None:
    """A daily cycle (the candidate better at some hours, worse at others, zero on average)
    and outcomes correlated with request ids (each batch fed sorted by id, as a sorted join
    does): the CS covers the running average of the conditional means at every look."""
    rng = np.random.default_rng(11)
    runs, n, day = 1000, 6000, 1500
    phase = 2 * math.pi * np.arange(n) / day
    p_cand = 0.85 + 0.08 * np.sin(phase)
    prod = rng.random((runs, n)) < 0.85
    cand = rng.random((runs, n)) < p_cand
    d = cand.astype(np.float64) - prod.astype(np.float64)
    mu = np.broadcast_to(p_cand - 0.85, d.shape)
    looks = np.arange(49, n, 50)
    assert _misses(d, mu, looks, ALPHA) <= _binomial_slack(ALPHA, runs)
    # Sorted ids: within each batch of 200 the pairs arrive ordered by outcome.
    batches = d.reshape(runs, -1, 200)
    sorted_d = np.sort(batches, axis=-1).reshape(runs, n)
    ends = np.arange(199, n, 200)
    lo_a, up_a = eb_path(d, ALPHA)
    lo_b, up_b = eb_path(sorted_d, ALPHA)
    np.testing.assert_array_equal(lo_a[:, ends], lo_b[:, ends])
    np.testing.assert_array_equal(up_a[:, ends], up_b[:, ends])


def test_merged_partitions_cover_under_repeated_reads() -> None:
    """4 partitions read merged after every batch: the merged CS is the CS of the union, so
    its coverage is the union's (300 runs × 40 reads, true Δ = 0.1)."""
    rng = np.random.default_rng(17)
    runs, batches, batch = 300, 40, 50
    true_delta = 0.2 - 0.1
    misses = 0
    for _ in range(runs):
        sums = np.zeros((4, 3))
        missed = False
        for _ in range(batches):
            k = int(rng.integers(4))
            d = _paired_stream(rng, batch, 0.2, 0.1)
            sums[k] += (d.size, d.sum(), (d * d).sum())
            n, s, q = sums.sum(axis=0)
            lo, up = eb_interval(int(n), float(s), float(q), ALPHA)
            missed = missed or not lo <= true_delta <= up
        misses += missed
    assert misses / runs <= _binomial_slack(ALPHA, runs)


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
    Bonferroni share), L_t > 0 within 2000 labels in at least 90% of 500 runs."""
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
