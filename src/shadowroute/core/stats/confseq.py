"""Anytime-valid confidence sequences (CS) as mergeable states.

- ``EBState``: predictable-plug-in empirical-Bernstein CS (PrPl-EB, Waudby-Smith & Ramdas,
  JRSS-B 2023) for the mean of a paired difference ``d ∈ [−1, 1]`` (or of a rate
  ``x ∈ [0, 1]``). Exact, time-uniform coverage for bounded data. Partitions each run their own
  bet recursion; merging adds the per-side sums, which keeps a valid supermartingale.
- ``AsymState``: the asymptotic CS of Waudby-Smith et al. (2021) for unbounded means, from
  ``(n, mean, M2)`` merged with Chan's formula. Valid asymptotically; use a burn-in.
- ``Intersection``: the running intersection ``[max L_s, min U_s]`` over successive reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]

_TRUNCATION = 0.5


@dataclass
class _Side:
    """The running sums of one one-sided PrPl-EB bound."""

    lam: float = 0.0
    lam_x: float = 0.0
    v_psi: float = 0.0

    def lower(self, log_term: float) -> float:
        if self.lam <= 0.0:
            return 0.0
        return min(1.0, max(0.0, (self.lam_x - log_term - self.v_psi) / self.lam))


def _check_unit(x: FloatArray) -> None:
    if x.size and not (np.all(x >= 0.0) and np.all(x <= 1.0)):
        raise ValueError("EBState needs observations in [0, 1] (paired differences in [-1, 1])")


def eb_cumulative(
    x: FloatArray, alpha: float, n0: int = 0, sum0: float = 0.0, sq0: float = 0.0
) -> dict[str, FloatArray]:
    """Cumulative PrPl-EB sums along the last axis of ``x ∈ [0, 1]``.

    ``(n0, sum0, sq0)`` is the recursion state before ``x`` (count, Σx, Σ(x_i − μ̂_i)²); with
    ``n0 = 0`` leading axes are independent streams. Returns the running totals ``lam``,
    ``lo_lam_x``, ``lo_v_psi`` (bound on ``x``), ``hi_lam_x``, ``hi_v_psi`` (bound on ``1 − x``),
    ``n``, ``sum`` and ``sq`` after each observation (without the pre-existing side sums).
    """
    m = x.shape[-1]
    t = n0 + np.arange(1, m + 1, dtype=np.float64)
    s_t = sum0 + np.cumsum(x, axis=-1)
    mu_hat = (0.5 + s_t) / (t + 1.0)
    sq_t = sq0 + np.cumsum((x - mu_hat) ** 2, axis=-1)
    var_t = (0.25 + sq_t) / (t + 1.0)
    var_prev = np.concatenate(
        [np.full((*x.shape[:-1], 1), (0.25 + sq0) / (n0 + 1.0)), var_t[..., :-1]], axis=-1
    )
    log_term = math.log(2.0 / alpha)
    lam = np.minimum(np.sqrt(2.0 * log_term / (var_prev * t * np.log1p(t))), _TRUNCATION)
    s_prev = np.concatenate([np.full((*x.shape[:-1], 1), sum0), s_t[..., :-1]], axis=-1)
    mean_prev = np.where(t > 1.0, s_prev / np.maximum(t - 1.0, 1.0), 0.0)
    psi = -np.log1p(-lam) - lam
    v_lo = (x - mean_prev) ** 2
    # For the bound on 1 − x the plain running mean is 1 − x̄ once any data exist, else 0.
    v_hi = np.where(t > 1.0, v_lo, (1.0 - x) ** 2)
    return {
        "lam": np.cumsum(lam, axis=-1),
        "lo_lam_x": np.cumsum(lam * x, axis=-1),
        "lo_v_psi": np.cumsum(v_lo * psi, axis=-1),
        "hi_lam_x": np.cumsum(lam * (1.0 - x), axis=-1),
        "hi_v_psi": np.cumsum(v_hi * psi, axis=-1),
        "n": t,
        "sum": s_t,
        "sq": sq_t,
    }


def eb_path(d: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    """The PrPl-EB CS for ``Δ = E[d]`` after every observation of ``d ∈ [−1, 1]``.

    Works along the last axis, so a 2-D array is many independent streams (simulation, audit).
    """
    x = (np.asarray(d, dtype=np.float64) + 1.0) / 2.0
    _check_unit(x)
    c = eb_cumulative(x, alpha)
    log_term = math.log(2.0 / alpha)
    lam = c["lam"]
    safe = np.where(lam > 0.0, lam, 1.0)
    lo = np.where(lam > 0.0, (c["lo_lam_x"] - log_term - c["lo_v_psi"]) / safe, 0.0)
    hi = np.where(lam > 0.0, (c["hi_lam_x"] - log_term - c["hi_v_psi"]) / safe, 0.0)
    lo = np.clip(lo, 0.0, 1.0)
    up = 1.0 - np.clip(hi, 0.0, 1.0)
    return 2.0 * lo - 1.0, 2.0 * up - 1.0


@dataclass
class EBState:
    """Mergeable PrPl-EB state for one mean, at a fixed ``alpha`` (α/2 per side).

    ``update(d)`` takes paired differences in [−1, 1] (``x = (d + 1)/2``); ``update_unit(x)``
    takes a rate in [0, 1]. ``interval()`` is on the Δ scale (``Δ = 2μ − 1``),
    ``unit_interval()`` on the μ scale.
    """

    alpha: float = 0.05
    n: int = 0
    sum_x: float = 0.0
    sq_dev: float = 0.0
    lo: _Side = field(default_factory=_Side)
    hi: _Side = field(default_factory=_Side)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def update(self, d: npt.ArrayLike) -> None:
        self.update_unit((np.asarray(d, dtype=np.float64).ravel() + 1.0) / 2.0)

    def update_unit(self, x: npt.ArrayLike) -> None:
        arr = np.asarray(x, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        _check_unit(arr)
        c = eb_cumulative(arr, self.alpha, self.n, self.sum_x, self.sq_dev)
        lam = float(c["lam"][-1])
        self.lo = _Side(
            self.lo.lam + lam,
            self.lo.lam_x + float(c["lo_lam_x"][-1]),
            self.lo.v_psi + float(c["lo_v_psi"][-1]),
        )
        self.hi = _Side(
            self.hi.lam + lam,
            self.hi.lam_x + float(c["hi_lam_x"][-1]),
            self.hi.v_psi + float(c["hi_v_psi"][-1]),
        )
        self.n += arr.size
        self.sum_x = float(c["sum"][-1])
        self.sq_dev = float(c["sq"][-1])

    def merge(self, other: EBState) -> EBState:
        if other.alpha != self.alpha:
            raise ValueError(f"cannot merge EB states with alpha {self.alpha} and {other.alpha}")
        return EBState(
            alpha=self.alpha,
            n=self.n + other.n,
            sum_x=self.sum_x + other.sum_x,
            sq_dev=self.sq_dev + other.sq_dev,
            lo=_Side(
                self.lo.lam + other.lo.lam,
                self.lo.lam_x + other.lo.lam_x,
                self.lo.v_psi + other.lo.v_psi,
            ),
            hi=_Side(
                self.hi.lam + other.hi.lam,
                self.hi.lam_x + other.hi.lam_x,
                self.hi.v_psi + other.hi.v_psi,
            ),
        )

    def unit_interval(self) -> tuple[float, float]:
        log_term = math.log(2.0 / self.alpha)
        return self.lo.lower(log_term), 1.0 - self.hi.lower(log_term)

    def interval(self) -> tuple[float, float]:
        lo, up = self.unit_interval()
        return 2.0 * lo - 1.0, 2.0 * up - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "n": self.n,
            "sum_x": self.sum_x,
            "sq_dev": self.sq_dev,
            "lo": [self.lo.lam, self.lo.lam_x, self.lo.v_psi],
            "hi": [self.hi.lam, self.hi.lam_x, self.hi.v_psi],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EBState:
        return cls(
            alpha=float(data["alpha"]),
            n=int(data["n"]),
            sum_x=float(data["sum_x"]),
            sq_dev=float(data["sq_dev"]),
            lo=_Side(*(float(v) for v in data["lo"])),
            hi=_Side(*(float(v) for v in data["hi"])),
        )


def lambertw_m1(z: float) -> float:
    """The lower real branch ``W₋₁(z)`` for ``z ∈ [−1/e, 0)``, by Halley iteration."""
    if not -1.0 / math.e <= z < 0.0:
        if -1.0 / math.e - 1e-15 <= z < -1.0 / math.e:
            return -1.0
        raise ValueError(f"W_-1 is real only on [-1/e, 0), got {z}")
    branch = 2.0 * (math.e * z + 1.0)
    if branch < 1e-12:
        return -1.0 - math.sqrt(max(branch, 0.0))
    if z < -0.25:
        p = -math.sqrt(branch)
        w = -1.0 + p - p * p / 3.0 + 11.0 / 72.0 * p**3
    else:
        l1 = math.log(-z)
        l2 = math.log(-l1)
        w = l1 - l2 + l2 / l1
    for _ in range(100):
        ew = math.exp(w)
        f = w * ew - z
        step = f / (ew * (w + 1.0) - (w + 2.0) * f / (2.0 * w + 2.0))
        w -= step
        if abs(step) <= 1e-15 * abs(w):
            break
    return w


def asymptotic_rho2(alpha: float, t_opt: float) -> float:
    """The mixing ``ρ²`` that makes the asymptotic CS tightest at ``n = t_opt``."""
    a2 = alpha * alpha
    return (-lambertw_m1(-a2 * math.exp(a2 - 1.0)) - 1.0) / t_opt


def asymptotic_radius(n: int, sd: float, alpha: float, t_opt: float) -> float:
    """Half-width ``σ̂·√(2(nρ²+1)/(n²ρ²)·log(√(nρ²+1)/α))`` of the asymptotic CS."""
    rho2 = asymptotic_rho2(alpha, t_opt)
    a = n * rho2 + 1.0
    return sd * math.sqrt(2.0 * a / (n * n * rho2) * math.log(math.sqrt(a) / alpha))


@dataclass
class AsymState:
    """Mergeable ``(n, mean, M2)`` for the asymptotic CS of an unbounded mean."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, x: npt.ArrayLike) -> None:
        arr = np.asarray(x, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if not np.all(np.isfinite(arr)):
            raise ValueError("AsymState needs finite observations")
        mean = float(arr.mean())
        batch = AsymState(int(arr.size), mean, float(np.sum((arr - mean) ** 2)))
        merged = self.merge(batch)
        self.n, self.mean, self.m2 = merged.n, merged.mean, merged.m2

    def merge(self, other: AsymState) -> AsymState:
        if other.n == 0:
            return AsymState(self.n, self.mean, self.m2)
        if self.n == 0:
            return AsymState(other.n, other.mean, other.m2)
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / n
        return AsymState(n, mean, m2)

    @property
    def sd(self) -> float:
        """The plug-in standard deviation ``√(M2/n)``."""
        return math.sqrt(self.m2 / self.n) if self.n else math.nan

    def interval(self, alpha: float, t_opt: float) -> tuple[float, float]:
        if self.n < 2:
            return -math.inf, math.inf
        r = asymptotic_radius(self.n, self.sd, alpha, t_opt)
        return self.mean - r, self.mean + r

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AsymState:
        return cls(int(data["n"]), float(data["mean"]), float(data["m2"]))


def running_intersection(
    lower: npt.ArrayLike, upper: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """``(max_{s≤t} L_s, min_{s≤t} U_s)`` along the last axis."""
    lo = np.maximum.accumulate(np.asarray(lower, dtype=np.float64), axis=-1)
    up = np.minimum.accumulate(np.asarray(upper, dtype=np.float64), axis=-1)
    return lo, up


@dataclass
class Intersection:
    """The running intersection of the intervals read so far from one CS."""

    lower: float = -math.inf
    upper: float = math.inf

    def update(self, lower: float, upper: float) -> tuple[float, float]:
        """Intersect with a new read; an empty result keeps the new interval instead."""
        lo, up = max(self.lower, lower), min(self.upper, upper)
        if lo > up:
            lo, up = lower, upper
        self.lower, self.upper = lo, up
        return lo, up
