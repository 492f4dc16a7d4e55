"""API routes and Prometheus metrics for scores, verdicts and production monitoring.

``score_routes(reader)`` returns the aiohttp route definitions to add to the control plane;
``ScoresCollector(reader)`` exports the comparator's figures at scrape time. Both read through
``ScoresReader`` only. ``COMPARATOR_METRICS`` lists every family the collector exports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shadowroute.api.app import error, json_response
from shadowroute.comparator.reader import NotFound, ScoresReader

__all__ = ["COMPARATOR_METRICS", "ScoresCollector", "score_routes"]

COMPARATOR_METRICS = (
    "shadowroute_verdict",
    "shadowroute_candidate_metric_estimate",
    "shadowroute_candidate_metric_lower",
    "shadowroute_candidate_metric_upper",
    "shadowroute_candidate_pairs_total",
    "shadowroute_candidate_labelled_total",
    "shadowroute_orphan_pairs_total",
    "shadowroute_orphan_labels_total",
    "shadowroute_deadletter_records_total",
    "shadowroute_production_quality",
    "shadowroute_production_degraded",
    "shadowroute_production_degradation_estimate",
    "shadowroute_drift_psi",
    "shadowroute_drift_state",
    "shadowroute_label_delay_seconds",
    "shadowroute_label_coverage_ratio",
    "shadowroute_duplicate_labels_total",
    "shadowroute_revisions_evicted_total",
    "shadowroute_duplicate_pairs_total",
    "shadowroute_duplicate_ids_total",
    "shadowroute_conflicting_labels_total",
    "shadowroute_labels_waiting",
    "shadowroute_model_age_days",
    "shadowroute_classes_untracked_total",
    "shadowroute_drift_untracked_values_total",
)
VERDICTS = ("promote", "hold", "reject")

PARTITION_COUNTERS: tuple[tuple[str, str], ...] = (
    ("orphan_labels", "Labels whose pair did not come within the TTL."),
    (
        "duplicate_labels",
        "Labels re-sent with the same value for an already-labelled request key (counted, "
        "not joined again).",
    ),
    (
        "revisions_evicted",
        "Candidate revisions whose evidence was dropped from the state: beyond the "
        "revisions kept per candidate and partition, the oldest (history stays).",
    ),
    (
        "duplicate_pairs",
        "Pair records for a request id and candidate already counted within the TTL (a "
        "Kafka re-delivery, a reused id): skipped whole, never counted twice.",
    ),
    (
        "duplicate_ids",
        "Pairs under a request id (and candidate) already waiting for its label: kept out "
        "of the evidence, the first one stays.",
    ),
    (
        "conflicting_labels",
        "Labels for an already-labelled request key with another value (the first stays): "
        "a label source that contradicts itself.",
    ),
)
"""The partition counters exported as they are: (count name, help)."""
DRIFT_STATES = ("stable", "minor", "major", "insufficient", "collecting_reference")


def _handler(fn: Callable[[web.Request], dict[str, Any]]) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        try:
            return json_response(fn(request))
        except NotFound as exc:
            return error(404, str(exc))

    return handle


def score_routes(
    reader: ScoresReader, registry: Callable[[str, str], dict[str, Any] | None] | None = None
) -> list[web.RouteDef]:
    """GET endpoints of ARCHITECTURE.md "Public interfaces" served from ``reader``; a model's
    lineage also shows ``registry(route, model)`` (its model registry version) when given."""
    base = "/v1/routes/{route}/candidates/{candidate}"

    def rc(request: web.Request) -> tuple[str, str]:
        return request.match_info["route"], request.match_info["candidate"]

    return [
        web.get(
            f"{base}/decision",
            _handler(lambda r: reader.decision(*rc(r), r.query.get("revision") or None)),
        ),
        web.get(f"{base}/scores", _handler(lambda r: reader.scores(*rc(r)))),
        web.get(f"{base}/history", _handler(lambda r: reader.history(*rc(r)))),
        web.get(
            "/v1/routes/{route}/production",
            _handler(lambda r: reader.production(r.match_info["route"])),
        ),
        web.get(
            "/v1/models/{model}/lineage",
            _handler(lambda r: _lineage(reader, registry, r.match_info["model"])),
        ),
    ]


def _lineage(
    reader: ScoresReader,
    registry: Callable[[str, str], dict[str, Any] | None] | None,
    model: str,
) -> dict[str, Any]:
    out = reader.lineage(model)
    if registry is not None:
        out["registry"] = registry(out["route"], model)
    return out


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


class ScoresCollector(Collector):
    """Comparator figures as Prometheus metric families (see ``COMPARATOR_METRICS``)."""

    def __init__(self, reader: ScoresReader) -> None:
        self._reader = reader

    def collect(self) -> Iterator[Metric]:
        data = self._reader.overview()
        yield from self._candidates(data["candidates"])
        yield from self._partition(data["partition"])
        yield from self._production(data["production"])
        yield from self._models(data.get("models", []))

    def _models(self, models: list[dict[str, Any]]) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "shadowroute_model_age_days",
            "Days since the model's declared lineage.trained_through.",
            labels=["route", "model"],
        )
        for m in models:
            x = _num(m.get("age_days"))
            if x is not None:
                age.add_metric([m["route"], m["model"]], x)
        yield age

    def _candidates(self, cands: list[dict[str, Any]]) -> Iterator[Metric]:
        rc = ["route", "candidate"]
        verdict = GaugeMetricFamily(
            "shadowroute_verdict",
            "1 for the current verdict of a candidate.",
            labels=[*rc, "verdict"],
        )
        fams = {
            k: GaugeMetricFamily(
                f"shadowroute_candidate_metric_{k}",
                f"The {k} of a policy metric's paired difference (positive: candidate better).",
                labels=[*rc, "metric"],
            )
            for k in ("estimate", "lower", "upper")
        }
        pairs = CounterMetricFamily(
            "shadowroute_candidate_pairs", "Pair records scored.", labels=rc
        )
        labelled = CounterMetricFamily(
            "shadowroute_candidate_labelled", "Labelled pair instances scored.", labels=rc
        )
        orphans = CounterMetricFamily(
            "shadowroute_orphan_pairs",
            "Pair instances whose label did not come within the TTL.",
            labels=rc,
        )
        untracked = CounterMetricFamily(
            "shadowroute_classes_untracked",
            "Labelled instances with a class beyond the tracked ones (routes[].max_classes), "
            "counted in the per-class views' other bucket.",
            labels=rc,
        )
        for c in cands:
            lab = [c["route"], c["candidate"]]
            d = c["decision"]
            for v in VERDICTS:
                verdict.add_metric([*lab, v], 1.0 if d["verdict"] == v else 0.0)
            for name, ev in d["metrics"].items():
                for k, fam in fams.items():
                    x = _num(ev.get(k))
                    if x is not None:
                        fam.add_metric([*lab, name], x)
            pairs.add_metric(lab, d["pairs"])
            labelled.add_metric(lab, d["labelled"])
            orphans.add_metric(lab, c["orphan_pairs"])
            untracked.add_metric(lab, c.get("classes_untracked", 0))
        yield verdict
        yield from fams.values()
        yield from (pairs, labelled, orphans, untracked)

    def _partition(self, counts: dict[str, int]) -> Iterator[Metric]:
        for name, doc in PARTITION_COUNTERS:
            yield CounterMetricFamily(f"shadowroute_{name}", doc, value=counts.get(name, 0))
        yield _by_prefix(
            CounterMetricFamily(
                "shadowroute_deadletter_records",
                "Records sent to the dead letters.",
                labels=["reason"],
            ),
            counts,
            "deadletter:",
        )
        yield _by_prefix(
            GaugeMetricFamily(
                "shadowroute_labels_waiting",
                "Labels kept waiting for their pair, by route (empty: labels without a route); "
                "bounded by labels.max_waiting_per_route.",
                labels=["route"],
            ),
            counts,
            "waiting:",
        )

    def _production(self, prods: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        quality = GaugeMetricFamily(
            "shadowroute_production_quality",
            "Production's quality in the latest window with labels.",
            labels=["route", "metric"],
        )
        degraded = GaugeMetricFamily(
            "shadowroute_production_degraded",
            "1 when production is shown worse than its reference windows.",
            labels=["route"],
        )
        deg_est = GaugeMetricFamily(
            "shadowroute_production_degradation_estimate",
            "How much worse production is than its reference (metric units, positive: worse).",
            labels=["route", "metric"],
        )
        psi = GaugeMetricFamily(
            "shadowroute_drift_psi",
            "PSI of the latest window vs the reference.",
            labels=["route", "field"],
        )
        state = GaugeMetricFamily(
            "shadowroute_drift_state",
            "1 for a field's current drift state.",
            labels=["route", "field", "state"],
        )
        delay = GaugeMetricFamily(
            "shadowroute_label_delay_seconds",
            "Label delay quantiles.",
            labels=["route", "quantile"],
        )
        coverage = GaugeMetricFamily(
            "shadowroute_label_coverage_ratio",
            "Labelled share of predictions in the latest window.",
            labels=["route"],
        )
        untracked = CounterMetricFamily(
            "shadowroute_drift_untracked_values",
            "Input values automatic drift counted without tracking: their field is beyond "
            "drift.max_fields.",
            labels=["route"],
        )
        for route, p in prods.items():
            series = [s for s in p.get("quality", []) if s.get("n")]
            if series:
                v = _num(series[-1].get("value"))
                if v is not None:
                    quality.add_metric([route, p.get("metric", "")], v)
            deg = p.get("degradation") or {}
            degraded.add_metric([route], 1.0 if deg.get("state") == "degraded" else 0.0)
            est = _num(deg.get("estimate"))
            if est is not None:
                deg_est.add_metric([route, p.get("metric", "")], est)
            for field, f in (p.get("drift") or {}).items():
                x = _num(f.get("psi"))
                if x is not None:
                    psi.add_metric([route, field], x)
                for s in DRIFT_STATES:
                    state.add_metric([route, field, s], 1.0 if f.get("state") == s else 0.0)
            d = p.get("label_delay_ms") or {}
            for q in ("p50", "p90", "p99"):
                x = _num(d.get(q))
                if x is not None:
                    delay.add_metric([route, q], x / 1000.0)
            cov = [c for c in p.get("label_coverage", []) if c.get("predictions")]
            if cov:
                x = _num(cov[-1].get("coverage"))
                if x is not None:
                    coverage.add_metric([route], x)
            auto = p.get("drift_auto") or {}
            if auto.get("enabled"):
                untracked.add_metric([route], auto.get("untracked_values", 0))
        yield from (quality, degraded, deg_est, psi, state, delay, coverage, untracked)


def _by_prefix(
    family: CounterMetricFamily | GaugeMetricFamily, counts: dict[str, int], prefix: str
) -> CounterMetricFamily | GaugeMetricFamily:
    """``family`` with one sample per count named ``<prefix><label>``."""
    for k, v in sorted(counts.items()):
        if k.startswith(prefix):
            family.add_metric([k.removeprefix(prefix)], v)
    return family
