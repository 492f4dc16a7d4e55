"""Watching production on one partition: quality per window, label freshness and drift.

Fed once per request instance (production-only records and pair records alike; the engine
makes sure a request seen with several candidates counts once). Mergeable like the candidate
scores; drift histograms merge only when their bins are the same (see ``DriftField``).

Degradation compares the latest ``routes[].monitor.current_windows`` windows with the first
``reference_windows`` that have labelled data (a fixed reference, which catches slow decay);
drift bins are frozen from
``Route.drift.reference_file`` when given, else from the first ``FREEZE_AFTER`` values of
each field seen on the partition, which also form the reference histogram.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from shadowroute.comparator.aggregates import WINDOW_MS
from shadowroute.comparator.documents import DriftAuto, JsonObject, ProductionSummary
from shadowroute.core.assessments import EmbeddingRecord, EmbedJob
from shadowroute.core.config import EmbeddingDrift, Monitor
from shadowroute.core.drift import FrozenBins, Histogram, drift_summary
from shadowroute.core.drift_fields import FieldPath, PathSet, compile_path, flatten_scalars
from shadowroute.core.embedding import (
    EmbeddingModel,
    EmbeddingSums,
    NullDistribution,
    embed_items,
    embedding_drift_summary,
    split_items,
)
from shadowroute.core.judging import assess_sampled
from shadowroute.core.monitor import LabelCoverage, LabelDelay, WindowedQuality

__all__ = [
    "EMBEDDING_PREFIX",
    "OUTPUT_FIELD",
    "DriftBatch",
    "DriftField",
    "EmbeddingField",
    "EmbeddingPlan",
    "ProductionState",
    "add_endpoint_vectors",
    "new_production_state",
]

FREEZE_AFTER: Final = 1000
MAX_FIELD_NAME: Final = 200
"""Automatic drift: a field path longer than this is counted, never tracked."""
MAX_UNTRACKED_EXAMPLES: Final = 10
OUTPUT_FIELD: Final = "output"
"""The drift field name of production's own (numeric) output."""
EMBEDDING_PREFIX: Final = "embedding:"
"""Embedding drift fields are named ``embedding:<path>`` and ``embedding:output``."""


@dataclass
class DriftField:
    """One monitored field: bins (once frozen), the reference, and per-window histograms.

    Before the bins are frozen the first values are kept (at most ``FREEZE_AFTER``)."""

    categorical: bool
    bins: FrozenBins | None = None
    reference: Histogram | None = None
    pending: list[Any] = field(default_factory=list)
    windows: dict[int, Histogram] = field(default_factory=dict)
    conflicts: int = 0
    """Partitions left out of a merge because their bins differ (only in merged views)."""

    def add(self, window: int, values: list[Any]) -> None:
        if not values:
            return
        if self.bins is None:
            self.pending.extend(values)
            if len(self.pending) >= FREEZE_AFTER:
                self._freeze()
            return
        hist = self.windows.get(window)
        if hist is None:
            hist = self.windows[window] = Histogram(self.bins)
        hist.add(values)

    def _freeze(self) -> None:
        values, self.pending = self.pending, []
        try:
            self.bins = (
                FrozenBins.categorical(values)
                if self.categorical
                else FrozenBins.numeric([v for v in _floats(values)])
            )
        except ValueError:
            return  # nothing usable yet: start again
        self.reference = Histogram(self.bins)
        self.reference.add(values)

    def merge(self, other: DriftField) -> DriftField:
        if self.bins is None and other.bins is None:
            return DriftField(self.categorical, pending=self.pending + other.pending)
        if self.bins is None:
            return other.copy()
        if other.bins is None:
            return self.copy()
        if self.bins != other.bins:
            # Partitions froze their own bins (no reference file): not mergeable; keep the
            # side with the larger reference and say so.
            ref_a = self.reference.n if self.reference is not None else 0
            ref_b = other.reference.n if other.reference is not None else 0
            keep = self.copy() if ref_a >= ref_b else other.copy()
            keep.conflicts = self.conflicts + other.conflicts + 1
            return keep
        assert self.reference is not None and other.reference is not None
        wins = dict(self.windows)
        for w, h in other.windows.items():
            wins[w] = wins[w].merge(h) if w in wins else h
        return DriftField(
            self.categorical,
            self.bins,
            self.reference.merge(other.reference),
            [],
            wins,
            self.conflicts + other.conflicts,
        )

    def copy(self) -> DriftField:
        return DriftField.from_dict(self.to_dict())

    def summary(self, warn: float, alert: float) -> JsonObject:
        if self.bins is None or self.reference is None:
            return {"state": "collecting_reference", "reference_n": len(self.pending)}
        latest = max(self.windows) if self.windows else None
        out: JsonObject = {"bins": self.bins.labels(), "window": latest}
        if self.conflicts:
            out["partitions_with_other_bins"] = self.conflicts
        if latest is None:
            return out | {"state": "insufficient", "n": 0, "reference_n": self.reference.n}
        return out | drift_summary(self.reference, self.windows[latest], warn, alert)

    def to_dict(self) -> dict[str, Any]:
        return {
            "categorical": self.categorical,
            "bins": None if self.bins is None else self.bins.to_dict(),
            "reference": None if self.reference is None else self.reference.to_dict(),
            "pending": list(self.pending),
            "windows": [[w, h.counts.tolist(), h.missing] for w, h in sorted(self.windows.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftField:
        bins = None if data["bins"] is None else FrozenBins.from_dict(data["bins"])
        ref = None if data["reference"] is None else Histogram.from_dict(data["reference"])
        out = cls(bool(data["categorical"]), bins, ref, list(data["pending"]))
        if bins is not None:
            for w, counts, missing in data["windows"]:
                out.windows[int(w)] = Histogram.from_dict(
                    {"bins": data["bins"], "counts": counts, "missing": missing}
                )
        return out


@dataclass
class EmbeddingField:
    """One field's embedding drift: the reference sums (the first ``reference_size`` items,
    with second moments) and per-window sums of the later items, plus what was left out."""

    reference: EmbeddingSums
    windows: dict[int, EmbeddingSums] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    model: str = ""
    """The embedder and features the sums were made with (``EmbeddingModel.signature``):
    sums of another model do not add."""
    _cached_null: tuple[int, NullDistribution] | None = field(
        default=None, repr=False, compare=False
    )

    def add(self, window: int, x: Any, model: EmbeddingModel, reference_size: int) -> None:
        """Rows ``x`` (unit vectors) of one window, in arrival order."""
        if x.shape[0] == 0:
            return
        room = max(reference_size - self.reference.n, 0)
        if room:
            head = x[:room]
            self.reference.add(head, model.rff(head))
            x = x[room:]
            if x.shape[0] == 0:
                return
        sums = self.windows.get(window)
        if sums is None:
            sums = self.windows[window] = model.sums()
        sums.add(x, model.rff(x))

    def count(self, counts: Mapping[str, int]) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + v

    def merge(self, other: EmbeddingField) -> EmbeddingField:
        if other.model != self.model:
            # a partition not yet moved to a new configuration: keep the larger reference
            keep = self if self.reference.n >= other.reference.n else other
            out = keep.copy()
            out.counts["partitions_with_other_model"] = (
                self.counts.get("partitions_with_other_model", 0)
                + other.counts.get("partitions_with_other_model", 0)
                + 1
            )
            return out
        wins = {w: s.copy() for w, s in self.windows.items()}
        for w, s in other.windows.items():
            wins[w] = wins[w] + s if w in wins else s.copy()
        counts = dict(self.counts)
        for k, v in other.counts.items():
            counts[k] = counts.get(k, 0) + v
        return EmbeddingField(self.reference + other.reference, wins, counts, self.model)

    def copy(self) -> EmbeddingField:
        wins = {w: s.copy() for w, s in self.windows.items()}
        return EmbeddingField(self.reference.copy(), wins, dict(self.counts), self.model)

    def null(self) -> NullDistribution:
        """The reference's null distribution, drawn once per reference size."""
        if self._cached_null is None or self._cached_null[0] != self.reference.n:
            self._cached_null = (self.reference.n, NullDistribution.from_reference(self.reference))
        return self._cached_null[1]

    def summary(self, cfg: EmbeddingDrift) -> JsonObject:
        latest = max(self.windows) if self.windows else None
        ready = self.reference.n >= cfg.reference_size and latest is not None
        cur = self.windows[latest] if latest is not None else None
        enough = ready and cur is not None and cur.n >= max(cfg.min_count, 2)
        out: JsonObject = {"window": latest}
        out |= embedding_drift_summary(
            self.reference,
            cur,
            self.null() if enough else None,
            reference_size=cfg.reference_size,
            min_count=cfg.min_count,
            warn_alpha=cfg.warn_alpha,
            alert_alpha=cfg.alert_alpha,
        )
        out["counts"] = dict(sorted(self.counts.items()))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference.to_dict(),
            "windows": [[w, s.to_dict()] for w, s in sorted(self.windows.items())],
            "counts": dict(sorted(self.counts.items())),
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingField:
        return cls(
            EmbeddingSums.from_dict(data["reference"]),
            {int(w): EmbeddingSums.from_dict(d) for w, d in data["windows"]},
            {str(k): int(v) for k, v in data.get("counts", {}).items()},
            str(data.get("model", "")),
        )


class EmbeddingPlan:
    """A route's embedding drift, built once from ``routes[].drift.embedding``: the model
    (embedder and random features) and the compiled paths of the watched input fields.

    With an ``endpoint``, texts are not embedded here: each request's texts become an
    ``EmbedJob`` for the assessor, whose vectors come back as an ``EmbeddingRecord``."""

    __slots__ = ("cfg", "endpoint", "model", "names", "paths")

    def __init__(self, cfg: EmbeddingDrift) -> None:
        self.cfg = cfg
        self.endpoint = cfg.endpoint
        source = None if cfg.endpoint is None else f"{cfg.endpoint.url}#{cfg.endpoint.model}"
        self.model = EmbeddingModel(cfg.dims, cfg.features, cfg.bandwidth, cfg.seed, source)
        self.paths: list[FieldPath] = [compile_path(p) for p in dict.fromkeys(cfg.fields)]
        self.names = [EMBEDDING_PREFIX + p.text for p in self.paths]
        if cfg.outputs:
            self.names.append(EMBEDDING_PREFIX + OUTPUT_FIELD)

    def new_field(self) -> EmbeddingField:
        return EmbeddingField(self.model.sums(second=True), model=self.model.signature)


def _floats(values: list[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


@dataclass
class ProductionState:
    """Production's own monitoring for one route on one partition."""

    route: str
    metric: str
    window: str
    quality: WindowedQuality
    coverage: LabelCoverage
    delay: LabelDelay = field(default_factory=LabelDelay)
    drift: dict[str, DriftField] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    """requests, instances, errors, labelled, invalid_labelled, unlabelled_expired."""
    revision: dict[str, Any] | None = None
    """Production's current revision: ``id`` and ``url``, ``version``, ``revision``."""
    revision_since: int = 0
    """When it started (ms): the degradation reference restarts at the first window that
    starts at or after it."""
    revision_last: int = 0
    """The newest record timestamp of the current revision (ms)."""
    auto_max: int = 0
    """Automatic drift (``drift.auto``): input fields tracked at most (0: off); the engine
    sets it from the configuration."""
    auto_fields: list[str] = field(default_factory=list)
    """Input fields found and tracked by automatic drift, in the order first seen."""
    untracked_examples: list[str] = field(default_factory=list)
    """The first few field paths automatic drift counted without tracking them."""
    embedding: dict[str, EmbeddingField] = field(default_factory=dict)
    """Embedding drift (``drift.embedding``) per field: ``embedding:<path>``,
    ``embedding:output``."""

    def note_revisions(self, seen: Mapping[str, tuple[Any, int, int]]) -> bool:
        """Production revisions seen in a batch: id -> (identity, first ts, last ts). The one
        seen last becomes current when it is newer than the current one's newest record (a
        late record of an older revision changes nothing). Returns whether anything changed.

        >>> s = new_production_state("r", "accuracy", "hour", [], [], None)
        >>> s.note_revisions({"a": ({}, 5, 9)}), s.revision_since
        (True, 0)
        >>> s.note_revisions({"b": ({}, 20, 30), "a": ({}, 8, 25)}), s.revision["id"]
        (True, 'b')
        >>> s.revision_since, s.note_revisions({"a": ({}, 10, 12)}), s.revision["id"]
        (20, False, 'b')
        """
        if not seen:
            return False
        rid = max(seen, key=lambda k: (seen[k][2], k))
        ident, first, last = seen[rid]
        if self.revision is None:
            # the first revision seen (or state written before revisions): no restart
            self.revision = {"id": rid, **(ident or {})}
            self.revision_last = last
            return True
        if rid == self.revision.get("id"):
            if last > self.revision_last:
                self.revision_last = last
                return True
            return False
        if last <= self.revision_last:
            return False
        self.revision = {"id": rid, **(ident or {})}
        self.revision_since = first
        self.revision_last = last
        self._count("revision_changes")
        return True

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    @property
    def window_ms(self) -> int:
        return WINDOW_MS[self.window]

    def add_request(self, ts: int, error: str | None, instances: int) -> None:
        self._count("requests")
        self._count("instances", instances)
        if error is not None:
            self._count("errors")
        self.coverage.add_predictions([ts] * instances)

    def add_requests(self, reqs: Sequence[tuple[int, bool, int]]) -> None:
        """(ts, production failed, instances) of requests, in arrival order."""
        instances = sum([r[2] for r in reqs])
        self._count("requests", len(reqs))
        self._count("instances", instances)
        failed = sum([1 for r in reqs if r[1]])
        if failed:
            self._count("errors", failed)
        if instances == len(reqs):  # one instance each
            self.coverage.add_predictions([r[0] for r in reqs])
        else:
            self.coverage.add_predictions([r[0] for r in reqs for _ in range(r[2])])

    def add_drift_items(self, name: str, items: Sequence[tuple[int, Any]]) -> None:
        """(window start, value) of one field, in arrival order."""
        f = self.drift.get(name)
        if f is None:
            return
        start = 0
        for i in range(1, len(items) + 1):
            if i == len(items) or items[i][0] != items[start][0]:
                f.add(items[start][0], [v for _, v in items[start:i]])
                start = i

    def add_drift(self, ts: int, fields: Mapping[str, list[Any]]) -> None:
        w = ts - ts % self.window_ms
        for name, values in fields.items():
            f = self.drift.get(name)
            if f is not None:
                f.add(w, values)

    def add_embedding(
        self, name: str, window: int, x: Any, plan: EmbeddingPlan, counts: Mapping[str, int]
    ) -> None:
        """Unit vectors ``x`` of one embedding drift field at ``window``, and what happened to
        the values (see ``core.embedding.ITEM_OUTCOMES``)."""
        f = self.embedding.get(name)
        if f is None or f.model != plan.model.signature:
            if f is not None:  # dims, features, bandwidth or seed changed: start again
                self._count("embedding_drift_restarts")
            f = self.embedding[name] = plan.new_field()
        f.count(counts)
        f.add(window, x, plan.model, plan.cfg.reference_size)

    def add_auto(self, window: int, name: str, values: list[Any]) -> None:
        """Values of an input field found by automatic drift: tracked while there is room
        (``auto_max`` fields), else counted in ``drift_untracked_values``."""
        f = self.drift.get(name)
        if f is None:
            if len(self.auto_fields) >= self.auto_max or len(name) > MAX_FIELD_NAME:
                self._count("drift_untracked_values", len(values))
                if (
                    len(self.untracked_examples) < MAX_UNTRACKED_EXAMPLES
                    and name not in self.untracked_examples
                ):
                    self.untracked_examples.append(name[:MAX_FIELD_NAME])
                return
            first = values[0]
            numeric = isinstance(first, int | float) and not isinstance(first, bool)
            f = self.drift[name] = DriftField(categorical=not numeric)
            self.auto_fields.append(name)
        f.add(window, values)

    def add_labelled(
        self, pred_ts: Sequence[int], label_ts: Sequence[int], values: Sequence[float]
    ) -> None:
        """Quality values x of labelled predictions, at their prediction timestamps."""
        if not pred_ts:
            return
        self._count("labelled", len(pred_ts))
        self.quality.add_batch(list(pred_ts), list(values))
        self.coverage.add_labelled(list(pred_ts))
        self.delay.add([lt - pt for pt, lt in zip(pred_ts, label_ts, strict=True)])

    def merge(self, other: ProductionState) -> ProductionState:
        counts = dict(self.counts)
        for k, v in other.counts.items():
            counts[k] = counts.get(k, 0) + v
        auto = list(dict.fromkeys([*self.auto_fields, *other.auto_fields]))
        cap = max(self.auto_max, other.auto_max)
        if cap and len(auto) > cap:
            # partitions found different fields: the first ``cap`` stay in the merged view
            counts["drift_fields_left_out"] = counts.get("drift_fields_left_out", 0) + (
                len(auto) - cap
            )
        kept = set(auto[:cap] if cap else auto)
        drift: dict[str, DriftField] = {}
        for k, f in self.drift.items():
            if k in other.drift:
                drift[k] = f.merge(other.drift[k])
            elif k in kept:
                drift[k] = f.copy()
        for k, f in other.drift.items():
            if k not in drift and k in kept:
                drift[k] = f.copy()
        examples = list(dict.fromkeys([*self.untracked_examples, *other.untracked_examples]))
        embedding: dict[str, EmbeddingField] = {}
        for k, e in self.embedding.items():
            embedding[k] = e.merge(other.embedding[k]) if k in other.embedding else e.copy()
        for k, e in other.embedding.items():
            if k not in embedding:
                embedding[k] = e.copy()
        return ProductionState(
            route=self.route,
            metric=self.metric,
            window=self.window,
            quality=self.quality.merge(other.quality),
            coverage=self.coverage.merge(other.coverage),
            delay=self.delay.merge(other.delay),
            drift=drift,
            counts=counts,
            **_merged_revision(self, other),
            auto_max=cap,
            auto_fields=[k for k in auto if k in kept],
            untracked_examples=examples[:MAX_UNTRACKED_EXAMPLES],
            embedding=embedding,
        )

    def degradation(self, alpha: float, monitor: Monitor | None = None) -> JsonObject:
        m = monitor or Monitor.model_validate({})
        since = self.revision_since
        wins = [w for w in self.quality.windows() if w >= since and self.quality.sums([w]).n > 0]
        ref = wins[: m.reference_windows]
        cur = list(wins[m.reference_windows :])[-m.current_windows :]
        out = self.quality.degradation(
            current=cur,
            reference=ref,
            alpha=alpha,
            margin=m.degradation_margin,
            min_n=m.min_labelled,
        )
        if not cur:
            out["note"] = (
                f"the reference is the first {m.reference_windows} windows with labels; "
                "no later window yet"
            )
        if since:
            out["reference_since"] = since
        return out

    def summary(
        self,
        alpha: float,
        warn: float,
        alert: float,
        monitor: Monitor | None = None,
        embedding: EmbeddingDrift | None = None,
    ) -> ProductionSummary:
        """``embedding``: the route's ``drift.embedding`` (its fields' summaries join
        ``drift``, named ``embedding:<path>``; none: left out)."""
        drift = {k: json_safe(f.summary(warn, alert)) for k, f in self.drift.items()}
        if embedding is not None:
            for k, e in self.embedding.items():
                drift[k] = json_safe(e.summary(embedding))
        return {
            "route": self.route,
            "metric": self.metric,
            "window": self.window,
            "counts": dict(sorted(self.counts.items())),
            "revision": self.revision,
            "revision_since": self.revision_since or None,
            "quality": [
                {"start": q["start"], "n": q["n"], "value": q["value"]}
                for q in self.quality.series()
            ],
            "degradation": json_safe(self.degradation(alpha, monitor)),
            "label_delay_ms": json_safe(self.delay.summary()),
            "label_coverage": json_safe(self.coverage.series()),
            "drift": dict(sorted(drift.items())),
            "drift_auto": self._auto_summary(),
        }

    def _auto_summary(self) -> DriftAuto:
        """What automatic drift tracks and what it counted without tracking."""
        return {
            "enabled": self.auto_max > 0,
            "max_fields": self.auto_max,
            "fields": list(self.auto_fields),
            "untracked_values": self.counts.get("drift_untracked_values", 0),
            "untracked_examples": list(self.untracked_examples),
            "too_deep_values": self.counts.get("drift_too_deep_values", 0),
            "fields_left_out_of_merge": self.counts.get("drift_fields_left_out", 0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "metric": self.metric,
            "window": self.window,
            "quality": self.quality.to_dict(),
            "coverage": self.coverage.to_dict(),
            "delay": self.delay.to_dict(),
            "drift": {k: f.to_dict() for k, f in self.drift.items()},
            "counts": dict(sorted(self.counts.items())),
            "revision": self.revision,
            "revision_since": self.revision_since,
            "revision_last": self.revision_last,
            "auto_max": self.auto_max,
            "auto_fields": list(self.auto_fields),
            "untracked_examples": list(self.untracked_examples),
        } | self._embedding_dict()

    def _embedding_dict(self) -> dict[str, Any]:
        """Embedding drift's sums; left out when there is none (states written before it
        load to the same bytes)."""
        if not self.embedding:
            return {}
        return {"embedding": {k: f.to_dict() for k, f in sorted(self.embedding.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProductionState:
        return cls(
            route=str(data["route"]),
            metric=str(data["metric"]),
            window=str(data["window"]),
            quality=WindowedQuality.from_dict(data["quality"]),
            coverage=LabelCoverage.from_dict(data["coverage"]),
            delay=LabelDelay.from_dict(data["delay"]),
            drift={k: DriftField.from_dict(v) for k, v in data["drift"].items()},
            counts={str(k): int(v) for k, v in data["counts"].items()},
            revision=data.get("revision"),
            revision_since=int(data.get("revision_since", 0)),
            revision_last=int(data.get("revision_last", 0)),
            auto_max=int(data.get("auto_max", 0)),
            auto_fields=[str(k) for k in data.get("auto_fields", [])],
            untracked_examples=[str(k) for k in data.get("untracked_examples", [])],
            embedding={
                str(k): EmbeddingField.from_dict(v) for k, v in data.get("embedding", {}).items()
            },
        )


def _merged_revision(a: ProductionState, b: ProductionState) -> dict[str, Any]:
    """The current revision of two partitions' states: the one with the newer record; when
    both have it, it started at the earlier of their starts."""
    if b.revision is None or (a.revision is not None and a.revision_last > b.revision_last):
        newer, older = a, b
    else:
        newer, older = b, a
    since = newer.revision_since
    same = older.revision is not None and newer.revision is not None
    if same and older.revision["id"] == newer.revision["id"]:  # type: ignore[index]
        since = min(since, older.revision_since)
    return {
        "revision": newer.revision,
        "revision_since": since,
        "revision_last": max(a.revision_last, b.revision_last),
    }


def json_safe(obj: Any) -> Any:
    """NaN and infinities as null, so the result is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def new_production_state(
    route: str,
    metric: str,
    window: str,
    fields: Sequence[str],
    categorical: Sequence[str],
    reference: Mapping[str, FrozenBins] | None,
    reference_rows: Mapping[str, Histogram] | None = None,
    embedding: EmbeddingPlan | None = None,
) -> ProductionState:
    """An empty state; ``reference`` holds bins frozen from a reference file (if any);
    ``embedding`` the route's embedding drift (if any)."""
    state = ProductionState(
        route=route,
        metric=metric,
        window=window,
        quality=WindowedQuality(metric, WINDOW_MS[window]),
        coverage=LabelCoverage(WINDOW_MS[window]),
    )
    cats = set(categorical)
    for name in [*dict.fromkeys([*fields, *categorical]), OUTPUT_FIELD]:
        f = DriftField(categorical=name in cats)
        if reference is not None and name in reference:
            f.bins = reference[name]
            f.reference = (
                reference_rows[name]
                if reference_rows is not None and name in reference_rows
                else Histogram(f.bins)
            )
        state.drift[name] = f
    if embedding is not None:
        for name in embedding.names:
            state.embedding[name] = embedding.new_field()
    return state


class DriftBatch:
    """One batch's drift values of a route: per field a flat list, with the window of each run
    of records, so a batch costs one list append per value and one ``DriftField.add`` per
    (field, window run) instead of a tuple per value.

    Fields are the input paths (``names``, in ``PathSet`` order; none when ``paths`` is
    ``None``) followed by ``OUTPUT_FIELD``. ``apply`` adds exactly what
    ``ProductionState.add_drift_items`` would add for the same (window, value) items in the
    same order."""

    __slots__ = ("_auto", "_auto_depth", "_deep", "_emb", "_embed", "_explicit", "_names", "_out",
                 "_paths", "_runs", "_values", "jobs")  # fmt: skip

    def __init__(
        self,
        paths: PathSet | None,
        names: Sequence[str] = (),
        auto_depth: int = 0,
        embed: EmbeddingPlan | None = None,
    ) -> None:
        self._paths = paths
        self._embed = embed
        """Embedding drift: per request, each field's selected values (kept whole), with the
        request's id and time (for an endpoint's jobs)."""
        self._emb: list[tuple[int, int, list[Any], str, int]] = []
        self.jobs: list[EmbedJob] = []
        """With an endpoint: the texts to embed, per request (filled by ``apply``)."""
        self._auto_depth = auto_depth
        """Automatic drift: every scalar input field down to this depth (0: off)."""
        self._auto: list[tuple[int, dict[str, list[Any]]]] = []
        self._deep = 0
        self._explicit = frozenset(names)
        n = len(paths.paths) if paths is not None else 0
        if len(names) != n:
            raise ValueError("one name per path")
        self._names = [*names, OUTPUT_FIELD]
        self._values: list[list[Any]] = [[] for _ in range(n + 1)]
        self._out = self._values[n]
        self._runs: list[tuple[int, list[int]]] = []

    def add(
        self, window: int, doc: Any, output: list[Any] | None, rid: str = "", ts: int = 0
    ) -> None:
        """One request: its input body (``doc``) and production's output, at ``window``
        (``rid`` and ``ts``: its id and time, for embedding drift's endpoint)."""
        runs = self._runs
        if not runs or runs[-1][0] != window:
            runs.append((window, [len(v) for v in self._values]))
        if doc is not None and self._paths is not None:
            self._paths.extend(doc, self._values)
        if doc is not None and self._auto_depth:
            auto = self._auto
            if not auto or auto[-1][0] != window:
                auto.append((window, {}))
            self._deep += flatten_scalars(doc, self._auto_depth, auto[-1][1])
        if output:
            _numeric_outputs(output, self._out)
        embed = self._embed
        if embed is not None:
            emb = self._emb
            if doc is not None:
                for i, path in enumerate(embed.paths):
                    found = path.nodes(doc)
                    if found:
                        emb.append((window, i, found, rid, ts))
            if output and embed.cfg.outputs:
                texts = [v for v in output if isinstance(v, str)]
                if texts:
                    emb.append((window, len(embed.paths), texts, rid, ts))

    def apply(self, state: ProductionState) -> None:
        bounds = [starts for _, starts in self._runs[1:]]
        bounds.append([len(v) for v in self._values])
        for i, name in enumerate(self._names):
            f = state.drift.get(name)
            if f is None:
                continue
            values = self._values[i]
            # consecutive runs of the same window, skipping runs without a value of this field
            window: int | None = None
            start = end = 0
            for (w, starts), ends in zip(self._runs, bounds, strict=True):
                lo, hi = starts[i], ends[i]
                if lo == hi:
                    continue
                if w != window:
                    if window is not None:
                        f.add(window, values[start:end])
                    window, start = w, lo
                end = hi
            if window is not None:
                f.add(window, values[start:end])
        explicit = self._explicit
        for w, found in self._auto:
            for name, vals in found.items():
                if name not in explicit:
                    state.add_auto(w, name, vals)
        if self._deep:
            state.counts["drift_too_deep_values"] = (
                state.counts.get("drift_too_deep_values", 0) + self._deep
            )
        if self._embed is not None and self._emb:
            if self._embed.endpoint is not None:
                self.jobs = _endpoint_embedding(self._embed, self._emb, state)
            else:
                _apply_embedding(self._embed, self._emb, state)


Run = list[tuple[list[Any], str, int]]
"""One field's values of one window, in arrival order, with their request id and time."""


def _window_runs(
    items: list[tuple[int, int, list[Any], str, int]], field_index: int
) -> list[tuple[int, Run]]:
    """The values of one field, in arrival order, cut into runs of one window."""
    runs: list[tuple[int, Run]] = []
    for w, f, values, rid, ts in items:
        if f != field_index:
            continue
        if not runs or runs[-1][0] != w:
            runs.append((w, []))
        runs[-1][1].append((values, rid, ts))
    return runs


def _apply_embedding(
    plan: EmbeddingPlan, items: list[tuple[int, int, list[Any], str, int]], state: ProductionState
) -> None:
    """Embed each field's values per run of one window (in arrival order) and add them."""
    cfg = plan.cfg
    for i, name in enumerate(plan.names):
        for window, run in _window_runs(items, i):
            texts: list[str] = []
            vectors: list[list[float]] = []
            counts: dict[str, int] = {}
            for values, _, _ in run:
                split_items(values, cfg.dims, cfg.max_chars, cfg.max_items, texts, vectors, counts)
            x = embed_items(plan.model, texts, vectors, counts)
            state.add_embedding(name, window, x, plan, counts)


def _endpoint_embedding(
    plan: EmbeddingPlan, items: list[tuple[int, int, list[Any], str, int]], state: ProductionState
) -> list[EmbedJob]:
    """With an endpoint: vectors already in the request are added here (per field and run of
    one window, in arrival order), texts become one ``EmbedJob`` per sampled request (all its
    fields' texts); what was left out is counted now, the vectors come back later."""
    cfg = plan.cfg
    assert plan.endpoint is not None
    fraction = plan.endpoint.sample_fraction
    jobs: dict[str, tuple[int, dict[str, list[str]]]] = {}
    for i, name in enumerate(plan.names):
        for window, run in _window_runs(items, i):
            vectors: list[list[float]] = []
            counts: dict[str, int] = {}
            for values, rid, ts in run:
                texts: list[str] = []
                split_items(values, cfg.dims, cfg.max_chars, cfg.max_items, texts, vectors, counts)
                kept = [t for t in texts if t.strip()]
                if len(kept) < len(texts):
                    counts["empty"] = counts.get("empty", 0) + len(texts) - len(kept)
                if not kept:
                    continue
                if not assess_sampled(rid, fraction, "embedding_drift"):
                    counts["unsampled"] = counts.get("unsampled", 0) + len(kept)
                    continue
                job = jobs.get(rid)
                if job is None:
                    job = jobs[rid] = (ts, {})
                job[1].setdefault(name, []).extend(kept)
            x = embed_items(plan.model, [], vectors, counts)
            state.add_embedding(name, window, x, plan, counts)
    route = state.route
    return [
        EmbedJob(rid, route, ts, tuple((n, tuple(t)) for n, t in fields.items()))
        for rid, (ts, fields) in jobs.items()
    ]


def add_endpoint_vectors(
    state: ProductionState, plan: EmbeddingPlan, rec: EmbeddingRecord
) -> list[str]:
    """The vectors an embedding record brings, added to their fields at the window of the
    request's time (``rec.ts``); vectors of another length than ``dims``, zero or not finite
    are ``bad_vector``; texts without a vector (a failed or skipped call, or fewer vectors
    than texts) ``not_embedded``. Returns the names of fields the plan does not watch (left
    out)."""
    window = rec.ts - rec.ts % state.window_ms
    dims = plan.cfg.dims
    unknown: list[str] = []
    known = set(plan.names)
    for name, n, vectors in rec.fields:
        if name not in known:
            unknown.append(name)
            continue
        counts: dict[str, int] = {}
        rows = [list(v) for v in vectors if len(v) == dims]
        if len(rows) < len(vectors):
            counts["bad_vector"] = len(vectors) - len(rows)
        if n > len(vectors):
            counts["not_embedded"] = n - len(vectors)
        x = embed_items(plan.model, [], rows, counts)
        state.add_embedding(name, window, x, plan, counts)
    if rec.calls:
        state.counts["embedding_drift_calls"] = (
            state.counts.get("embedding_drift_calls", 0) + rec.calls
        )
    return unknown


def _numeric_outputs(out: list[Any], dst: list[Any]) -> None:
    """Production's numeric outputs (the positive-class probability of a two-class vector)."""
    for v in out:
        if isinstance(v, int | float) and not isinstance(v, bool):
            dst.append(v)
        elif isinstance(v, list) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
            dst.append(v[1])


def drift_paths(fields: Sequence[str], categorical: Sequence[str]) -> PathSet:
    """The compiled paths of every monitored input field, in ``new_production_state`` order."""
    return PathSet(list(dict.fromkeys([*fields, *categorical])))
