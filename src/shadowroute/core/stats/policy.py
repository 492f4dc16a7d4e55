"""The verdict: promote, hold or reject, from a declarative policy and anytime-valid evidence.

- **promote** when there are enough pairs and labels, the primary metric's lower bound clears
  its threshold (``+margin`` for superiority, ``−margin`` for non-inferiority) and every active
  guardrail passes;
- **reject** when a guardrail's upper bound is below its threshold or the primary metric's
  upper bound is below its threshold: shown worse, so it must not hold forever;
- **hold** otherwise, with the reasons (shortfalls, intervals that still straddle a threshold).

Alpha is split evenly (Bonferroni) between the primary metric and the CS-backed guardrails, so
``P(ever promote while some metric is worse than its threshold) ≤ alpha`` however often the
verdict is read. States must be created with their share: see ``metric_alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shadowroute.core.config import Policy
from shadowroute.core.stats.needed import NeededMemo, observations_needed
from shadowroute.core.stats.paired import METRICS, PairedMetric, metric_spec
from shadowroute.core.stats.sketch import Sketch

Verdict = Literal["promote", "hold", "reject"]
Status = Literal["pass", "fail", "inconclusive"]

DEFAULT_PRIMARY: dict[str, str] = {
    "classification": "accuracy",
    "probability": "log_loss",
    "regression": "mae",
    "text": "exact_match",
}
LATENCY = "latency_p99_ratio"
LATENCY_P95 = "latency_p95_ratio"
TTFT = "ttft_p99_ratio"
COST = "cost_ratio"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: list[str]
    metrics: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
        }


def primary_metric(policy: Policy, task: str) -> str:
    name = policy.primary_metric or DEFAULT_PRIMARY.get(task)
    if name is None:
        raise ValueError(f"no default primary metric for task {task!r}")
    if name not in METRICS:
        raise ValueError(f"unknown primary metric {name!r}; known: {sorted(METRICS)}")
    return name


def guardrail_thresholds(policy: Policy) -> dict[str, float]:
    """Active CS-backed guardrails and their thresholds (on the paired difference, or the
    agreement rate's floor)."""
    g = policy.guardrails
    out: dict[str, float] = {}
    if g.error_rate_delta is not None:
        out["error_rate"] = -g.error_rate_delta
    if g.timeout_rate_delta is not None:
        out["timeout_rate"] = -g.timeout_rate_delta
    if g.agreement_floor is not None:
        out["agreement"] = g.agreement_floor
    if g.availability_delta is not None:
        out["availability"] = -g.availability_delta
    return out


def metric_alpha(policy: Policy, task: str) -> dict[str, float]:
    """Each CS-backed metric's share of ``policy.alpha``; create the states with it."""
    names = [primary_metric(policy, task)]
    names += [n for n in guardrail_thresholds(policy) if n not in names]
    return {n: policy.alpha / len(names) for n in names}


def _primary_threshold(policy: Policy) -> float:
    return policy.margin if policy.mode == "superiority" else -policy.margin


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4g}"


def _status(lower: float, upper: float, threshold: float) -> Status:
    if lower > threshold:
        return "pass"
    if upper < threshold:
        return "fail"
    return "inconclusive"


def _count_text(n: int) -> str:
    """A count for a reason, rounded to two significant digits past 100 (an estimate)."""
    if n >= 100:
        digits = len(str(n)) - 2
        n = round(n, -digits)
    return f"{n:,}"


def _needed(
    name: str,
    metric: PairedMetric | None,
    threshold: float,
    min_n: int,
    alpha: float,
    memo: NeededMemo | None,
) -> tuple[dict[str, Any], str]:
    """The ``needed`` field of an inconclusive metric and its clause for the reason: the
    estimated further observations (``core.stats.needed``; through ``memo`` if given)."""
    unit = "labelled pairs" if metric_spec(name).needs_label else "pairs"
    burn_in = 0 if metric_spec(name).bounded else min_n
    estimate = observations_needed if memo is None else memo
    est = estimate(metric, threshold, alpha, min_n=burn_in)
    field = est.to_dict(unit)
    if est.more is None:
        return field, f"; further {unit} needed: cannot be estimated ({est.why})"
    return field, (
        f"; about {_count_text(est.more)} more {unit} needed at the current effect and "
        "variance (an estimate)"
    )


def _cs_evidence(
    name: str,
    metric: PairedMetric | None,
    threshold: float,
    min_n: int,
    alpha: float,
    memo: NeededMemo | None = None,
) -> tuple[dict[str, Any], str]:
    """Evidence for one CS-backed metric, read at its share of the policy's alpha (whatever
    the split was when its state was made), and a one-line explanation of its status. An
    inconclusive metric also says how many more observations it is estimated to need
    (``needed``)."""
    if metric is None or metric.n == 0:
        ev: dict[str, Any] = {"estimate": None, "lower": None, "upper": None, "n": 0}
        ev |= {"threshold": threshold, "status": "inconclusive"}
        ev["needed"], _ = _needed(name, metric, threshold, min_n, alpha, memo)
        return ev, f"{name}: no observations yet"
    lower, upper = metric.interval(alpha)
    estimate = metric.diff_sum / metric.n
    status: Status = _status(lower, upper, threshold)
    why = f"interval [{_fmt(_finite(lower))}, {_fmt(_finite(upper))}]"
    if not metric.bounded and metric.n < min_n:
        status = "inconclusive"
        why += f", burn-in: {metric.n} of {min_n} observations"
    elif status == "pass":
        why += f" lies above the threshold {threshold:+.4g}"
    elif status == "fail":
        why += f" lies below the threshold {threshold:+.4g}"
    else:
        why += f" still contains the threshold {threshold:+.4g}"
    ev = {
        "estimate": _finite(estimate),
        "lower": _finite(lower),
        "upper": _finite(upper),
        "n": metric.n,
        "threshold": threshold,
        "status": status,
    }
    text = f"{name}: estimate {_fmt(_finite(estimate))}, {why} (n={metric.n})"
    if status == "inconclusive":
        ev["needed"], clause = _needed(name, metric, threshold, min_n, alpha, memo)
        text += clause
    return ev, text


ERROR_HINTS: dict[str, str] = {
    "http_4xx": "the candidate refused the requests with a 4xx status: check its path, model "
    "name and headers (a model served under another name answers 404)",
    "http_5xx": "the candidate failed with a 5xx status: see its logs",
    "connect": "the candidate could not be reached: check its URL and that it is up",
    "timeout": "the candidate did not answer within its timeout_s",
    "bad_json": "the candidate answered 2xx with a body that is not JSON",
    "extract_failed": "the prediction could not be extracted from the candidate's answer: "
    "check the route's protocol or jsonpath",
    "circuit_open": "not sent: the candidate's circuit breaker is open after earlier failures",
    "too_large": "the candidate's answers exceed the capture limit",
    "reset": "the candidate closed connections before answering",
    "bad_response": "the candidate's answers are not valid HTTP/1.1",
    "dropped": "not sent: the candidate's mirrors in flight were at max_in_flight (it is slow)",
}
"""A plain-words hint per candidate error reason (``core.records.ERRORS``)."""


def dominant_error(errors: Mapping[str, int] | None, pairs: int) -> dict[str, Any] | None:
    """The candidate's most frequent error reason: ``{reason, count, of, hint}`` (``of``: the
    pairs the error rate is over), or ``None`` without errors."""
    if not errors or pairs <= 0:
        return None
    counted = {k: v for k, v in errors.items() if v > 0}
    if not counted:
        return None
    reason = max(sorted(counted), key=lambda k: counted[k])
    out: dict[str, Any] = {"reason": reason, "count": int(counted[reason]), "of": int(pairs)}
    out["hint"] = ERROR_HINTS.get(reason)
    return out


def _error_clause(top: dict[str, Any]) -> str:
    text = f"; mostly {top['reason']}: {top['count']:,} of {top['of']:,} mirrors"
    return text + (f" ({top['hint']})" if top["hint"] else "")


def _latency_evidence(
    name: str,
    q: float,
    ratio_max: float,
    slack_ms: float,
    latency: tuple[Sketch, Sketch] | None,
    min_pairs: int,
    what: str = "latency",
) -> tuple[dict[str, Any], str]:
    """The ``q`` quantile of the candidate's latency (or TTFT) over production's, from the
    sketches (in ms): a point estimate, no interval. It fails when the candidate's quantile
    is over ``ratio_max`` × production's + ``slack_ms``."""
    ev: dict[str, Any] = {"estimate": None, "lower": None, "upper": None, "n": 0}
    ev["threshold"] = ratio_max
    if latency is None or min(latency[0].count, latency[1].count) == 0:
        ev["status"] = "inconclusive"
        return ev, f"{name}: no {what} observations yet"
    prod, cand = latency
    n = min(prod.count, cand.count)
    q_prod, q_cand = prod.quantile(q), cand.quantile(q)
    ratio = q_cand / q_prod if q_prod > 0 else (math.inf if q_cand > 0 else 1.0)
    status: Status = "pass" if q_cand <= ratio_max * q_prod + slack_ms else "fail"
    if n < min_pairs:
        status = "inconclusive"
    ev |= {"estimate": _finite(ratio), "n": n, "status": status}
    p = f"p{round(q * 100)}"
    limit = f"limit {ratio_max:.3g}" + (f" + {slack_ms:.3g} ms" if slack_ms else "")
    text = (
        f"{name}: {p} candidate/production = {ratio:.3g} ({q_cand:.4g} vs {q_prod:.4g} ms; "
        f"{limit}, n={n})"
    )
    return ev, text


def _cost_evidence(
    ratio_max: float, costs: tuple[float, float, int] | None, min_pairs: int
) -> tuple[dict[str, Any], str]:
    """The candidate's mean cost per request over production's (``costs``: both means and
    the pairs they are over): a point estimate, no interval. It fails when the ratio is over
    ``ratio_max``."""
    ev: dict[str, Any] = {"estimate": None, "lower": None, "upper": None, "n": 0}
    ev["threshold"] = ratio_max
    if costs is None:
        ev["status"] = "inconclusive"
        return ev, (
            f"{COST}: no cost yet (needs a price on both models and pairs whose answers "
            "carry tokens)"
        )
    prod, cand, n = costs
    ratio = cand / prod if prod > 0 else (math.inf if cand > 0 else 1.0)
    status: Status = "pass" if cand <= ratio_max * prod else "fail"
    if n < min_pairs:
        status = "inconclusive"
    ev |= {"estimate": _finite(ratio), "n": n, "status": status}
    text = (
        f"{COST}: mean cost per request candidate/production = {ratio:.3g} ({cand:.4g} vs "
        f"{prod:.4g}; limit {ratio_max:.3g}, n={n})"
    )
    return ev, text


def decide(
    policy: Policy,
    task: str,
    metrics: Mapping[str, PairedMetric],
    latency: tuple[Sketch, Sketch] | None,
    pairs: int,
    labelled: int,
    errors: Mapping[str, int] | None = None,
    *,
    ttft: tuple[Sketch, Sketch] | None = None,
    costs: tuple[float, float, int] | None = None,
    needed: NeededMemo | None = None,
) -> Decision:
    """The verdict now, from the evidence now. ``latency`` is ``(production, candidate)``;
    ``errors`` the candidate's error counts by reason, to name the dominant one of an
    error-rate guardrail that does not pass. ``openai`` routes: ``ttft`` the time-to-first-
    token sketches ``(production, candidate)``, ``costs`` the mean costs per request
    ``(production, candidate, pairs)`` (``CandidateState.mean_costs``). ``needed``: a memo
    of the observations-needed estimates (``core.stats.needed.NeededMemo``), for a caller that
    decides again and again on sums that mostly did not move.

    Nothing is carried over from earlier reads: each read's intervals cover the traffic seen
    so far, so a verdict can move from promote back to hold or reject when later traffic shows
    the candidate worse.
    """
    primary = primary_metric(policy, task)
    thresholds = {primary: _primary_threshold(policy), **guardrail_thresholds(policy)}
    evidence: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    alphas = metric_alpha(policy, task)
    for name, threshold in thresholds.items():
        min_n = policy.min_labelled if metric_spec(name).needs_label else policy.min_pairs
        evidence[name], notes[name] = _cs_evidence(
            name, metrics.get(name), threshold, min_n, alphas[name], needed
        )
    rate = evidence.get("error_rate")
    if rate is not None and rate["status"] != "pass":
        top = dominant_error(errors, rate["n"])
        if top is not None:
            rate["errors"] = top
            notes["error_rate"] += _error_clause(top)
    g = policy.guardrails
    if g.latency_p95_ratio is not None and latency is not None:
        # On by default, so judged only on evidence that carries latencies (the comparator's
        # always does); the opt-in p99 ratio below holds without them.
        evidence[LATENCY_P95], notes[LATENCY_P95] = _latency_evidence(
            LATENCY_P95,
            0.95,
            g.latency_p95_ratio,
            g.latency_p95_slack_ms,
            latency,
            policy.min_pairs,
        )
    if g.latency_p99_ratio is not None:
        evidence[LATENCY], notes[LATENCY] = _latency_evidence(
            LATENCY, 0.99, g.latency_p99_ratio, 0.0, latency, policy.min_pairs
        )
    if g.ttft_p99_ratio is not None:
        evidence[TTFT], notes[TTFT] = _latency_evidence(
            TTFT,
            0.99,
            g.ttft_p99_ratio,
            g.ttft_p99_slack_ms,
            ttft,
            policy.min_pairs,
            "time-to-first-token",
        )
    if g.cost_ratio is not None:
        evidence[COST], notes[COST] = _cost_evidence(g.cost_ratio, costs, policy.min_pairs)
    failed = [n for n, ev in evidence.items() if ev["status"] == "fail"]
    if failed:
        return Decision("reject", [f"shown worse: {notes[n]}" for n in failed], evidence)
    shortfalls = _shortfalls(policy, primary, pairs, labelled)
    open_metrics = [n for n, ev in evidence.items() if ev["status"] != "pass"]
    if shortfalls or open_metrics:
        return Decision("hold", shortfalls + [notes[n] for n in open_metrics], evidence)
    mode = "better than" if policy.mode == "superiority" else "not worse than"
    head = f"candidate is {mode} production on {primary} and passes every guardrail"
    return Decision("promote", [head, *(notes[n] for n in evidence)], evidence)


def _shortfalls(policy: Policy, primary: str, pairs: int, labelled: int) -> list[str]:
    out = []
    if pairs < policy.min_pairs:
        short = policy.min_pairs - pairs
        out.append(f"needs {policy.min_pairs} pairs, has {pairs} ({short} more)")
    if metric_spec(primary).needs_label and labelled < policy.min_labelled:
        short = policy.min_labelled - labelled
        out.append(f"needs {policy.min_labelled} labelled pairs, has {labelled} ({short} more)")
    return out
