"""API routes and Prometheus metrics for scores, verdicts and production monitoring.

``score_routes(reader)`` returns the aiohttp route definitions to add to the control plane;
``ScoresCollector(reader)`` exports the comparator's figures at scrape time. Both read through
``ScoresReader`` only. ``ScoresCollector.FAMILIES`` declares every family it exports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shadowroute.api.app import error, json_response
from shadowroute.comparator.documents import (
    Lineage,
    ModelAge,
    OverviewCandidate,
    Production,
    RegistryVersion,
)
from shadowroute.comparator.reader import NotFound, ScoresReader
from shadowroute.core.embedding import ITEM_OUTCOMES
from shadowroute.core.families import Family, describe

__all__ = ["ScoresCollector", "score_routes"]

VERDICTS = ("promote", "hold", "reject")

_RC = ("route", "candidate")
_VERDICT = Family(
    "shadowroute_verdict",
    "1 for the current verdict of a candidate.",
    "gauge",
    (*_RC, "verdict"),
)
_BOUNDS = tuple(
    Family(
        f"shadowroute_candidate_metric_{k}",
        f"The {k} of a policy metric's paired difference (positive: candidate better).",
        "gauge",
        (*_RC, "metric"),
    )
    for k in ("estimate", "lower", "upper")
)
_PAIRS = Family("shadowroute_candidate_pairs", "Pair records scored.", "counter", _RC)
_LABELLED = Family(
    "shadowroute_candidate_labelled", "Labelled pair instances scored.", "counter", _RC
)
_ORPHAN_PAIRS = Family(
    "shadowroute_orphan_pairs",
    "Pair instances whose label did not come within the TTL.",
    "counter",
    _RC,
)
_CLASSES_UNTRACKED = Family(
    "shadowroute_classes_untracked",
    "Labelled instances with a class beyond the tracked ones (routes[].max_classes), "
    "counted in the per-class views' other bucket.",
    "counter",
    _RC,
)
PARTITION_COUNTERS = tuple(
    Family(f"shadowroute_{name}", doc, "counter")
    for name, doc in (
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
        (
            "duplicate_assessments",
            "Assessments (judge, embedding similarity) of a pair already assessed within the "
            "TTL: kept out of the evidence, never counted twice.",
        ),
    )
)
"""The partition counters exported as they are: ``shadowroute_<count name>``."""
_DEADLETTER = Family(
    "shadowroute_deadletter_records", "Records sent to the dead letters.", "counter", ("reason",)
)
_LABELS_WAITING = Family(
    "shadowroute_labels_waiting",
    "Labels kept waiting for their pair, by route (empty: labels without a route); "
    "bounded by labels.max_waiting_per_route.",
    "gauge",
    ("route",),
)
_QUALITY = Family(
    "shadowroute_production_quality",
    "Production's quality in the latest window with labels.",
    "gauge",
    ("route", "metric"),
)
_DEGRADED = Family(
    "shadowroute_production_degraded",
    "1 when production is shown worse than its reference windows.",
    "gauge",
    ("route",),
)
_DEGRADATION = Family(
    "shadowroute_production_degradation_estimate",
    "How much worse production is than its reference (metric units, positive: worse).",
    "gauge",
    ("route", "metric"),
)
_PSI = Family(
    "shadowroute_drift_psi",
    "PSI of the latest window vs the reference.",
    "gauge",
    ("route", "field"),
)
_DRIFT_STATE = Family(
    "shadowroute_drift_state",
    "1 for a field's current drift state.",
    "gauge",
    ("route", "field", "state"),
)
_LABEL_DELAY = Family(
    "shadowroute_label_delay_seconds", "Label delay quantiles.", "gauge", ("route", "quantile")
)
_COVERAGE = Family(
    "shadowroute_label_coverage_ratio",
    "Labelled share of predictions in the latest window.",
    "gauge",
    ("route",),
)
_DRIFT_UNTRACKED = Family(
    "shadowroute_drift_untracked_values",
    "Input values automatic drift counted without tracking: their field is beyond "
    "drift.max_fields.",
    "counter",
    ("route",),
)
_EMB_MMD2 = Family(
    "shadowroute_embedding_drift_mmd2",
    "Embedding drift: MMD² (random Fourier features) of the latest window vs the reference.",
    "gauge",
    ("route", "field"),
)
_EMB_P = Family(
    "shadowroute_embedding_drift_p_value",
    "Embedding drift: p-value of the latest window against the reference (no drift).",
    "gauge",
    ("route", "field"),
)
_EMB_CENTROID = Family(
    "shadowroute_embedding_drift_centroid_shift",
    "Embedding drift: distance between the latest window's and the reference's centroids.",
    "gauge",
    ("route", "field"),
)
_EMB_VALUES = Family(
    "shadowroute_embedding_drift_values",
    "Embedding drift: values selected, by outcome (items embedded; truncated among them; "
    "empty, unusable, bad_vector, too_many left out; with an endpoint, unsampled and "
    "not_embedded).",
    "counter",
    ("route", "field", "outcome"),
)
_JUDGE_RESULTS = Family(
    "shadowroute_judge_results",
    "Pairs judged by the route's judge, by result (win, tie, loss: the candidate's; "
    "unparseable, failed, inconsistent).",
    "counter",
    (*_RC, "result"),
)
_JUDGE_CALLS = Family(
    "shadowroute_judge_calls", "Judge calls recorded (two per judged pair).", "counter", _RC
)
_EMBED_SIM = Family(
    "shadowroute_embedding_similarity_mean",
    "Mean cosine similarity of the two answers' embeddings.",
    "gauge",
    _RC,
)
_EMBED_PAIRS = Family(
    "shadowroute_embedding_similarity_pairs",
    "Pairs whose embedding similarity was measured.",
    "counter",
    _RC,
)
_EMBED_FAILED = Family(
    "shadowroute_embedding_similarity_failures",
    "Embedding calls that failed, by reason.",
    "counter",
    (*_RC, "reason"),
)
_MODEL_AGE = Family(
    "shadowroute_model_age_days",
    "Days since the model's declared lineage.trained_through.",
    "gauge",
    ("route", "model"),
)
_LLM_TTFT = Family(
    "shadowroute_llm_ttft_ms",
    "openai routes: time to first token per side (ms), p50 and p99.",
    "gauge",
    (*_RC, "side", "quantile"),
)
_LLM_ITL = Family(
    "shadowroute_llm_itl_ms",
    "openai routes: mean inter-token latency per side (ms).",
    "gauge",
    (*_RC, "side"),
)
_LLM_TOKENS = Family(
    "shadowroute_llm_tokens",
    "openai routes: tokens per side and direction (in: prompt, out: completion), from the "
    "answers' usage or counted.",
    "counter",
    (*_RC, "side", "direction"),
)
_LLM_COST = Family(
    "shadowroute_llm_cost_per_request",
    "openai routes: mean cost per request per side, in the configured price's units.",
    "gauge",
    (*_RC, "side"),
)
_LLM_RATIO = Family(
    "shadowroute_llm_ratio",
    "openai routes: candidate over production (ttft_p50, ttft_p99, cost).",
    "gauge",
    (*_RC, "ratio"),
)
DRIFT_STATES = ("stable", "minor", "major", "insufficient", "collecting_reference")


def _handler(
    fn: Callable[[web.Request], Mapping[str, object]],
) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        try:
            return json_response(fn(request))
        except NotFound as exc:
            return error(404, str(exc))

    return handle


def score_routes(
    reader: ScoresReader, registry: Callable[[str, str], RegistryVersion | None] | None = None
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
    registry: Callable[[str, str], RegistryVersion | None] | None,
    model: str,
) -> Lineage:
    out = reader.lineage(model)
    if registry is not None:
        out["registry"] = registry(out["route"], model)
    return out


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


class ScoresCollector(Collector):
    """Comparator figures as Prometheus metric families (declared in ``FAMILIES``)."""

    def __init__(self, reader: ScoresReader) -> None:
        self._reader = reader

    FAMILIES = (
        _VERDICT,
        *_BOUNDS,
        _PAIRS,
        _LABELLED,
        _ORPHAN_PAIRS,
        _CLASSES_UNTRACKED,
        *PARTITION_COUNTERS,
        _DEADLETTER,
        _LABELS_WAITING,
        _QUALITY,
        _DEGRADED,
        _DEGRADATION,
        _PSI,
        _DRIFT_STATE,
        _LABEL_DELAY,
        _COVERAGE,
        _DRIFT_UNTRACKED,
        _EMB_MMD2,
        _EMB_P,
        _EMB_CENTROID,
        _EMB_VALUES,
        _MODEL_AGE,
        _LLM_TTFT,
        _LLM_ITL,
        _LLM_TOKENS,
        _LLM_COST,
        _LLM_RATIO,
        _JUDGE_RESULTS,
        _JUDGE_CALLS,
        _EMBED_SIM,
        _EMBED_PAIRS,
        _EMBED_FAILED,
    )

    def describe(self) -> Iterator[Metric]:
        return describe(self.FAMILIES)

    def collect(self) -> Iterator[Metric]:
        data = self._reader.overview()
        yield from self._candidates(data["candidates"])
        yield from self._llm(data["candidates"])
        yield from self._partition(data["partition"])
        yield from self._production(data["production"])
        yield from self._models(data.get("models", []))

    def _models(self, models: list[ModelAge]) -> Iterator[Metric]:
        age = _MODEL_AGE.gauge()
        for m in models:
            x = _num(m.get("age_days"))
            if x is not None:
                age.add_metric([m["route"], m["model"]], x)
        yield age

    def _candidates(self, cands: list[OverviewCandidate]) -> Iterator[Metric]:
        verdict = _VERDICT.gauge()
        fams = {f.name.rsplit("_", 1)[1]: f.gauge() for f in _BOUNDS}
        pairs = _PAIRS.counter()
        labelled = _LABELLED.counter()
        orphans = _ORPHAN_PAIRS.counter()
        untracked = _CLASSES_UNTRACKED.counter()
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
        yield from self._assessed(cands)

    def _assessed(self, cands: list[OverviewCandidate]) -> Iterator[Metric]:
        """The judge's results and the embedding similarity (routes that have them)."""
        results = _JUDGE_RESULTS.counter()
        calls = _JUDGE_CALLS.counter()
        sim, sim_n, sim_failed = _EMBED_SIM.gauge(), _EMBED_PAIRS.counter(), _EMBED_FAILED.counter()
        for c in cands:
            lab = [c["route"], c["candidate"]]
            j = c.get("judge")
            if j is not None:
                for name, n in (
                    ("win", j["wins"]), ("tie", j["ties"]), ("loss", j["losses"]),
                    ("unparseable", j["unparseable"]), ("failed", j["failed"]),
                    ("inconsistent", j["inconsistent"]),
                ):  # fmt: skip
                    results.add_metric([*lab, name], n)
                calls.add_metric(lab, j["calls"])
            e = c.get("embedding_similarity")
            if e is not None:
                mean = _num(e["mean"])
                if mean is not None:
                    sim.add_metric(lab, mean)
                sim_n.add_metric(lab, e["n"])
                for reason, n in e["failures"].items():
                    sim_failed.add_metric([*lab, reason], n)
        yield from (results, calls, sim, sim_n, sim_failed)

    def _llm(self, cands: list[OverviewCandidate]) -> Iterator[Metric]:
        ttft, itl, tokens = _LLM_TTFT.gauge(), _LLM_ITL.gauge(), _LLM_TOKENS.counter()
        cost, ratio = _LLM_COST.gauge(), _LLM_RATIO.gauge()
        for c in cands:
            m = c.get("llm")
            if m is None:
                continue
            lab = [c["route"], c["candidate"]]
            for side in ("production", "candidate"):
                t = m["ttft_ms"][side]
                for q in ("p50", "p99"):
                    x = _num(t[q])
                    if x is not None:
                        ttft.add_metric([*lab, side, q], x)
                s = m[side]
                x = _num(s["itl_ms"])
                if x is not None:
                    itl.add_metric([*lab, side], x)
                tokens.add_metric([*lab, side, "in"], s["tokens_in"])
                tokens.add_metric([*lab, side, "out"], s["tokens_out"])
                x = _num(m["cost"][side])
                if x is not None:
                    cost.add_metric([*lab, side], x)
            for name, v in (
                ("ttft_p50", m["ttft_ms"]["ratio"]["p50"]),
                ("ttft_p99", m["ttft_ms"]["ratio"]["p99"]),
                ("cost", m["cost"]["ratio"]),
            ):
                x = _num(v)
                if x is not None:
                    ratio.add_metric([*lab, name], x)
        yield from (ttft, itl, tokens, cost, ratio)

    def _partition(self, counts: dict[str, int]) -> Iterator[Metric]:
        for f in PARTITION_COUNTERS:
            yield f.counter(counts.get(f.name.removeprefix("shadowroute_"), 0))
        yield _by_prefix(_DEADLETTER.counter(), counts, "deadletter:")
        yield _by_prefix(_LABELS_WAITING.gauge(), counts, "waiting:")

    def _production(self, prods: dict[str, Production]) -> Iterator[Metric]:
        quality = _QUALITY.gauge()
        degraded = _DEGRADED.gauge()
        deg_est = _DEGRADATION.gauge()
        psi = _PSI.gauge()
        state = _DRIFT_STATE.gauge()
        delay = _LABEL_DELAY.gauge()
        coverage = _COVERAGE.gauge()
        untracked = _DRIFT_UNTRACKED.counter()
        emb = {"mmd2": _EMB_MMD2.gauge(), "p_value": _EMB_P.gauge()}
        emb["centroid_shift"] = _EMB_CENTROID.gauge()
        emb_values = _EMB_VALUES.counter()
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
                if f.get("kind") == "embedding":
                    for key, fam in emb.items():
                        x = _num(f.get(key))
                        if x is not None:
                            fam.add_metric([route, field], x)
                    counts = f.get("counts")
                    if isinstance(counts, dict):
                        for outcome in ITEM_OUTCOMES:
                            n = counts.get(outcome, 0)
                            emb_values.add_metric([route, field, outcome], n)
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
            auto = p.get("drift_auto")
            if auto is not None and auto["enabled"]:
                untracked.add_metric([route], auto["untracked_values"])
        yield from (quality, degraded, deg_est, psi, state, delay, coverage, untracked)
        yield from (*emb.values(), emb_values)


def _by_prefix(
    family: CounterMetricFamily | GaugeMetricFamily, counts: dict[str, int], prefix: str
) -> CounterMetricFamily | GaugeMetricFamily:
    """``family`` with one sample per count named ``<prefix><label>``."""
    for k, v in sorted(counts.items()):
        if k.startswith(prefix):
            family.add_metric([k.removeprefix(prefix)], v)
    return family
