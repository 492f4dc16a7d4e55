"""Mergeable paired aggregates for one (route, candidate, metric), and the metric definitions.

Every paired difference is signed so that positive means the candidate is better:
``d = prod_loss − cand_loss`` for losses, ``d = cand_score − prod_score`` for scores. Bounded
metrics get the empirical-Bernstein CS on their plain sums (exact, time-uniform, for the
average of the conditional means over the pairs seen, in any order); unbounded ones the
asymptotic CS. A ``rate`` metric (agreement) is a one-sample proportion in [0, 1], not a
difference. Everything is order-free sums, so aggregates merge by adding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from shadowroute.core.stats.confseq import DEFAULT_V_OPT, AsymState, eb_end

FloatArray: TypeAlias = npt.NDArray[np.float64]
MetricKind = Literal["paired", "rate"]

LOG_LOSS_EPS = 1e-6
RARE_V_OPT = 30.0
DEFAULT_T_OPT = 1000.0
_BOUND_TOLERANCE = 1e-9


@dataclass(frozen=True)
class MetricSpec:
    """How a metric's per-observation values turn into a paired difference.

    ``scale`` maps the difference into [−1, 1] for the bounded CS (½ for multiclass Brier);
    intervals are reported back on the metric's own scale. The bounded CS measures spread
    around a fixed ``centre`` of the range: 0 for paired differences ("no difference"), 1 for
    the agreement rate (so its variance process counts disagreements).
    """

    name: str
    higher_is_better: bool
    bounded: bool
    scale: float = 1.0
    kind: MetricKind = "paired"
    needs_label: bool = True
    v_opt: float = DEFAULT_V_OPT
    """Where the bounded CS is tightest, in units of its variance process (about the number
    of pairs that differ when it decides): large for quality metrics, small for rates of rare
    events such as errors, whose guardrails decide on a handful of them."""

    @property
    def range(self) -> tuple[float, float, float]:
        """``(lo, hi, centre)`` of the bounded CS's observations."""
        return (0.0, 1.0, 1.0) if self.kind == "rate" else (-1.0, 1.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "higher_is_better": self.higher_is_better,
            "bounded": self.bounded,
            "scale": self.scale,
            "kind": self.kind,
            "needs_label": self.needs_label,
            "v_opt": self.v_opt,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricSpec:
        kind: MetricKind = "rate" if data["kind"] == "rate" else "paired"
        return cls(
            name=str(data["name"]),
            higher_is_better=bool(data["higher_is_better"]),
            bounded=bool(data["bounded"]),
            scale=float(data["scale"]),
            kind=kind,
            needs_label=bool(data["needs_label"]),
            v_opt=float(data.get("v_opt", DEFAULT_V_OPT)),
        )


METRICS: dict[str, MetricSpec] = {
    "accuracy": MetricSpec("accuracy", higher_is_better=True, bounded=True),
    "exact_match": MetricSpec("exact_match", higher_is_better=True, bounded=True),
    "brier": MetricSpec("brier", higher_is_better=False, bounded=True),
    "log_loss": MetricSpec("log_loss", higher_is_better=False, bounded=False),
    "mae": MetricSpec("mae", higher_is_better=False, bounded=False),
    "mse": MetricSpec("mse", higher_is_better=False, bounded=False),
    "agreement": MetricSpec(
        "agreement",
        higher_is_better=True,
        bounded=True,
        kind="rate",
        needs_label=False,
        v_opt=RARE_V_OPT,
    ),
    "error_rate": MetricSpec(
        "error_rate", higher_is_better=False, bounded=True, needs_label=False, v_opt=RARE_V_OPT
    ),
    "timeout_rate": MetricSpec(
        "timeout_rate", higher_is_better=False, bounded=True, needs_label=False, v_opt=RARE_V_OPT
    ),
    "availability": MetricSpec(
        "availability", higher_is_better=True, bounded=True, needs_label=False, v_opt=RARE_V_OPT
    ),
    # The pairwise judge's preference (docs/llm.md): production's value is 1 for a loss,
    # the candidate's 1 for a win, so d = win − loss ∈ {−1, 0, +1}; no label needed.
    "judge": MetricSpec("judge", higher_is_better=True, bounded=True, needs_label=False),
}


def metric_spec(name: str, *, n_classes: int | None = None) -> MetricSpec:
    """The definition of a named metric; ``brier`` with more than two classes is scaled by ½."""
    try:
        spec = METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}") from None
    if name == "brier" and n_classes is not None and n_classes > 2:
        return MetricSpec("brier", higher_is_better=False, bounded=True, scale=0.5)
    return spec


# --- per-observation values ------------------------------------------------------------------


def correct(pred: npt.ArrayLike, label: npt.ArrayLike) -> FloatArray:
    """``1[pred == label]`` (accuracy, exact match, agreement)."""
    same: npt.NDArray[np.bool_] = np.asarray(pred) == np.asarray(label)
    return same.astype(np.float64)


def log_loss_values(p_label: npt.ArrayLike, eps: float = LOG_LOSS_EPS) -> FloatArray:
    """``−log p_y`` with ``p`` clipped to ``[eps, 1 − eps]``."""
    p = np.clip(np.asarray(p_label, dtype=np.float64), eps, 1.0 - eps)
    return np.asarray(-np.log(p), dtype=np.float64)


def brier_values(probs: npt.ArrayLike, label_index: npt.ArrayLike) -> FloatArray:
    """Multiclass Brier ``Σ_k (p_k − 1[y = k])²`` per row, in [0, 2]."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), np.asarray(label_index, dtype=np.int64)] = 1.0
    return np.asarray(np.sum((p - onehot) ** 2, axis=1), dtype=np.float64)


def binary_brier_values(p_positive: npt.ArrayLike, y: npt.ArrayLike) -> FloatArray:
    """Binary Brier ``(p − y)²`` in [0, 1]."""
    diff = np.asarray(p_positive, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return np.asarray(diff**2, dtype=np.float64)


def abs_error(pred: npt.ArrayLike, y: npt.ArrayLike) -> FloatArray:
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return np.asarray(np.abs(diff), dtype=np.float64)


def squared_error(pred: npt.ArrayLike, y: npt.ArrayLike) -> FloatArray:
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    return np.asarray(diff**2, dtype=np.float64)


# --- the aggregate ---------------------------------------------------------------------------


def _nan_if_empty(total: float, n: int) -> float:
    return total / n if n else math.nan


@dataclass
class PairedMetric:
    """Mergeable aggregate of one metric for one (route, candidate).

    Create it with the metric's share of alpha (``policy.metric_alpha``). ``t_opt`` is the
    sample size at which the asymptotic CS is tightest, ``v_opt`` the variance process at
    which the bounded one is.
    """

    spec: MetricSpec
    alpha: float
    t_opt: float = DEFAULT_T_OPT
    v_opt: float = 0.0
    n: int = 0
    prod_sum: float = 0.0
    prod_sq: float = 0.0
    cand_sum: float = 0.0
    cand_sq: float = 0.0
    diff_sum: float = 0.0
    diff_sq: float = 0.0
    asym: AsymState | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if self.v_opt <= 0.0:
            self.v_opt = self.spec.v_opt
        if not self.spec.bounded and self.asym is None:
            self.asym = AsymState()

    @classmethod
    def create(
        cls,
        name: str,
        alpha: float,
        *,
        n_classes: int | None = None,
        t_opt: float = DEFAULT_T_OPT,
    ) -> PairedMetric:
        return cls(spec=metric_spec(name, n_classes=n_classes), alpha=alpha, t_opt=t_opt)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def bounded(self) -> bool:
        return self.spec.bounded

    def update(self, prod_values: npt.ArrayLike, cand_values: npt.ArrayLike) -> None:
        """Add per-observation values of both models (losses or scores, per the spec).

        For a ``rate`` metric the two arrays are outputs, and the rate is ``1[cand == prod]``.
        """
        if self.spec.kind == "rate":
            self.update_rate(correct(cand_values, prod_values))
            return
        prod = np.asarray(prod_values, dtype=np.float64).ravel()
        cand = np.asarray(cand_values, dtype=np.float64).ravel()
        if prod.shape != cand.shape:
            raise ValueError(f"paired arrays differ in length: {prod.size} vs {cand.size}")
        if prod.size == 0:
            return
        d = cand - prod if self.spec.higher_is_better else prod - cand
        self._feed(d)
        self.prod_sum += float(prod.sum())
        self.prod_sq += float(np.sum(prod * prod))
        self.cand_sum += float(cand.sum())
        self.cand_sq += float(np.sum(cand * cand))

    def update_rate(self, x: npt.ArrayLike) -> None:
        """Add observations of a one-sample rate in [0, 1] (``kind == 'rate'`` only)."""
        if self.spec.kind != "rate":
            raise ValueError(f"{self.name} is a paired metric; use update(prod, cand)")
        arr = np.asarray(x, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if not self.spec.bounded:
            raise ValueError("a rate metric must be bounded")
        if not (np.all(arr >= 0.0) and np.all(arr <= 1.0)):
            raise ValueError(f"{self.name}: rates must lie in [0, 1]")
        self.n += arr.size
        self.cand_sum += float(arr.sum())
        self.cand_sq += float(np.sum(arr * arr))
        self.diff_sum += float(arr.sum())
        self.diff_sq += float(np.sum(arr * arr))

    def _feed(self, d: FloatArray) -> None:
        if self.spec.bounded:
            scaled = d * self.spec.scale
            if np.any(np.abs(scaled) > 1.0 + _BOUND_TOLERANCE) or not np.all(np.isfinite(d)):
                raise ValueError(f"{self.name}: paired differences out of their bounded range")
            d = np.clip(scaled, -1.0, 1.0) / self.spec.scale
        elif self.asym is not None:
            self.asym.update(d)
        self.n += d.size
        self.diff_sum += float(d.sum())
        self.diff_sq += float(np.sum(d * d))

    def merge(self, other: PairedMetric) -> PairedMetric:
        """The aggregate of the union. The sums do not depend on alpha, ``t_opt`` or
        ``v_opt`` (they only shape the interval when it is read), so states made under another
        policy's alpha split merge too, and the result reads with this one's settings."""
        if other.spec.name != self.spec.name or other.spec.scale != self.spec.scale:
            raise ValueError(f"cannot merge {self.name} aggregates with {other.name}'s")
        asym = (
            self.asym.merge(other.asym)
            if self.asym is not None and other.asym is not None
            else None
        )
        return PairedMetric(
            spec=self.spec,
            alpha=self.alpha,
            t_opt=self.t_opt,
            v_opt=self.v_opt,
            n=self.n + other.n,
            prod_sum=self.prod_sum + other.prod_sum,
            prod_sq=self.prod_sq + other.prod_sq,
            cand_sum=self.cand_sum + other.cand_sum,
            cand_sq=self.cand_sq + other.cand_sq,
            diff_sum=self.diff_sum + other.diff_sum,
            diff_sq=self.diff_sq + other.diff_sq,
            asym=asym,
        )

    def interval(self, alpha: float | None = None) -> tuple[float, float]:
        """The CS for the mean difference (or the rate), on the metric's scale; it always
        contains the estimate ``diff_sum / n``. ``alpha`` (default: the metric's own) is the
        level to read it at: the sums do not depend on it.

        Bounded metrics: each end is a one-sided time-uniform bound at level ``alpha`` (the
        lower one decides promotion, the upper one rejection), so the pair is a
        ``(1 − 2·alpha)`` CS. Unbounded metrics: the two-sided ``(1 − alpha)`` asymptotic CS,
        whose ends are therefore each at least as strict.
        """
        if self.spec.bounded:
            return self.end(alpha, lower=True), self.end(alpha, lower=False)
        assert self.asym is not None
        return self.asym.interval(self.alpha if alpha is None else alpha, self.t_opt)

    def end(self, alpha: float | None = None, *, lower: bool) -> float:
        """One end of ``interval`` (the lower one when ``lower``), equal to it: a bounded
        metric's ends are a root solve each, and a reader of one end pays for one."""
        level = self.alpha if alpha is None else alpha
        if not self.spec.bounded:
            ends = self.interval(level)
            return ends[0] if lower else ends[1]
        k = self.spec.scale
        lo, hi, centre = self.spec.range
        at = eb_end(
            self.n,
            self.diff_sum * k,
            self.diff_sq * k * k,
            2.0 * level,
            lower=lower,
            lo=lo,
            hi=hi,
            centre=centre,
            v_opt=self.v_opt,
        )
        return at / k

    def summary(self) -> dict[str, float | int | None]:
        """``estimate, lower, upper, n, prod_mean, cand_mean`` (means NaN when empty)."""
        lower, upper = self.interval()
        rate = self.spec.kind == "rate"
        return {
            "estimate": _nan_if_empty(self.diff_sum, self.n),
            "lower": lower,
            "upper": upper,
            "n": self.n,
            "prod_mean": None if rate else _nan_if_empty(self.prod_sum, self.n),
            "cand_mean": _nan_if_empty(self.cand_sum, self.n),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "alpha": self.alpha,
            "t_opt": self.t_opt,
            "v_opt": self.v_opt,
            "n": self.n,
            "sums": [
                self.prod_sum,
                self.prod_sq,
                self.cand_sum,
                self.cand_sq,
                self.diff_sum,
                self.diff_sq,
            ],
            "asym": None if self.asym is None else self.asym.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairedMetric:
        sums = [float(v) for v in data["sums"]]
        return cls(
            spec=MetricSpec.from_dict(data["spec"]),
            alpha=float(data["alpha"]),
            t_opt=float(data["t_opt"]),
            v_opt=float(data.get("v_opt", 0.0)),
            n=int(data["n"]),
            prod_sum=sums[0],
            prod_sq=sums[1],
            cand_sum=sums[2],
            cand_sq=sums[3],
            diff_sum=sums[4],
            diff_sq=sums[5],
            asym=None if data["asym"] is None else AsymState.from_dict(data["asym"]),
        )
