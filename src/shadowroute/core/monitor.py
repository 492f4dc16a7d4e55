"""Production quality over time windows, its degradation, and label freshness.

Everything here is a mergeable count or sum keyed by window start (ms since the epoch, floored
to the window size), so per-partition state merges exactly and serialises to JSON.

* ``WindowedQuality`` — per window n, Σx, Σx² of the task's per-record quality value x, and
  ``degradation()``: an anytime-valid interval for how much worse the current windows are than
  a reference.
* ``LabelDelay`` — a log-bucket sketch of (label ts − prediction ts), with quantiles.
* ``LabelCoverage`` — predictions and labelled predictions per window.

See ``docs/monitoring.md`` for the formulas and how to read the states.

>>> q = WindowedQuality("accuracy", window_ms=HOUR_MS)
>>> q.add(0, 1.0); q.add(1, 0.0); q.value(0)
0.5
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "METRICS",
    "LabelCoverage",
    "LabelDelay",
    "MetricSpec",
    "QualityMetric",
    "WindowSums",
    "WindowedQuality",
    "asymptotic_radius",
    "normal_mixture_radius",
]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
QualityMetric = Literal["accuracy", "brier", "log_loss", "mae", "rmse"]
DegradationState = Literal["ok", "degraded", "insufficient"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """How a metric's per-record value x is read.

    ``bounds`` is (a, b) when x is known to lie in [a, b] (then the Hoeffding normal-mixture CS
    is used), else None (the asymptotic CS). ``squared`` means the reported value is √mean(x).
    """

    name: QualityMetric
    higher_is_better: bool
    bounds: tuple[float, float] | None
    squared: bool = False

    def report(self, mean_x: float) -> float:
        return math.sqrt(max(mean_x, 0.0)) if self.squared else mean_x


METRICS: dict[str, MetricSpec] = {
    # x = 1[prediction correct]
    "accuracy": MetricSpec("accuracy", True, (0.0, 1.0)),
    # x = Σ_k (p_k − 1[y = k])², in [0, 2]
    "brier": MetricSpec("brier", False, (0.0, 2.0)),
    # x = −log p_y
    "log_loss": MetricSpec("log_loss", False, None),
    # x = |y − ŷ|
    "mae": MetricSpec("mae", False, None),
    # x = (y − ŷ)²; the reported value is √mean(x)
    "rmse": MetricSpec("rmse", False, None, squared=True),
}


@dataclass(frozen=True, slots=True)
class WindowSums:
    """n, Σx and Σx² for one window; ``+`` merges."""

    n: int = 0
    s1: float = 0.0
    s2: float = 0.0

    def __add__(self, other: WindowSums) -> WindowSums:
        return WindowSums(self.n + other.n, self.s1 + other.s1, self.s2 + other.s2)

    @property
    def mean(self) -> float:
        return self.s1 / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        if self.n == 0:
            return math.nan
        m = self.s1 / self.n
        return math.sqrt(max(self.s2 / self.n - m * m, 0.0))


def _log_term(alpha: float) -> float:
    la = math.log(1.0 / alpha)
    return 2.0 * la + math.log(1.0 + 2.0 * la)


def normal_mixture_radius(t: int, alpha: float, width: float, t_opt: int = 1000) -> float:
    """Half-width of the two-sided Hoeffding normal-mixture CS for a mean of t values in a
    range of ``width`` (Howard et al. 2021): √((V+ρ)(log(1+V/ρ) + 2 log(1/α))) / t with
    V = t·width²/4 and ρ tuned so the bound is tightest near t = t_opt."""
    v = t * width * width / 4.0
    rho = (t_opt * width * width / 4.0) / _log_term(alpha)
    return math.sqrt((v + rho) * (math.log1p(v / rho) + 2.0 * math.log(1.0 / alpha))) / t


def asymptotic_radius(t: int, sigma: float, alpha: float, t_opt: int = 1000) -> float:
    """Half-width of the two-sided asymptotic CS (Waudby-Smith et al. 2021):
    σ̂·√(2(tρ²+1)/(t²ρ²) · log(√(tρ²+1)/α)), ρ² = (2 log(1/α) + log(1 + 2 log(1/α)))/t_opt."""
    rho2 = _log_term(alpha) / t_opt
    a = t * rho2 + 1.0
    return sigma * math.sqrt(2.0 * a / (t * t * rho2) * math.log(math.sqrt(a) / alpha))


class WindowedQuality:
    """Per-window sums of one quality metric, mergeable, with a degradation check.

    >>> q = WindowedQuality("accuracy", window_ms=1000)
    >>> q.add_batch([0, 10, 1500], [1, 0, 1]); q.windows(), q.value(1000)
    ([0, 1000], 1.0)
    """

    def __init__(self, metric: str, window_ms: int = HOUR_MS) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; one of {sorted(METRICS)}")
        if window_ms <= 0:
            raise ValueError("window_ms must be > 0")
        self.spec = METRICS[metric]
        self.window_ms = window_ms
        self._w: dict[int, WindowSums] = {}

    def window_of(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self.window_ms

    def add(self, ts_ms: int, value: float) -> None:
        w = self.window_of(ts_ms)
        self._w[w] = self._w.get(w, WindowSums()) + WindowSums(1, value, value * value)

    def add_batch(self, ts_ms: Iterable[int] | npt.ArrayLike, values: npt.ArrayLike) -> None:
        ts = np.asarray(ts_ms, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64)
        if ts.shape != x.shape:
            raise ValueError("ts_ms and values must have the same length")
        starts, inv = np.unique(ts - ts % self.window_ms, return_inverse=True)
        n = np.bincount(inv, minlength=starts.size)
        s1 = np.bincount(inv, weights=x, minlength=starts.size)
        s2 = np.bincount(inv, weights=x * x, minlength=starts.size)
        for i, w in enumerate(starts.tolist()):
            part = WindowSums(int(n[i]), float(s1[i]), float(s2[i]))
            self._w[w] = self._w.get(w, WindowSums()) + part

    def windows(self) -> list[int]:
        return sorted(self._w)

    def sums(self, windows: Iterable[int]) -> WindowSums:
        total = WindowSums()
        for w in windows:
            total = total + self._w.get(w, WindowSums())
        return total

    def value(self, window: int) -> float:
        """The metric's value in one window (NaN if empty)."""
        return self.spec.report(self.sums([window]).mean)

    def series(self) -> list[dict[str, Any]]:
        return [
            {"start": w, "n": self._w[w].n, "value": self.spec.report(self._w[w].mean)}
            for w in self.windows()
        ]

    def merge(self, other: WindowedQuality) -> WindowedQuality:
        if (other.spec.name, other.window_ms) != (self.spec.name, self.window_ms):
            raise ValueError("cannot merge quality windows of a different metric or window size")
        out = WindowedQuality(self.spec.name, self.window_ms)
        for w in set(self._w) | set(other._w):
            out._w[w] = self._w.get(w, WindowSums()) + other._w.get(w, WindowSums())
        return out

    def degradation(
        self,
        current: Sequence[int] | None = None,
        reference: Sequence[int] | None = None,
        rolling: int = 24,
        margin: float = 0.0,
        alpha: float = 0.05,
        min_n: int = 100,
        t_opt: int = 1000,
    ) -> dict[str, Any]:
        """How much worse ``current`` windows are than ``reference`` ones, in metric units.

        ``current`` defaults to the latest window; ``reference`` to the ``rolling`` windows
        just before the first current one. The estimate is signed so positive means worse. Each
        mean gets a time-uniform CS at level α/2 (Bonferroni), so [lower, upper] covers the
        true difference with probability ≥ 1 − α however often it is read as data arrive.
        State: ``degraded`` if lower > margin, ``insufficient`` if either side has fewer than
        ``min_n`` records, else ``ok``.
        """
        cur_ids = list(current) if current is not None else self.windows()[-1:]
        ref_ids = list(reference) if reference is not None else self._rolling(cur_ids, rolling)
        ref, cur = self.sums(ref_ids), self.sums(cur_ids)
        out: dict[str, Any] = {
            "metric": self.spec.name,
            "margin": margin,
            "alpha": alpha,
            "method": "hoeffding-normal-mixture" if self.spec.bounds else "asymptotic",
            "reference": self._side(ref, ref_ids),
            "current": self._side(cur, cur_ids),
        }
        if min(ref.n, cur.n) < max(min_n, 1):
            out.update(estimate=None, lower=None, upper=None, state="insufficient")
            return out
        r_lo, r_hi = self._interval(ref, alpha / 2.0, t_opt)
        c_lo, c_hi = self._interval(cur, alpha / 2.0, t_opt)
        est = self.spec.report(cur.mean) - self.spec.report(ref.mean)
        lo, hi = c_lo - r_hi, c_hi - r_lo
        if self.spec.higher_is_better:
            est, lo, hi = -est, -hi, -lo
        state: DegradationState = "degraded" if lo > margin else "ok"
        out.update(estimate=est, lower=lo, upper=hi, state=state)
        return out

    def _rolling(self, cur_ids: Sequence[int], rolling: int) -> list[int]:
        if not cur_ids:
            return []
        first = min(cur_ids)
        return [first - k * self.window_ms for k in range(rolling, 0, -1)]

    def _side(self, s: WindowSums, ids: Sequence[int]) -> dict[str, Any]:
        value = self.spec.report(s.mean) if s.n else None
        return {"n": s.n, "value": value, "windows": sorted(ids)}

    def _interval(self, s: WindowSums, alpha: float, t_opt: int) -> tuple[float, float]:
        """A CS for the reported metric (x-space CS mapped through the monotone report)."""
        if self.spec.bounds is not None:
            a, b = self.spec.bounds
            r = normal_mixture_radius(s.n, alpha, b - a, t_opt)
            lo, hi = max(s.mean - r, a), min(s.mean + r, b)
        else:
            r = asymptotic_radius(s.n, s.std, alpha, t_opt)
            lo, hi = s.mean - r, s.mean + r
            if self.spec.squared:
                lo = max(lo, 0.0)
        return self.spec.report(lo), self.spec.report(hi)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.spec.name,
            "window_ms": self.window_ms,
            "windows": [[w, s.n, s.s1, s.s2] for w, s in sorted(self._w.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowedQuality:
        out = cls(str(data["metric"]), int(data["window_ms"]))
        for w, n, s1, s2 in data["windows"]:
            out._w[int(w)] = WindowSums(int(n), float(s1), float(s2))
        return out


class LabelDelay:
    """Log-bucket sketch of label delays in ms (label ts − prediction ts).

    Bucket k holds delays in (γ^(k−1), γ^k], γ = (1+a)/(1−a); a quantile is reported as
    2γ^k/(γ+1), within relative error ``a`` of the ``numpy.quantile(..., method="lower")``
    value of the delays. Delays ≤ 0 (label stamped before the prediction) count as 0.

    >>> d = LabelDelay(); d.add([1000, 2000, 3000]); abs(d.quantile(0.5) - 2000) <= 2000 * 0.005
    True
    """

    def __init__(self, relative_accuracy: float = 0.005) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError("relative_accuracy must be in (0, 1)")
        self.relative_accuracy = relative_accuracy
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self.buckets: dict[int, int] = {}
        self.zero = 0

    @property
    def count(self) -> int:
        return self.zero + sum(self.buckets.values())

    def add(self, delays_ms: Iterable[float] | npt.ArrayLike) -> None:
        x = np.asarray(delays_ms, dtype=np.float64).ravel()
        x = x[~np.isnan(x)]
        pos = x[x > 0]
        self.zero += int(x.size - pos.size)
        keys, counts = np.unique(np.ceil(np.log(pos) / self._log_gamma), return_counts=True)
        for k, c in zip(keys.astype(np.int64).tolist(), counts.tolist(), strict=True):
            self.buckets[k] = self.buckets.get(k, 0) + c

    def quantile(self, q: float) -> float:
        """The q-quantile delay in ms (NaN when empty)."""
        if not 0 <= q <= 1:
            raise ValueError("q must be in [0, 1]")
        total = self.count
        if total == 0:
            return math.nan
        rank = q * (total - 1)
        seen = self.zero
        if seen > rank:
            return 0.0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen > rank:
                return 2.0 * self._gamma**k / (self._gamma + 1.0)
        return 2.0 * self._gamma ** max(self.buckets) / (self._gamma + 1.0)

    def merge(self, other: LabelDelay) -> LabelDelay:
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge label-delay sketches of different accuracy")
        out = LabelDelay(self.relative_accuracy)
        out.zero = self.zero + other.zero
        for src in (self.buckets, other.buckets):
            for k, c in src.items():
                out.buckets[k] = out.buckets.get(k, 0) + c
        return out

    def summary(self) -> dict[str, Any]:
        qs = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
        return {"count": self.count, **{k: self.quantile(v) for k, v in qs.items()}}

    def to_dict(self) -> dict[str, Any]:
        return {
            "relative_accuracy": self.relative_accuracy,
            "zero": self.zero,
            "buckets": [[k, c] for k, c in sorted(self.buckets.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelDelay:
        out = cls(float(data["relative_accuracy"]))
        out.zero = int(data["zero"])
        out.buckets = {int(k): int(c) for k, c in data["buckets"]}
        return out


class LabelCoverage:
    """Predictions and labelled predictions per window of the prediction's timestamp.

    >>> c = LabelCoverage(window_ms=1000)
    >>> c.add_predictions([0, 10, 20, 1500]); c.add_labelled([10])
    >>> c.coverage(0), c.coverage(1000)
    (0.3333333333333333, 0.0)
    """

    def __init__(self, window_ms: int = HOUR_MS) -> None:
        if window_ms <= 0:
            raise ValueError("window_ms must be > 0")
        self.window_ms = window_ms
        self.predictions: dict[int, int] = {}
        self.labelled: dict[int, int] = {}

    def _count(self, target: dict[int, int], ts_ms: Iterable[int] | npt.ArrayLike) -> None:
        ts = np.asarray(ts_ms, dtype=np.int64).ravel()
        starts, counts = np.unique(ts - ts % self.window_ms, return_counts=True)
        for w, c in zip(starts.tolist(), counts.tolist(), strict=True):
            target[w] = target.get(w, 0) + c

    def add_predictions(self, ts_ms: Iterable[int] | npt.ArrayLike) -> None:
        self._count(self.predictions, ts_ms)

    def add_labelled(self, prediction_ts_ms: Iterable[int] | npt.ArrayLike) -> None:
        """Count labels, each in the window of the prediction it belongs to."""
        self._count(self.labelled, prediction_ts_ms)

    def coverage(self, window: int) -> float:
        n = self.predictions.get(window, 0)
        return self.labelled.get(window, 0) / n if n else math.nan

    def series(self) -> list[dict[str, Any]]:
        return [
            {
                "start": w,
                "predictions": self.predictions.get(w, 0),
                "labelled": self.labelled.get(w, 0),
                "coverage": self.coverage(w),
            }
            for w in sorted(set(self.predictions) | set(self.labelled))
        ]

    def merge(self, other: LabelCoverage) -> LabelCoverage:
        if other.window_ms != self.window_ms:
            raise ValueError("cannot merge coverage of a different window size")
        out = LabelCoverage(self.window_ms)
        for mine, theirs, dst in (
            (self.predictions, other.predictions, out.predictions),
            (self.labelled, other.labelled, out.labelled),
        ):
            for w in set(mine) | set(theirs):
                dst[w] = mine.get(w, 0) + theirs.get(w, 0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_ms": self.window_ms,
            "predictions": [[w, c] for w, c in sorted(self.predictions.items())],
            "labelled": [[w, c] for w, c in sorted(self.labelled.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelCoverage:
        out = cls(int(data["window_ms"]))
        out.predictions = {int(w): int(c) for w, c in data["predictions"]}
        out.labelled = {int(w): int(c) for w, c in data["labelled"]}
        return out
