"""Fixed-horizon paired tests for offline audits and cross-checks (not anytime-valid).

McNemar (exact, mid-p, one-sided superiority mid-p), the Tango/Nam score test for a margin, the
paired t-test and the Wilcoxon signed-rank test (normal approximation; needs every difference,
so it is not mergeable). The special functions are implemented here so that the runtime needs
only numpy.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

Alternative = Literal["two-sided", "greater", "less"]

_CF_EPS = 1e-16
_CF_TINY = 1e-300
_CF_MAX_ITER = 100_000


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
    h = d
    for m in range(1, _CF_MAX_ITER):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _CF_TINY else _CF_TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _CF_TINY else _CF_TINY
        step = d * c
        h *= step
        if abs(step - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """Regularised incomplete beta ``I_x(a, b)``; pass ``y = 1 − x`` when known exactly."""
    if a <= 0.0 or b <= 0.0:
        raise ValueError("betainc needs a > 0 and b > 0")
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, y) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t cumulative distribution function."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    t2 = t * t
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))
    return 1.0 - tail if t > 0 else tail


def t_sf(t: float, df: float) -> float:
    """Student's t survival function ``P(T > t)``."""
    return t_cdf(-t, df)


def norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def binom_cdf_half(k: int, m: int) -> float:
    """``P(X ≤ k)`` for ``X ~ Bin(m, ½)``."""
    if k < 0:
        return 0.0
    if k >= m:
        return 1.0
    return betainc(float(m - k), float(k + 1), 0.5, 0.5)


def binom_pmf_half(k: int, m: int) -> float:
    """``P(X = k)`` for ``X ~ Bin(m, ½)``."""
    if k < 0 or k > m:
        return 0.0
    return math.exp(
        math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1) - m * math.log(2.0)
    )


def _check_counts(b: int, c: int) -> None:
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value, ``min(1, 2·BinomCDF(min(b, c); b + c, ½))``.

    ``b`` = pairs where only the candidate is right, ``c`` = only production is right.
    """
    _check_counts(b, c)
    return min(1.0, 2.0 * binom_cdf_half(min(b, c), b + c))


def mcnemar_midp(b: int, c: int) -> float:
    """Two-sided mid-p McNemar, ``min(1, 2·BinomCDF(k) − BinomPMF(k))`` with ``k = min(b, c)``."""
    _check_counts(b, c)
    k, m = min(b, c), b + c
    return min(1.0, 2.0 * binom_cdf_half(k, m) - binom_pmf_half(k, m))


def mcnemar_superiority_midp(b: int, c: int) -> float:
    """One-sided mid-p for "candidate better": ``P(X > b) + ½·P(X = b)``, ``X ~ Bin(b+c, ½)``."""
    _check_counts(b, c)
    m = b + c
    return (1.0 - binom_cdf_half(b, m)) + 0.5 * binom_pmf_half(b, m)


def tango_z(b: int, c: int, n: int, delta0: float) -> float:
    """Tango/Nam score statistic for ``H0: p₁₀ − p₀₁ = δ₀`` (restricted MLE of ``p₀₁``).

    Reject ``Δ ≤ δ₀`` in favour of ``Δ > δ₀`` when ``Z > z_{1−α}``. Use ``δ₀ = −δ`` for
    non-inferiority and ``δ₀ = +δ`` for superiority by a margin.
    """
    _check_counts(b, c)
    if n < b + c or n <= 0:
        raise ValueError(f"need n >= b + c > 0, got n={n}, b={b}, c={c}")
    if not -1.0 < delta0 < 1.0:
        raise ValueError(f"delta0 must be in (-1, 1), got {delta0}")
    qa = 2.0 * n
    qb = (2.0 * n - b + c) * delta0 - (b + c)
    qc = -c * delta0 * (1.0 - delta0)
    p01 = (-qb + math.sqrt(qb * qb - 4.0 * qa * qc)) / (2.0 * qa)
    var = n * (2.0 * p01 + delta0 - delta0 * delta0)
    num = b - c - n * delta0
    if var <= 0.0:
        return math.copysign(math.inf, num) if num else 0.0
    return num / math.sqrt(var)


def paired_t(d: npt.ArrayLike) -> tuple[float, float]:
    """Paired t-test on the differences ``d``: ``(t, two-sided p)`` with n − 1 df."""
    arr = np.asarray(d, dtype=np.float64).ravel()
    n = arr.size
    if n < 2:
        return math.nan, math.nan
    mean = float(arr.mean())
    sd = float(arr.std(ddof=1))
    if sd == 0.0:
        if mean == 0.0:
            return math.nan, math.nan
        return math.copysign(math.inf, mean), 0.0
    t = mean / (sd / math.sqrt(n))
    return t, min(1.0, 2.0 * t_sf(abs(t), n - 1.0))


def _average_ranks(a: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float]:
    """Average ranks (1-based) and the tie term ``Σ(t³ − t)`` over groups of equal values."""
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    avg = ends - (counts - 1) / 2.0
    tie = float(np.sum(counts.astype(np.float64) ** 3 - counts))
    return avg[inverse], tie


def wilcoxon(d: npt.ArrayLike, alternative: Alternative = "two-sided") -> tuple[float, float]:
    """Wilcoxon signed-rank test, normal approximation, zeros dropped, tie-corrected, no
    continuity correction (as ``scipy.stats.wilcoxon(method='asymptotic', correction=False)``).

    Returns ``(statistic, p)``: the statistic is ``min(R+, R−)`` for two-sided, else ``R+``.
    Round ``d`` first so float noise does not break ties. For a margin ``δ`` use
    ``wilcoxon(d + δ, 'greater')``.
    """
    arr = np.asarray(d, dtype=np.float64).ravel()
    arr = arr[arr != 0.0]
    n = arr.size
    if n == 0:
        return math.nan, math.nan
    ranks, tie = _average_ranks(np.abs(arr))
    r_plus = float(np.sum(ranks[arr > 0]))
    r_minus = float(np.sum(ranks[arr < 0]))
    mean = n * (n + 1.0) / 4.0
    se = math.sqrt((n * (n + 1.0) * (2.0 * n + 1.0) - tie / 2.0) / 24.0)
    if se == 0.0:
        return (min(r_plus, r_minus) if alternative == "two-sided" else r_plus), math.nan
    z = (r_plus - mean) / se
    if alternative == "two-sided":
        return min(r_plus, r_minus), min(1.0, 2.0 * norm_sf(abs(z)))
    if alternative == "greater":
        return r_plus, norm_sf(z)
    return r_plus, norm_sf(-z)
