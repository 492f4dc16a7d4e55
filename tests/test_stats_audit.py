"""Fixed-horizon audit tests against scipy and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, special, stats
from statsmodels.stats.contingency_tables import mcnemar

from shadowroute.core.stats.audit import (
    betainc,
    binom_cdf_half,
    binom_pmf_half,
    mcnemar_exact,
    mcnemar_midp,
    mcnemar_superiority_midp,
    paired_t,
    t_cdf,
    tango_z,
    wilcoxon,
)


def _counts(seed: int, size: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 40, size=(size, 2))
    large = rng.integers(0, 3000, size=(size // 4, 2))
    edge = np.array([[0, 0], [0, 1], [5, 5], [1, 0], [0, 25], [2000, 2100]])
    return [(int(b), int(c)) for b, c in np.concatenate([small, large, edge])]


def test_mcnemar_exact_matches_statsmodels_and_binomtest() -> None:
    for b, c in _counts(1, 400):
        got = mcnemar_exact(b, c)
        table = np.array([[7, b], [c, 11]])
        assert got == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9, abs=1e-12)
        if b + c:
            oracle = stats.binomtest(min(b, c), b + c, 0.5).pvalue
            assert got == pytest.approx(oracle, rel=1e-9, abs=1e-12)


def test_binomial_helpers_match_scipy() -> None:
    for b, c in _counts(2, 200):
        m = b + c
        for k in (b, c, 0, m):
            assert binom_cdf_half(k, m) == pytest.approx(
                stats.binom.cdf(k, m, 0.5), rel=1e-9, abs=1e-12
            )
            assert binom_pmf_half(k, m) == pytest.approx(
                stats.binom.pmf(k, m, 0.5), rel=1e-9, abs=1e-300
            )


def test_mcnemar_midp_by_hand() -> None:
    for b, c in _counts(3, 300):
        k, m = min(b, c), b + c
        expected = min(1.0, 2 * stats.binom.cdf(k, m, 0.5) - stats.binom.pmf(k, m, 0.5))
        assert mcnemar_midp(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert mcnemar_midp(b, c) <= mcnemar_exact(b, c)
        one_sided = stats.binom.sf(b, m, 0.5) + 0.5 * stats.binom.pmf(b, m, 0.5)
        assert mcnemar_superiority_midp(b, c) == pytest.approx(one_sided, rel=1e-9, abs=1e-12)


def test_superiority_midp_direction() -> None:
    assert mcnemar_superiority_midp(40, 10) < 0.001
    assert mcnemar_superiority_midp(10, 40) > 0.999
    assert mcnemar_superiority_midp(20, 20) == pytest.approx(0.5)


def test_tango_reduces_to_mcnemar_chi2_at_zero_margin() -> None:
    for b, c in _counts(4, 200):
        if b + c == 0:
            continue
        chi2 = mcnemar(np.array([[50, b], [c, 60]]), exact=False, correction=False).statistic
        assert tango_z(b, c, b + c + 110, 0.0) ** 2 == pytest.approx(chi2, rel=1e-9)


@pytest.mark.parametrize("delta0", [-0.1, -0.02, 0.03, 0.1])
def test_tango_uses_the_constrained_mle(delta0: float) -> None:
    """Z recomputed from a numerical maximisation of the restricted likelihood."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(200, 3000))
        b, c = (int(v) for v in rng.integers(1, n // 4, size=2))

        def nll(p01: float, b: int = b, c: int = c, n: int = n) -> float:
            return -(
                b * math.log(p01 + delta0)
                + c * math.log(p01)
                + (n - b - c) * math.log(1 - 2 * p01 - delta0)
            )

        lo = max(0.0, -delta0) + 1e-12
        hi = (1 - delta0) / 2 - 1e-12
        p01 = optimize.minimize_scalar(
            nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}
        ).x
        z = (b - c - n * delta0) / math.sqrt(n * (2 * p01 + delta0 - delta0**2))
        assert tango_z(b, c, n, delta0) == pytest.approx(z, rel=1e-6)


def test_betainc_and_t_cdf_match_scipy() -> None:
    rng = np.random.default_rng(6)
    for _ in range(2000):
        a, b = 10 ** rng.uniform(-1, 3.5, size=2)
        x = rng.random()
        assert betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-9, abs=1e-13)
    ts = np.concatenate([rng.normal(0, 3, 1500), rng.uniform(-60, 60, 500), [0.0, 1e-12]])
    dfs = np.concatenate([10 ** rng.uniform(0, 4, 1500), rng.integers(1, 30, 502)])
    for t, df in zip(ts, dfs, strict=True):
        assert t_cdf(float(t), float(df)) == pytest.approx(stats.t.cdf(t, df), rel=1e-9, abs=1e-13)


def test_paired_t_matches_ttest_rel() -> None:
    rng = np.random.default_rng(7)
    for i in range(300):
        n = int(rng.integers(3, 2000))
        prod = rng.gamma(2, 1, n)
        cand = prod + rng.normal(rng.normal(0, 0.2), 1 + i % 3, n)
        t, p = paired_t(prod - cand)
        ref = stats.ttest_rel(prod, cand)
        assert t == pytest.approx(ref.statistic, rel=1e-9)
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-13)
    assert all(math.isnan(v) for v in paired_t([1.0]))


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_wilcoxon_matches_scipy(alternative: str) -> None:
    rng = np.random.default_rng(8)
    for _ in range(150):
        n = int(rng.integers(5, 800))
        # rounded, so there are ties and exact zeros
        d = np.round(rng.normal(rng.normal(0, 0.3), 1, n), int(rng.integers(0, 3)))
        if not np.any(d != 0):
            continue
        stat, p = wilcoxon(d, alternative)  # type: ignore[arg-type]
        ref = stats.wilcoxon(
            d,
            zero_method="wilcox",
            correction=False,
            method="asymptotic",
            alternative=alternative,
        )
        assert stat == pytest.approx(ref.statistic, rel=1e-12)
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-13)


def test_wilcoxon_margin_shift() -> None:
    rng = np.random.default_rng(9)
    d = np.round(rng.normal(-0.01, 0.2, 1000), 3)
    _, p_plain = wilcoxon(d, "greater")
    _, p_margin = wilcoxon(np.round(d + 0.05, 3), "greater")
    assert p_margin < 0.01 < p_plain
