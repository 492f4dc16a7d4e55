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
Computed when a verdict is read, never per pair; ``NeededMemo`` keeps the answers for sums
that did not move, since verdicts are read again after every batch; each read computes only the
end of the interval it needs (``PairedMetric.end``: half the root solves); and the search aims
at the crossing rather than halving towards it (``_crossing``: about 4.5 reads, not 11.6).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shadowroute.core.stats.confseq import AsymState
from shadowroute.core.stats.paired import PairedMetric

__all__ = ["MAX_NEEDED", "Needed", "NeededMemo", "observations_needed"]

MAX_NEEDED = 1_000_000_000
"""Beyond this many observations the estimate is "more than" (an effect too close to the
threshold to decide in practice)."""
_PRECISION = 1.01
"""The search stops when the bracket is within 1%: the figure is an estimate anyway."""


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

    def end(at: int) -> float:
        return _scaled(metric, at).end(alpha, lower=above)  # the end that must pass

    hi = _crossing(n, end, estimate, threshold)
    if hi is None:
        return Needed(None, None, f"more than {MAX_NEEDED} at the current effect")
    total = max(hi, min_n)
    return Needed(total, total - n)


def _crossing(n: int, end: Callable[[int], float], estimate: float, threshold: float) -> int | None:
    """The least ``N ≥ n`` at which ``end(N)`` passes ``threshold`` (above it when the
    estimate is above it), to within ``_PRECISION``: ``hi`` is returned once the end passes at
    ``hi`` and not at some ``lo ≥ hi / 1.01`` (or ``hi − lo ≤ 1``). ``None``: not by
    ``MAX_NEEDED``.

    Each ``end`` is a root solve, and a comparator reads the estimate of every inconclusive
    metric after every batch, so the search aims rather than halves: the distance ``w(N)``
    from the estimate to the end falls about as ``N^(−1/2)`` (more slowly by a log factor),
    a straight line in ``log N`` against ``log w``. The first guess is on that line; then the
    line through the last two points (a secant) names ``N*`` where ``w = gap``, and the next
    reads land just either side of it, 0.4% away, closing the bracket in two when the line
    is right. A read that does not shrink the bracket to half its (log) width is followed by
    a halving, so it ends as a bisection would. About 4.5 reads where halving took 11.6.
    """
    above = estimate > threshold
    gap = abs(estimate - threshold)

    def passes(e: float) -> bool:
        return e > threshold if above else e < threshold

    def width(e: float) -> float:
        return abs(estimate - e)

    e = end(n)
    if passes(e):
        return n
    lo = n
    hi = 0  # none yet
    prev_n = last_n = lo  # the last two points read, for the secant
    prev_w = last_w = width(e)
    wide = math.inf  # the bracket's log width before the last read
    for _ in range(200):
        aim = _aim(last_n, last_w, prev_n, prev_w, gap)
        if hi == 0:
            # Not bracketed yet: just past the aim, at least 1% and at most 8x further.
            at = min(max(aim * 1.004, lo * _PRECISION, lo + 1.0), lo * 8.0)
            if at >= MAX_NEEDED:
                if not passes(end(MAX_NEEDED)):
                    return None
                hi = MAX_NEEDED
                continue
        else:
            span = math.log(hi / lo)
            if span > wide / 2.0 or not lo < aim < hi:
                at = math.sqrt(lo * hi)  # the last read did not halve the bracket: halve it
            elif hi > aim * (1.0 + 1.5 * (_PRECISION - 1.0)):
                at = aim * 1.004  # pull the upper end in to just past the aim
            else:
                at = aim / 1.004  # push the lower end up to just short of it
            wide = span
        k = min(max(int(at), lo + 1), (hi - 1) if hi else MAX_NEEDED)
        e = end(k)
        prev_n, prev_w, last_n, last_w = last_n, last_w, k, width(e)
        if passes(e):
            hi = k
        else:
            lo = k
        if hi and (hi <= lo * _PRECISION or hi - lo <= 1):
            return hi
    return hi or None  # not reached: each halving at least halves the bracket


def _aim(n1: int, w1: float, n2: int, w2: float, gap: float) -> float:
    """Where the line through ``(log n, log w)`` at the two points reaches ``w = gap``: with
    one point (or a flat or rising line, or a zero width) the slope is taken as −1/2."""
    slope = -0.5
    if n1 != n2 and w1 > 0.0 and w2 > 0.0:
        s = math.log(w1 / w2) / math.log(n1 / n2)
        if -4.0 < s < -0.05:
            slope = s
    if not (w1 > 0.0 and math.isfinite(w1)):
        return float(n1) * 2.0
    return float(n1) * math.exp(math.log(gap / w1) / slope)


class NeededMemo:
    """``observations_needed``, remembered by everything it depends on.

    Verdicts are decided again after every committed batch, for every candidate, while most
    candidates' sums did not move since the last time: a route that gets no traffic now, or
    a metric waiting for labels. For a bounded metric the estimate reads a few interval ends,
    each a root solve; on a comparator with a few such routes that was most of its CPU. The
    key is every input of the computation (the metric's spec, level and sums, the threshold,
    alpha and burn-in), so an answer is reused only for the very same question. At most
    ``size`` answers are kept (all dropped when full).

    >>> from shadowroute.core.stats.paired import PairedMetric
    >>> m = PairedMetric.create("accuracy", 0.025)
    >>> m.update([1, 1, 0, 1], [1, 0, 0, 1])
    >>> memo = NeededMemo()
    >>> memo(m, 0.0, 0.025) == observations_needed(m, 0.0, 0.025), memo.hits
    (True, 0)
    >>> _ = memo(m, 0.0, 0.025); memo.hits
    1
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.hits = 0
        self._answers: dict[tuple[Any, ...], Needed] = {}

    def __call__(
        self, metric: PairedMetric | None, threshold: float, alpha: float, *, min_n: int = 0
    ) -> Needed:
        if metric is None:
            return observations_needed(metric, threshold, alpha, min_n=min_n)
        asym = metric.asym
        key = (
            metric.spec,
            metric.alpha,
            metric.t_opt,
            metric.v_opt,
            metric.n,
            metric.diff_sum,
            metric.diff_sq,
            None if asym is None else (asym.n, asym.mean, asym.m2),
            threshold,
            alpha,
            min_n,
        )
        got = self._answers.get(key)
        if got is not None:
            self.hits += 1
            return got
        got = observations_needed(metric, threshold, alpha, min_n=min_n)
        if len(self._answers) >= self.size:
            self._answers.clear()
        self._answers[key] = got
        return got
