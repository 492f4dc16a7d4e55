"""Input drift: histograms on bins frozen from a reference, and distances between them.

Bins are fixed once, from a reference sample, so a histogram of any later window is a plain
count vector: partitions and windows merge by adding counts, exactly, and every distance below
is a function of two count vectors. The formulas and thresholds are documented in
``docs/monitoring.md``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> bins = FrozenBins.numeric(rng.normal(size=5000))
>>> ref, cur = Histogram(bins), Histogram(bins)
>>> ref.add(rng.normal(size=5000)); cur.add(rng.normal(1.0, 1.0, size=2000))
>>> drift_state(psi(ref, cur))
'major'
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import orjson

from shadowroute.core.drift_fields import PathSet, compile_path

__all__ = [
    "DriftAccumulator",
    "DriftState",
    "FrozenBins",
    "Histogram",
    "category_key",
    "drift_state",
    "drift_summary",
    "js_distance",
    "ks_binned",
    "psi",
    "reference_from_rows",
    "wasserstein_binned",
    "wasserstein_binned_normed",
]

DriftState = Literal["stable", "minor", "major"]
FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
OTHER = "__other__"
_STD_FLOOR = 0.001


def category_key(value: Any) -> str:
    """The text form under which a categorical value is counted (strings as they are)."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True, slots=True)
class FrozenBins:
    """Bin definitions fixed from a reference sample.

    Numeric: finite ``edges`` e_0 < … < e_m (reference quantiles, deduplicated) give m + 1
    bins: underflow (-inf, e_0), then [e_{i-1}, e_i) for i = 1..m-1, then overflow [e_m, inf).
    Categorical: the reference's ``categories`` (top K by count) plus one "other" bin, last.

    >>> FrozenBins.numeric([1, 2, 3, 4], n_bins=2).edges
    (1.0, 2.5, 4.0)
    """

    kind: Literal["numeric", "categorical"]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    std: float = 0.0
    """Standard deviation of the reference sample (numeric), used to normalise Wasserstein."""

    @classmethod
    def numeric(cls, reference: Iterable[float] | FloatArray, n_bins: int = 10) -> FrozenBins:
        """Edges at the reference's 0, 1/n_bins, …, 1 quantiles; non-finite values ignored."""
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        x = np.asarray(list(reference) if not isinstance(reference, np.ndarray) else reference)
        x = x.astype(np.float64, copy=False)
        x = x[np.isfinite(x)]
        if x.size == 0:
            raise ValueError("reference has no finite numeric values")
        edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1)))
        return cls("numeric", edges=tuple(float(e) for e in edges), std=float(np.std(x)))

    @classmethod
    def categorical(cls, reference: Iterable[Any], top_k: int = 20) -> FrozenBins:
        """The ``top_k`` most frequent reference values (ties by text) plus an "other" bin."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        counts = Counter(category_key(v) for v in reference if v is not None)
        if not counts:
            raise ValueError("reference has no categorical values")
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return cls("categorical", categories=tuple(k for k, _ in ranked))

    @property
    def size(self) -> int:
        """Number of bins, including underflow/overflow or "other"."""
        return len(self.edges) + 1 if self.kind == "numeric" else len(self.categories) + 1

    def labels(self) -> list[str]:
        """A readable name per bin, in bin order."""
        if self.kind == "categorical":
            return [*self.categories, OTHER]
        e = self.edges
        inner = [f"[{e[i - 1]:g}, {e[i]:g})" for i in range(1, len(e))]
        return [f"(-inf, {e[0]:g})", *inner, f"[{e[-1]:g}, inf)"]

    def representatives(self) -> FloatArray:
        """One point per numeric bin: e_0 for underflow, midpoints inside, e_m for overflow."""
        if self.kind != "numeric":
            raise ValueError("representative points exist only for numeric bins")
        e = np.asarray(self.edges, dtype=np.float64)
        return np.concatenate(([e[0]], (e[:-1] + e[1:]) / 2.0, [e[-1]]))

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "numeric":
            return {"kind": "numeric", "edges": list(self.edges), "std": self.std}
        return {"kind": "categorical", "categories": list(self.categories)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FrozenBins:
        if data["kind"] == "numeric":
            edges = tuple(float(e) for e in data["edges"])
            if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError("numeric edges must be non-empty and strictly increasing")
            return cls("numeric", edges=edges, std=float(data.get("std", 0.0)))
        if data["kind"] == "categorical":
            return cls("categorical", categories=tuple(str(c) for c in data["categories"]))
        raise ValueError(f"unknown bins kind {data['kind']!r}")


class Histogram:
    """Counts per bin of a ``FrozenBins``; values that do not fit the kind count as missing.

    >>> h = Histogram(FrozenBins.numeric([0, 1, 2, 3], n_bins=3))
    >>> h.add([-5, 0.5, 2.5, 99, "n/a"]); h.counts.tolist(), h.missing
    ([1, 1, 0, 1, 1], 1)
    """

    __slots__ = ("_index", "bins", "counts", "missing")

    def __init__(self, bins: FrozenBins, counts: IntArray | None = None, missing: int = 0) -> None:
        self.bins = bins
        self.counts: IntArray = (
            np.zeros(bins.size, dtype=np.int64) if counts is None else counts.astype(np.int64)
        )
        if self.counts.shape != (bins.size,):
            raise ValueError(f"expected {bins.size} counts, got {self.counts.shape}")
        self.missing = missing
        self._index = {c: i for i, c in enumerate(bins.categories)}

    @property
    def n(self) -> int:
        """Number of values counted in bins (missing ones excluded)."""
        return int(self.counts.sum())

    def add(self, values: Iterable[Any] | FloatArray) -> None:
        """Count a batch of values (a numpy array is the fast path for numeric bins)."""
        if self.bins.kind == "numeric":
            self._add_numeric(values)
        else:
            self._add_categorical(values)

    def _add_numeric(self, values: Iterable[Any] | FloatArray) -> None:
        x = _as_float_array(values)
        ok = np.isfinite(x)
        self.missing += int(x.size - ok.sum())
        idx = np.searchsorted(np.asarray(self.bins.edges), x[ok], side="right")
        self.counts += np.bincount(idx, minlength=self.bins.size)

    def _add_categorical(self, values: Iterable[Any]) -> None:
        other = len(self.bins.categories)
        for v in values:
            if v is None:
                self.missing += 1
            else:
                self.counts[self._index.get(category_key(v), other)] += 1

    def merge(self, other: Histogram) -> Histogram:
        """A new histogram holding both sets of counts; bins must be identical."""
        if other.bins != self.bins:
            raise ValueError(
                "cannot merge histograms with different bins: "
                f"{self.bins.to_dict()} vs {other.bins.to_dict()}"
            )
        return Histogram(self.bins, self.counts + other.counts, self.missing + other.missing)

    def proportions(self) -> FloatArray:
        n = self.n
        if n == 0:
            raise ValueError("histogram is empty: no values to compare")
        return self.counts / float(n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bins": self.bins.to_dict(),
            "counts": self.counts.tolist(),
            "missing": self.missing,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        counts = np.asarray(data["counts"], dtype=np.int64)
        return cls(FrozenBins.from_dict(data["bins"]), counts, int(data.get("missing", 0)))


def _as_float_array(values: Iterable[Any] | FloatArray) -> FloatArray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        return values.astype(np.float64, copy=False).ravel()
    items = values if isinstance(values, list) else list(values)
    try:
        return np.asarray(items, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return np.fromiter((_to_float(v) for v in items), dtype=np.float64, count=len(items))


def _to_float(value: Any) -> float:
    if isinstance(value, int | float | str):
        try:
            return float(value)
        except (ValueError, OverflowError):
            return math.nan
    return math.nan


def _check_pair(ref: Histogram, cur: Histogram) -> None:
    if ref.bins != cur.bins:
        raise ValueError("reference and current histograms must share the same bins")


def _smoothed(h: Histogram, eps: float) -> FloatArray:
    p = h.proportions()
    p = np.where(p == 0.0, eps, p)
    out: FloatArray = p / p.sum()
    return out


def psi(ref: Histogram, cur: Histogram, eps: float = 1e-4) -> float:
    """Population stability index Σ (q − p)·ln(q / p).

    Empty bins get proportion ``eps`` and both vectors are renormalised to sum to 1, so the
    value equals KL(p‖q) + KL(q‖p) on the smoothed proportions.
    """
    _check_pair(ref, cur)
    p, q = _smoothed(ref, eps), _smoothed(cur, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(ref: Histogram, cur: Histogram) -> float:
    """Jensen–Shannon distance, base 2 (the square root of the divergence), in [0, 1]."""
    _check_pair(ref, cur)
    p, q = ref.proportions(), cur.proportions()
    m = (p + q) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_qm = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(math.sqrt(max((kl_pm + kl_qm) / 2.0, 0.0)))


def _cdf_gap(ref: Histogram, cur: Histogram) -> FloatArray:
    _check_pair(ref, cur)
    if ref.bins.kind != "numeric":
        raise ValueError("CDF-based distances need numeric bins")
    return np.abs(np.cumsum(ref.proportions()) - np.cumsum(cur.proportions()))[:-1]


def wasserstein_binned(ref: Histogram, cur: Histogram) -> float:
    """First Wasserstein distance between the binned distributions.

    Each bin's count sits at its representative point r_j (``FrozenBins.representatives``),
    so W = Σ_j |P_j − Q_j|·(r_{j+1} − r_j) with P, Q the cumulative proportions. Values
    beyond the reference range are measured at the range boundary.
    """
    r = ref.bins.representatives()
    return float(np.sum(_cdf_gap(ref, cur) * np.diff(r)))


def wasserstein_binned_normed(ref: Histogram, cur: Histogram) -> float:
    """``wasserstein_binned`` divided by max(reference std, 0.001), as Evidently norms it."""
    return wasserstein_binned(ref, cur) / max(ref.bins.std, _STD_FLOOR)


def ks_binned(ref: Histogram, cur: Histogram) -> float:
    """max_j |P_j − Q_j| over the bin edges: a lower bound of the two-sample KS statistic."""
    gap = _cdf_gap(ref, cur)
    return float(gap.max()) if gap.size else 0.0


def drift_state(value: float, warn: float = 0.1, alert: float = 0.25) -> DriftState:
    """Read a PSI value: below ``warn`` stable, up to ``alert`` minor, above major."""
    if value > alert:
        return "major"
    if value >= warn:
        return "minor"
    return "stable"


def drift_summary(
    ref: Histogram,
    cur: Histogram,
    warn: float = 0.1,
    alert: float = 0.25,
    min_count: int = 500,
) -> dict[str, Any]:
    """All distances for one field, with the PSI state, or ``insufficient`` below min_count."""
    out: dict[str, Any] = {"n": cur.n, "missing": cur.missing, "reference_n": ref.n}
    if cur.n < min_count or ref.n == 0:
        out["state"] = "insufficient"
        return out
    out["psi"] = psi(ref, cur)
    out["js"] = js_distance(ref, cur)
    if ref.bins.kind == "numeric":
        out["wasserstein"] = wasserstein_binned(ref, cur)
        out["wasserstein_normed"] = wasserstein_binned_normed(ref, cur)
        out["ks"] = ks_binned(ref, cur)
    out["state"] = drift_state(out["psi"], warn, alert)
    return out


class DriftAccumulator:
    """Per-field histograms of values pulled from request bodies by JSON path.

    Values are buffered per field and counted in numpy batches every ``batch`` bodies.

    >>> bins = {"$.x": FrozenBins.numeric(range(100))}
    >>> acc = DriftAccumulator(bins)
    >>> acc.observe({"x": 5}); acc.observe({"x": [7, 8]})
    >>> acc.histograms()["$.x"].n
    3
    """

    def __init__(self, bins: Mapping[str, FrozenBins], batch: int = 1024) -> None:
        self._fields = list(bins)
        self._paths = PathSet(self._fields)
        self._hist = {f: Histogram(b) for f, b in bins.items()}
        self._buf: list[list[Any]] = [[] for _ in self._fields]
        self._batch = batch
        self._pending = 0

    def observe(self, body: Any) -> None:
        """Take the monitored values out of one parsed request body."""
        self._paths.extend(body, self._buf)
        self._pending += 1
        if self._pending >= self._batch:
            self.flush()

    def flush(self) -> None:
        for field, buf in zip(self._fields, self._buf, strict=True):
            if buf:
                self._hist[field].add(buf)
                buf.clear()
        self._pending = 0

    def histograms(self) -> dict[str, Histogram]:
        self.flush()
        return dict(self._hist)

    def merge(self, other: DriftAccumulator) -> DriftAccumulator:
        """A new accumulator with both sets of counts (same fields and bins required)."""
        mine, theirs = self.histograms(), other.histograms()
        if mine.keys() != theirs.keys():
            raise ValueError("cannot merge accumulators over different fields")
        out = DriftAccumulator({f: h.bins for f, h in mine.items()}, self._batch)
        out._hist = {f: mine[f].merge(theirs[f]) for f in mine}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {f: h.to_dict() for f, h in self.histograms().items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftAccumulator:
        hists = {f: Histogram.from_dict(d) for f, d in data.items()}
        out = cls({f: h.bins for f, h in hists.items()})
        out._hist = hists
        return out


def reference_from_rows(
    rows: Iterable[Mapping[str, Any]],
    fields: Sequence[str],
    categorical: Sequence[str] = (),
    n_bins: int = 10,
    top_k: int = 20,
) -> dict[str, FrozenBins]:
    """Freeze bins for every path in ``fields`` ∪ ``categorical`` from reference rows.

    Paths in ``categorical`` get top-K category bins; the others get quantile bins (string
    cells, as read from CSV, are parsed as numbers).
    """
    wanted = list(dict.fromkeys([*fields, *categorical]))
    paths = {f: compile_path(f) for f in wanted}
    values: dict[str, list[Any]] = {f: [] for f in wanted}
    for row in rows:
        for f, p in paths.items():
            values[f].extend(p.values(row))
    cats = set(categorical)
    out: dict[str, FrozenBins] = {}
    for f in wanted:
        try:
            if f in cats:
                out[f] = FrozenBins.categorical(values[f], top_k)
            else:
                out[f] = FrozenBins.numeric(_as_float_array(values[f]), n_bins)
        except ValueError as exc:
            raise ValueError(f"reference field {f!r}: {exc}") from exc
    return out
