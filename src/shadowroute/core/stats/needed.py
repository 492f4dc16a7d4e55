"""How many more observations an inconclusive metric needs: an estimate, not a promise.

An interval that still contains its threshold says "not yet"; an operator wants to know "how
long". The estimate here answers: if the effect (the estimate ``Σd/n``) and the spread of the
observations (the per-observation variance process, ``V_n/n`` for the bounded CS, the plug-in
``σ̂`` for the asymptotic one) stayed as they are now, the smallest ``N`` at which the
confidence sequence of ``confseq`` (the very interval the verdict reads, at the same alpha)
would exclude the threshold on the side the estimate is on: lower bound above the threshold
when the estimate is above it, upper bound below when below. ``N − n`` more are needed.

It is only an estimate: the effect moves as traffic comes, and a CS read at every step is
wider than a fixed-n interval, so the true crossing can come earlier or later (the tests run
the real sequence until it decides and check the estimate within a factor). When the estimate
sits on the threshold no ``N`` ever decides: there is no estimate, and the answer says so.
Computed when a verdict is read, never per pair.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from shadowroute.core.stats.confseq import AsymState
from shadowroute.core.stats.paired import PairedMetric

__all__ = ["MAX_NEEDED", "Needed", "observations_needed"]

MAX_NEEDED = 1_000_000_000
"""Beyond this many observations the estimate is "more than" (an effect too close to the
threshold to decide in practice)."""
_PRECISION = 1.01
"""The bisection stops when the bracket is within 1%: the figure is an estimate anyway."""


@dataclass(frozen=True)
class Needed:
    """``total``: the estimated number of observations at which the interval would exclude
    the threshold (``None``: cannot be estimated, ``why`` says why); ``more = total − n``."""

    total: int | None
    more: int | None
    why: str | None = None

    def to_dict(self, unit: str) -> dict[str, Any]:
        out: dict[str, Any] = {"more": self.more, "total": self.total, "unit": unit}
        out["estimate"] = True
        if self.why is not None:
            out["why"] = self.why
        return out


def _scaled(metric: PairedMetric, n: int) -> PairedMetric:
    """``metric`` as it would be after ``n`` observations with the same mean and spread."""
    f = n / metric.n
    asym = metric.asym
    if asym is not None:
        asym = AsymState(n, asym.mean, asym.m2 * f)
    return dataclasses.replace(
        metric, n=n, diff_sum=metric.diff_sum * f, diff_sq=metric.diff_sq * f, asym=asym
    )


def observations_needed(
    metric: PairedMetric | None, threshold: float, alpha: float, *, min_n: int = 0
) -> Needed:
    """The estimated observations needed before ``metric``'s interval (read at ``alpha``)
    excludes ``threshold`` at its current effect and variance; ``min_n`` is a burn-in the
    verdict also waits for (unbounded metrics). Pure: reads the sums, changes nothing."""
    if metric is None or metric.n == 0:
        return Needed(None, None, "no observations yet")
    n = metric.n
    if not metric.bounded and n < 2:
        return Needed(None, None, "too few observations to estimate the variance")
    estimate = metric.diff_sum / n
    if not math.isfinite(estimate):
        return Needed(None, None, "the estimate is not finite")
    if abs(estimate - threshold) <= 1e-12 * max(1.0, abs(threshold)):
        return Needed(None, None, "the estimate sits on the threshold: no sample size decides")
    above = estimate > threshold

    def decided(at: int) -> bool:
        lower, upper = _scaled(metric, at).interval(alpha)
        return lower > threshold if above else upper < threshold

    lo, hi = n, n
    if not decided(n):
        while True:
            lo, hi = hi, hi * 2
            if hi > MAX_NEEDED:
                if not decided(MAX_NEEDED):
                    return Needed(None, None, f"more than {MAX_NEEDED} at the current effect")
                hi = MAX_NEEDED
                break
            if decided(hi):
                break
        while hi > lo * _PRECISION and hi - lo > 1:
            mid = (lo + hi) // 2
            if decided(mid):
                hi = mid
            else:
                lo = mid
    total = max(hi, min_n)
    return Needed(total, total - n)
