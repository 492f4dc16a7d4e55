"""Anytime-valid confidence sequences (CS) computed from mergeable sums.

What every interval here covers: the **average of the conditional means over the observations
seen**, ``μ̄_t = (1/t)·Σ E[x_i | past]``, uniformly over time, whatever the order in which the
observations arrive and however the means move (non-stationary traffic). Each CS is a function
of order-free sums only, so permuting observations never changes it, partitions and windows
merge by adding, and the reported interval always contains the reported estimate ``Σx/t``.

- **Bounded means** (``eb_interval``): the empirical-Bernstein CS of Howard, Ramdas,
  McAuliffe & Sekhon (AoS 2021, Theorem 4) on the plain sum ``S_t = Σ (x_i − μ_i)``, with the
  variance process ``V_t = Σ (x_i − m)²`` around a fixed centre ``m`` of the range ``[a, b]``
  (a constant prediction, which the theorem allows). For ``x_i ∈ [a, b]``,
  ``exp(λ·S_t − ψ_c(λ)·V_t)`` is a nonnegative supermartingale for every fixed bet
  ``λ ∈ [0, 1/c)``, with ``ψ_c(λ) = (−log(1 − cλ) − cλ)/c²``; the lower bound uses
  ``c = m − a``, the upper bound ``c = b − m`` (``c = 0`` is the sub-Gaussian limit ``λ²/2``).
  The boundary mixes those supermartingales over a fixed grid of bets with half-normal prior
  weights (the discrete analogue of the gamma-exponential / normal mixtures of the paper, tuned
  by ``v_opt``), and Ville's inequality gives time-uniform coverage. State: ``(t, Σx, Σx²)``.
- **Unbounded means** (``AsymState``): the asymptotic CS of Waudby-Smith et al. (2021) from
  ``(n, mean, M2)`` merged with Chan's formula; centred on the sample mean. Valid
  asymptotically (use a burn-in); when the means drift, the sample variance also counts their
  spread, which makes it conservative rather than wrong.

There is deliberately no running intersection of successive intervals: it is valid only for a
fixed target and can lock an early interval in that later excludes the estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]

DEFAULT_V_OPT = 250.0
"""The variance process ``V`` at which the bounded CS is tightest (about the number of
discordant pairs when a paired accuracy difference is decided)."""

_GRID_SIZE = 160
_GRID_SPAN = 1e-6
_SUBGAUSS_SPAN = 40.0


class BetMixture:
    """Fixed bets ``λ_k`` with prior log-weights ``log w_k`` for one scale ``c``, and each
    bet's ``ψ_c(λ_k) = (−log(1 − cλ) − cλ)/c²`` (``λ²/2`` when ``c = 0``)."""

    def __init__(self, c: float, lams: list[float], log_w: list[float]) -> None:
        self.c = c
        self.lam_list = list(lams)
        self.log_w_list = list(log_w)
        self.lams: FloatArray = np.asarray(lams, dtype=np.float64)
        self.log_w: FloatArray = np.asarray(log_w, dtype=np.float64)
        if c == 0.0:
            self.psis: FloatArray = 0.5 * self.lams * self.lams
        else:
            x = c * self.lams
            self.psis = (-np.log1p(-x) - x) / (c * c)
        self.psi_list = [float(p) for p in self.psis]


def best_rho(v_opt: float, alpha: float) -> float:
    """The mixture precision that makes a two-sided normal mixture tightest at ``V = v_opt``
    (HRMS 2021, eq. (14)); shared here by the half-normal prior over bets."""
    la = math.log(1.0 / alpha)
    return v_opt / (2.0 * la + math.log1p(2.0 * la))


@lru_cache(maxsize=256)
def bet_mixture(c: float, alpha: float, v_opt: float = DEFAULT_V_OPT) -> BetMixture:
    """A geometric grid of bets on ``(0, λ_max)`` weighted by a half-normal ``N(0, 1/ρ)`` prior
    restricted to the grid's range (the weights sum to 1, so the mixture starts at 1)."""
    if c < 0.0:
        raise ValueError(f"scale c must be >= 0, got {c}")
    rho = best_rho(v_opt, alpha)
    lam_max = _SUBGAUSS_SPAN / math.sqrt(rho)
    if c > 0.0:
        lam_max = min(lam_max, 0.999 / c)
    last = _GRID_SIZE - 1
    lams = [lam_max * _GRID_SPAN ** ((last - k) / last) for k in range(_GRID_SIZE)]
    edges = [0.0]
    edges += [math.sqrt(lams[k] * lams[k + 1]) for k in range(_GRID_SIZE - 1)]
    edges.append(lam_max)
    root = math.sqrt(rho / 2.0)
    mass = [math.erf(edges[k + 1] * root) - math.erf(edges[k] * root) for k in range(_GRID_SIZE)]
    total = sum(mass)
    log_w = [math.log(m / total) if m > 0.0 else -math.inf for m in mass]
    return BetMixture(c, lams, log_w)


def mixture_bounds(v: npt.ArrayLike, alpha: float, mix: BetMixture) -> FloatArray:
    """For each ``V``, the least ``s ≥ 0`` where the bet mixture reaches ``1/alpha``:
    ``log Σ_k w_k·exp(λ_k·s − ψ_c(λ_k)·V) = log(1/alpha)``.

    ``S_t`` crosses this boundary with probability at most ``alpha``, ever. The left side is
    convex and increasing in ``s`` and negative at 0, so Newton's method started above the
    root (any single bet's own crossing point) descends to it monotonically.
    """
    vs = np.atleast_1d(np.asarray(v, dtype=np.float64))
    if vs.size == 0:
        return np.zeros(0)
    if np.any(vs < 0.0) or not np.all(np.isfinite(vs)):
        raise ValueError("the variance process must be finite and non-negative")
    lams, psis, log_w = mix.lams, mix.psis, mix.log_w
    level = math.log(1.0 / alpha)
    a = log_w[None, :] - psis[None, :] * vs[:, None]
    s = np.min((level - a) / lams[None, :], axis=1)
    for _ in range(200):
        z = a + lams[None, :] * s[:, None]
        top = np.max(z, axis=1)
        e = np.exp(z - top[:, None])
        total = np.sum(e, axis=1)
        g = top + np.log(total) - level
        slope = np.sum(e * lams[None, :], axis=1) / total
        step = g / slope
        s = s - step
        if np.all(np.abs(step) <= 1e-12 * (1.0 + np.abs(s))):
            break
    return np.asarray(np.maximum(s, 0.0), dtype=np.float64)


def mixture_bound(v: float, alpha: float, mix: BetMixture) -> float:
    """``mixture_bounds`` for one ``V``, in plain floats (a verdict reads a few of these)."""
    if v < 0.0 or not math.isfinite(v):
        raise ValueError("the variance process must be finite and non-negative")
    level = math.log(1.0 / alpha)
    lams = mix.lam_list
    a = [lw - p * v for lw, p in zip(mix.log_w_list, mix.psi_list, strict=True)]
    s = min((level - ak) / lam for ak, lam in zip(a, lams, strict=True))
    for _ in range(200):
        z = [ak + lam * s for ak, lam in zip(a, lams, strict=True)]
        top = max(z)
        total = 0.0
        weighted = 0.0
        for zk, lam in zip(z, lams, strict=True):
            e = math.exp(zk - top)
            total += e
            weighted += e * lam
        step = (top + math.log(total) - level) / (weighted / total)
        s -= step
        if abs(step) <= 1e-12 * (1.0 + abs(s)):
            break
    return max(s, 0.0)


def _radii(
    v: FloatArray, alpha: float, lo: float, hi: float, centre: float, v_opt: float
) -> tuple[FloatArray, FloatArray]:
    side = alpha / 2.0
    down = mixture_bounds(v, side, bet_mixture(centre - lo, side, v_opt))
    up = mixture_bounds(v, side, bet_mixture(hi - centre, side, v_opt))
    return down, up


def _check_range(lo: float, hi: float, centre: float) -> None:
    if not lo <= centre <= hi or lo >= hi:
        raise ValueError(f"need lo <= centre <= hi and lo < hi, got {lo}, {centre}, {hi}")


def eb_interval(
    n: int,
    total: float,
    total_sq: float,
    alpha: float,
    *,
    lo: float = -1.0,
    hi: float = 1.0,
    centre: float = 0.0,
    v_opt: float = DEFAULT_V_OPT,
) -> tuple[float, float]:
    """The two-sided (1 − alpha) empirical-Bernstein CS for ``μ̄_t`` of ``x ∈ [lo, hi]``,
    from ``n = t``, ``total = Σx`` and ``total_sq = Σx²`` (α/2 per side).

    Always contains the estimate ``total/n``; ``(lo, hi)`` before any observation.
    """
    lower = eb_end(n, total, total_sq, alpha, lower=True, lo=lo, hi=hi, centre=centre, v_opt=v_opt)
    upper = eb_end(n, total, total_sq, alpha, lower=False, lo=lo, hi=hi, centre=centre, v_opt=v_opt)
    return lower, upper


def eb_end(
    n: int,
    total: float,
    total_sq: float,
    alpha: float,
    *,
    lower: bool,
    lo: float = -1.0,
    hi: float = 1.0,
    centre: float = 0.0,
    v_opt: float = DEFAULT_V_OPT,
) -> float:
    """One end of ``eb_interval`` (the lower one when ``lower``): each end is a root solve of
    its own, and a reader that needs one end (the observations-needed estimate) pays for one.
    """
    _check_range(lo, hi, centre)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n <= 0:
        return lo if lower else hi
    v = max(total_sq - 2.0 * centre * total + n * centre * centre, 0.0)
    side = alpha / 2.0
    mean = total / n
    if lower:
        down = mixture_bound(v, side, bet_mixture(centre - lo, side, v_opt))
        return max(lo, min(mean, mean - down / n))
    up = mixture_bound(v, side, bet_mixture(hi - centre, side, v_opt))
    return min(hi, max(mean, mean + up / n))


def eb_path(
    x: npt.ArrayLike,
    alpha: float,
    *,
    lo: float = -1.0,
    hi: float = 1.0,
    centre: float = 0.0,
    v_opt: float = DEFAULT_V_OPT,
) -> tuple[FloatArray, FloatArray]:
    """``eb_interval`` after every observation along the last axis of ``x`` (a 2-D array is
    many independent streams: simulation, audit). Equal variance processes share one solve, so
    streams of a few distinct values (paired differences in {−1, 0, 1}) are cheap."""
    _check_range(lo, hi, centre)
    arr = np.asarray(x, dtype=np.float64)
    if arr.size and (np.any(arr < lo) or np.any(arr > hi) or not np.all(np.isfinite(arr))):
        raise ValueError(f"observations must lie in [{lo}, {hi}]")
    t = np.arange(1, arr.shape[-1] + 1, dtype=np.float64)
    mean = np.cumsum(arr, axis=-1) / t
    v = np.maximum(np.cumsum((arr - centre) ** 2, axis=-1), 0.0)
    uniq, inverse = np.unique(np.round(v, 9), return_inverse=True)
    down, up = _radii(np.asarray(uniq, dtype=np.float64), alpha, lo, hi, centre, v_opt)
    inverse = inverse.reshape(v.shape)
    lower = np.clip(np.minimum(mean, mean - down[inverse] / t), lo, hi)
    upper = np.clip(np.maximum(mean, mean + up[inverse] / t), lo, hi)
    return lower, upper


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
