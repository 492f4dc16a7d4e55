"""Drift reference of a route: bins and reference histograms from ``drift.reference_file``,
read here (the core computes on rows; reading files is the comparator's, its only caller)."""

from __future__ import annotations

import csv
import importlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from shadowroute.core.config import Route
from shadowroute.core.drift import FrozenBins, Histogram, reference_from_rows
from shadowroute.core.drift_fields import PathSet

__all__ = ["load_reference", "read_rows", "reference_for"]


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


def read_rows(path: str | Path) -> Iterator[Mapping[str, Any]]:
    """Rows of a reference file by extension: .csv, .jsonl/.ndjson, .json (array), .parquet."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            yield from csv.DictReader(fh)
    elif suffix in (".jsonl", ".ndjson"):
        with p.open("rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield _json_row(line, p, lineno)
    elif suffix == ".json":
        data = orjson.loads(p.read_bytes())
        if not isinstance(data, list):
            raise ValueError(f"{p}: a .json reference must hold an array of objects")
        yield from data
    elif suffix == ".parquet":
        yield from _parquet_rows(p)
    else:
        raise ValueError(
            f"{p}: unsupported reference format {suffix!r} (csv, jsonl, json, parquet)"
        )


def _json_row(line: bytes, path: Path, lineno: int) -> Mapping[str, Any]:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object")
    return row


def _parquet_rows(path: Path) -> Iterator[Mapping[str, Any]]:
    try:
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ValueError(
            f"{path}: reading Parquet needs the optional 'pyarrow' package; "
            "install it or convert the reference to CSV or JSONL"
        ) from exc
    table = pq.read_table(path)
    yield from table.to_pylist()


def load_reference(
    path: str | Path,
    fields: Sequence[str],
    categorical: Sequence[str] = (),
    n_bins: int = 10,
    top_k: int = 20,
) -> dict[str, FrozenBins]:
    """``reference_from_rows`` over the rows of a reference file."""
    return reference_from_rows(read_rows(path), fields, categorical, n_bins, top_k)
