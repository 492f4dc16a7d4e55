"""The verdict rule: promote, hold and reject from evidence built by real aggregates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shadowroute.core.config import Guardrails, Policy
from shadowroute.core.stats.paired import PairedMetric
from shadowroute.core.stats.policy import decide, metric_alpha, primary_metric
from shadowroute.core.stats.sketch import Sketch


def _discordant(rng: np.random.Generator, n: int, b: float, c: float) -> tuple[np.ndarray, ...]:
    """Correctness of production and candidate with the given discordant rates."""
    u = rng.random(n)
    prod = np.where(u < b, 0.0, np.where(u < b + c, 1.0, (rng.random(n) < 0.8) * 1.0))
    cand = np.where(u < b, 1.0, np.where(u < b + c, 0.0, prod))
    return prod, cand


def _states(
    policy: Policy,
    task: str,
    quality: tuple[np.ndarray, np.ndarray] | None,
    errors: tuple[np.ndarray, np.ndarray],
    outputs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, PairedMetric]:
    alphas = metric_alpha(policy, task)
    states = {name: PairedMetric.create(name, a) for name, a in alphas.items()}
    primary = primary_metric(policy, task)
    if quality is not None:
        states[primary].update(*quality)
    for name in ("error_rate", "timeout_rate"):
        if name in states:
            states[name].update(*errors)
    if "availability" in states:  # an answer is available when it is not an error
        states["availability"].update(1.0 - errors[0], 1.0 - errors[1])
    if "agreement" in states and outputs is not None:
        states["agreement"].update(*outputs)
    return states


def _no_errors(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(n), np.zeros(n)


def test_metric_alpha_is_a_bonferroni_split() -> None:
    p = Policy()
    share = 0.05 / 4
    assert metric_alpha(p, "classification") == pytest.approx(
        {"accuracy": share, "error_rate": share, "timeout_rate": share, "availability": share}
    )
    p2 = Policy(
        alpha=0.1,
        guardrails=Guardrails(error_rate_delta=None, agreement_floor=0.5, availability_delta=None),
    )
    assert metric_alpha(p2, "regression") == pytest.approx(
        {"mae": 0.1 / 3, "timeout_rate": 0.1 / 3, "agreement": 0.1 / 3}
    )
    assert primary_metric(Policy(), "text") == "exact_match"
    assert primary_metric(Policy(), "probability") == "log_loss"
    assert primary_metric(Policy(primary_metric="brier"), "probability") == "brier"
    with pytest.raises(ValueError):
        primary_metric(Policy(primary_metric="nope"), "classification")


def test_identical_candidate_holds() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    correct = (rng.random(n) < 0.8).astype(float)
    p = Policy()
    states = _states(p, "classification", (correct, correct), _no_errors(n))
    d = decide(p, "classification", states, None, pairs=n, labelled=n)
    assert d.verdict == "hold"
    assert d.metrics["accuracy"]["status"] == "inconclusive"
    assert d.metrics["error_rate"]["status"] == "pass"
    assert any("accuracy" in r and "contains the threshold" in r for r in d.reasons)


def test_clearly_better_candidate_is_promoted() -> None:
    rng = np.random.default_rng(2)
    n = 5000
    p = Policy()
    states = _states(p, "classification", _discordant(rng, n, 0.10, 0.02), _no_errors(n))
    d = decide(p, "classification", states, None, pairs=n, labelled=n)
    assert d.verdict == "promote", d.reasons
    ev = d.metrics["accuracy"]
    assert ev["lower"] > 0 and ev["threshold"] == 0 and ev["status"] == "pass"
    assert ev["estimate"] == pytest.approx(0.08, abs=0.02)


def test_clearly_worse_candidate_is_rejected() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    p = Policy()
    states = _states(p, "classification", _discordant(rng, n, 0.02, 0.10), _no_errors(n))
    d = decide(p, "classification", states, None, pairs=n, labelled=n)
    assert d.verdict == "reject"
    assert d.metrics["accuracy"]["status"] == "fail"
    assert any(r.startswith("shown worse: accuracy") for r in d.reasons)


def test_guardrail_breach_rejects_even_a_more_accurate_candidate() -> None:
    rng = np.random.default_rng(4)
    n = 5000
    p = Policy()
    errors = (np.zeros(n), (rng.random(n) < 0.1).astype(float))
    states = _states(p, "classification", _discordant(rng, n, 0.10, 0.02), errors)
    d = decide(p, "classification", states, None, pairs=n, labelled=n)
    assert d.verdict == "reject"
    assert d.metrics["accuracy"]["status"] == "pass"
    assert d.metrics["error_rate"]["status"] == "fail"
    assert any("error_rate" in r for r in d.reasons)


def test_too_few_pairs_or_labels_hold_with_the_shortfall() -> None:
    rng = np.random.default_rng(5)
    p = Policy(min_pairs=500, min_labelled=300)
    n = 4000
    states = _states(p, "classification", _discordant(rng, n, 0.10, 0.02), _no_errors(n))
    d = decide(p, "classification", states, None, pairs=120, labelled=40)
    assert d.verdict == "hold"
    assert "needs 500 pairs, has 120 (380 more)" in d.reasons
    assert "needs 300 labelled pairs, has 40 (260 more)" in d.reasons
    empty = {name: PairedMetric.create(name, a) for name, a in metric_alpha(p, "text").items()}
    d2 = decide(p, "text", empty, None, pairs=0, labelled=0)
    assert d2.verdict == "hold"
    assert d2.metrics["exact_match"]["n"] == 0
    assert "exact_match: no observations yet" in d2.reasons


def test_non_inferiority_mode() -> None:
    rng = np.random.default_rng(6)
    n = 20_000
    p = Policy(mode="non_inferiority", margin=0.02)
    states = _states(p, "classification", _discordant(rng, n, 0.05, 0.05), _no_errors(n))
    d = decide(p, "classification", states, None, pairs=n, labelled=n)
    assert d.verdict == "promote", d.reasons
    assert d.metrics["accuracy"]["threshold"] == -0.02
    # the same evidence under superiority stays on hold
    sup = _states(Policy(), "classification", _discordant(rng, n, 0.05, 0.05), _no_errors(n))
    assert decide(Policy(), "classification", sup, None, n, n).verdict == "hold"
    worse = _states(p, "classification", _discordant(rng, n, 0.02, 0.08), _no_errors(n))
    assert decide(p, "classification", worse, None, n, n).verdict == "reject"


def test_unbounded_primary_waits_for_burn_in() -> None:
    rng = np.random.default_rng(7)
    p = Policy(min_labelled=500)
    y = rng.normal(0, 1, 3000)
    prod = np.abs(y - (y + rng.normal(0, 1.0, y.size)))
    cand = np.abs(y - (y + rng.normal(0, 0.5, y.size)))
    early = _states(p, "regression", (prod[:100], cand[:100]), _no_errors(100))
    d = decide(p, "regression", early, None, pairs=100, labelled=100)
    assert d.verdict == "hold"
    assert d.metrics["mae"]["status"] == "inconclusive"
    assert any("burn-in" in r for r in d.reasons)
    full = _states(p, "regression", (prod, cand), _no_errors(3000))
    assert decide(p, "regression", full, None, 3000, 3000).verdict == "promote"


def test_latency_guardrail() -> None:
    rng = np.random.default_rng(8)
    n = 5000
    p = Policy(guardrails=Guardrails(latency_p99_ratio=1.5))
    states = _states(p, "classification", _discordant(rng, n, 0.10, 0.02), _no_errors(n))
    prod_lat, fast, slow = Sketch(), Sketch(), Sketch()
    base = rng.lognormal(-3, 0.5, n)
    prod_lat.add_many(base)
    fast.add_many(base * 1.1)
    slow.add_many(base * 3.0)
    ok = decide(p, "classification", states, (prod_lat, fast), n, n)
    assert ok.verdict == "promote", ok.reasons
    assert ok.metrics["latency_p99_ratio"]["estimate"] == pytest.approx(1.1, rel=0.03)
    bad = decide(p, "classification", states, (prod_lat, slow), n, n)
    assert bad.verdict == "reject"
    assert bad.metrics["latency_p99_ratio"]["status"] == "fail"
    assert decide(p, "classification", states, None, n, n).verdict == "hold"


def test_latency_p95_guardrail_is_on_by_default() -> None:
    """The default policy rejects a candidate whose p95 is far over production's (the report:
    production 30-60 ms, the candidate's recorded p50 8-13 s), and passes one a little slower,
    or a few milliseconds over a very fast production (the slack)."""
    rng = np.random.default_rng(11)
    n = 3000
    p = Policy()
    assert p.guardrails.latency_p95_ratio == 1.5 and p.guardrails.latency_p95_slack_ms == 25.0
    states = _states(p, "classification", _discordant(rng, n, 0.10, 0.02), _no_errors(n))

    def sketch(values: np.ndarray) -> Sketch:
        sk = Sketch()
        sk.add_many(values)
        return sk

    prod = sketch(rng.uniform(30.0, 60.0, n))
    cases = {
        "stalled": (prod, sketch(rng.uniform(8000.0, 13000.0, n)), "fail"),
        "a bit slower": (prod, sketch(rng.uniform(33.0, 66.0, n)), "pass"),
        "2x but within the slack": (
            sketch(rng.uniform(1.0, 2.0, n)),
            sketch(rng.uniform(2.0, 4.0, n)),
            "pass",
        ),
        "1.5x + 25 ms is the edge": (prod, sketch(rng.uniform(100.0, 130.0, n)), "fail"),
    }
    for case, (lp, lc, status) in cases.items():
        d = decide(p, "classification", states, (lp, lc), n, n)
        assert d.metrics["latency_p95_ratio"]["status"] == status, (case, d.reasons)
        assert d.verdict == ("reject" if status == "fail" else "promote"), (case, d.reasons)
    stalled = decide(p, "classification", states, cases["stalled"][:2], n, n)
    assert any(r.startswith("shown worse: latency_p95_ratio: p95") for r in stalled.reasons)
    few = (sketch(rng.uniform(30.0, 60.0, 50)), sketch(rng.uniform(8000.0, 13000.0, 50)))
    short = decide(p, "classification", states, few, n, n)
    assert short.metrics["latency_p95_ratio"]["status"] == "inconclusive"  # n < min_pairs
    assert "latency_p95_ratio" not in decide(p, "classification", states, None, n, n).metrics
    empty = decide(p, "classification", states, (Sketch(), Sketch()), n, n)
    assert empty.verdict == "hold" and empty.metrics["latency_p95_ratio"]["n"] == 0
    off = Policy(guardrails=Guardrails(latency_p95_ratio=None))
    off_d = decide(off, "classification", states, cases["stalled"][:2], n, n)
    assert "latency_p95_ratio" not in off_d.metrics and off_d.verdict == "promote"


def test_agreement_floor_guardrail() -> None:
    rng = np.random.default_rng(9)
    n = 5000
    p = Policy(guardrails=Guardrails(agreement_floor=0.9))
    out_p = rng.integers(0, 2, n)
    low = np.where(rng.random(n) < 0.6, out_p, 1 - out_p)
    high = np.where(rng.random(n) < 0.97, out_p, 1 - out_p)
    quality = _discordant(rng, n, 0.03, 0.0)
    d_low = decide(
        p,
        "classification",
        _states(p, "classification", quality, _no_errors(n), (out_p, low)),
        None,
        n,
        n,
    )
    assert d_low.verdict == "reject"
    assert d_low.metrics["agreement"]["threshold"] == 0.9
    d_high = decide(
        p,
        "classification",
        _states(p, "classification", quality, _no_errors(n), (out_p, high)),
        None,
        n,
        n,
    )
    assert d_high.verdict == "promote", d_high.reasons


def test_verdict_comes_back_from_promote_when_later_traffic_is_worse() -> None:
    """No interval is carried over from an earlier read: a candidate promoted on its first
    3000 labels (+5 points) is held, then rejected, as 9000 worse labels (−15 points) arrive,
    and every read's interval contains its estimate."""
    rng = np.random.default_rng(10)
    p = Policy()
    alphas = metric_alpha(p, "classification")
    states = {n: PairedMetric.create(n, a) for n, a in alphas.items()}
    verdicts = []
    phases = [(3000, 0.08, 0.03), *[(1000, 0.02, 0.17)] * 9]
    total = 0
    for n, better, worse in phases:
        prod, cand = _discordant(rng, n, better, worse)
        states["accuracy"].update(prod, cand)
        for name in states:
            if name != "accuracy":  # no errors, every answer with a prediction
                same = np.ones(n) if name == "availability" else np.zeros(n)
                states[name].update(same, same)
        total += n
        d = decide(p, "classification", states, None, total, total)
        ev = d.metrics["accuracy"]
        assert ev["lower"] <= ev["estimate"] <= ev["upper"]
        verdicts.append(d.verdict)
    assert verdicts[0] == "promote"
    assert verdicts[-1] == "reject"
    assert "hold" in verdicts


def test_decision_is_json_serialisable() -> None:
    p = Policy(guardrails=Guardrails(latency_p99_ratio=2.0, agreement_floor=0.5))
    states = {n: PairedMetric.create(n, a) for n, a in metric_alpha(p, "probability").items()}
    states["log_loss"].update(np.array([0.5]), np.array([0.4]))
    d = decide(p, "probability", states, (Sketch(), Sketch()), pairs=1, labelled=1)
    text = json.dumps(d.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert back["verdict"] == "hold"
    assert set(back["metrics"]["log_loss"]) == {
        "estimate",
        "lower",
        "upper",
        "n",
        "threshold",
        "status",
        "needed",  # inconclusive: the estimated further labelled pairs
    }
    assert back["metrics"]["log_loss"]["needed"]["more"] is None  # one observation: no variance
    assert back["metrics"]["log_loss"]["lower"] is None  # infinite before two observations


def test_states_made_under_another_alpha_split_are_read_at_the_policys_share() -> None:
    """The sums do not depend on alpha: a state stored under an older split (three metrics)
    is decided exactly like one made under the current split."""
    rng = np.random.default_rng(12)
    p = Policy()
    n = 3000
    prod, cand = _discordant(rng, n, 0.07, 0.03)
    now = {k: PairedMetric.create(k, a) for k, a in metric_alpha(p, "classification").items()}
    old = {k: PairedMetric.create(k, 0.05 / 3) for k in now}
    for states in (now, old):
        states["accuracy"].update(prod, cand)
        for name in ("error_rate", "timeout_rate"):
            states[name].update(np.zeros(n), np.zeros(n))
        states["availability"].update(np.ones(n), np.ones(n))
    a = decide(p, "classification", now, None, n, n)
    b = decide(p, "classification", old, None, n, n)
    assert a.to_dict() == b.to_dict()
