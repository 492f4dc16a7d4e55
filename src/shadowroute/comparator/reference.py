"""Drift reference of a route: bins and reference histograms from ``drift.reference_file``."""

from __future__ import annotations

from shadowroute.core.config import Route
from shadowroute.core.drift import FrozenBins, Histogram, read_rows, reference_from_rows
from shadowroute.core.drift_fields import PathSet

__all__ = ["reference_for"]


def reference_for(route: Route) -> tuple[dict[str, FrozenBins] | None, dict[str, Histogram] | None]:
    """Bins frozen from the reference file and the file's own histograms, or ``(None, None)``
    when the route names no file (bins are then frozen from the first values seen)."""
    d = route.drift
    if d.reference_file is None:
        return None, None
    rows = list(read_rows(d.reference_file))
    bins = reference_from_rows(rows, d.fields, d.categorical)
    names = list(bins)
    paths = PathSet(names)
    hists = {name: Histogram(b) for name, b in bins.items()}
    values: list[list[object]] = [[] for _ in names]
    for row in rows:
        paths.extend(row, values)
    for name, vals in zip(names, values, strict=True):
        hists[name].add(vals)
    return bins, hists
