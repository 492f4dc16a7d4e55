"""The estimate of further observations an inconclusive metric needs, against the real
sequence run until it decides, and how a verdict reports it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shadowroute.core.config import Policy
from shadowroute.core.stats import needed as needed_module
from shadowroute.core.stats.confseq import AsymState, eb_path
from shadowroute.core.stats.needed import MAX_NEEDED, NeededMemo, _scaled, observations_needed
from shadowroute.core.stats.paired import METRICS, PairedMetric
from shadowroute.core.stats.policy import decide, dominant_error, metric_alpha
from test_comparator_gen import random_paired_metric

ALPHA = 0.05 / 4  # a guardrail's share under the default policy


def _decides_at(d: np.ndarray, threshold: float, alpha: float, v_opt: float) -> int | None:
    """The first n at which the real bounded CS of the stream ``d`` excludes ``threshold``
    on the side of the stream's mean."""
    lower, upper = eb_path(d, 2.0 * alpha, v_opt=v_opt)
    hit = lower > threshold if d.mean() > threshold else upper < threshold
    where = np.flatnonzero(hit)
    return int(where[0]) + 1 if where.size else None


def test_zero_errors_against_a_minus_one_point_threshold() -> None:
    """The case from the field: 250 mirrored pairs of a 719-row test set, no errors on either
    side, threshold −0.01: the interval [−0.028, +0.028] needs about 690 pairs in all to
    exclude it (about 1,900 rows at that mirror fraction)."""
    m = PairedMetric.create("error_rate", ALPHA)
    m.update(np.zeros(250), np.zeros(250))
    lower, upper = m.interval()
    assert lower < -0.027 and upper > 0.027
    need = observations_needed(m, -0.01, ALPHA)
    assert need.total is not None and need.more == need.total - 250
    assert 600 <= need.total <= 800
    # with no errors the future is exactly the hypothesis: the real sequence decides there
    real = _decides_at(np.zeros(5_000), -0.01, ALPHA, m.v_opt)
    assert real is not None and abs(real - need.total) <= 0.011 * real


@pytest.mark.parametrize(
    ("b", "c", "threshold"),
    [(0.08, 0.03, 0.0), (0.06, 0.03, -0.01), (0.03, 0.08, 0.0), (0.12, 0.06, 0.0)],
)
def test_bounded_estimate_within_a_factor_of_the_real_crossing(
    b: float, c: float, threshold: float
) -> None:
    """Paired accuracy differences (candidate only right with rate b, production only right
    with rate c): estimate from the first 300, then run the real sequence until it decides.
    An estimate from 300 noisy pairs is rough: typically within a factor of 2, most within 4
    (one whose early effect happens to sit near the threshold can be far off)."""
    ratios = []
    for seed in range(16):
        rng = np.random.default_rng(seed)
        u = rng.random(40_000)
        d = np.where(u < b, 1.0, np.where(u < b + c, -1.0, 0.0))
        m = PairedMetric.create("accuracy", ALPHA)
        m.update(np.zeros(300), d[:300])  # cand − prod = d
        lower, upper = m.interval()
        if not lower <= threshold <= upper or (m.diff_sum / m.n > threshold) != (b - c > threshold):
            continue  # decided already, or the early effect on the other side: not this test
        need = observations_needed(m, threshold, ALPHA)
        assert need.total is not None and need.total > 300
        real = _decides_at(d, threshold, ALPHA, m.v_opt)
        assert real is not None
        ratios.append(need.total / real)
    assert len(ratios) >= 8
    r = np.asarray(ratios)
    assert 1 / 2 <= float(np.median(r)) <= 2, r
    assert np.mean((r > 1 / 4) & (r < 4)) >= 0.75, r


def test_unbounded_estimate_within_a_factor_of_the_real_crossing() -> None:
    """Absolute errors (mae): the asymptotic CS, checked every 25 observations."""
    ratios = []
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        d = rng.normal(0.08, 1.0, 60_000)
        m = PairedMetric.create("mae", ALPHA)
        m.update(np.zeros(200), -d[:200])  # prod − cand = d for a loss
        need = observations_needed(m, 0.0, ALPHA, min_n=100)
        assert need.total is not None
        asym = AsymState()
        asym.update(d[:200])
        real = None
        for start in range(200, d.size, 25):
            asym.update(d[start : start + 25])
            lo, hi = asym.interval(ALPHA, m.t_opt)
            if (lo > 0.0) if d[:200].mean() > 0 else (hi < 0.0):
                real = asym.n
                break
        if real is None:
            continue
        ratios.append(need.total / real)
    assert len(ratios) >= 5
    assert 1 / 4 <= float(np.median(ratios)) <= 4


def test_already_decided_needs_nothing_and_burn_in_counts() -> None:
    m = PairedMetric.create("mae", ALPHA)
    rng = np.random.default_rng(3)
    m.update(np.ones(50), np.zeros(50) + rng.normal(0, 0.01, 50))  # clearly better
    need = observations_needed(m, 0.0, ALPHA, min_n=300)
    assert need.total == 300 and need.more == 250


def test_cannot_estimate_on_the_threshold_or_without_observations() -> None:
    m = PairedMetric.create("accuracy", ALPHA)
    assert observations_needed(m, 0.0, ALPHA).more is None
    m.update(np.array([1.0, 0.0]), np.array([0.0, 1.0]))  # estimate exactly 0
    on = observations_needed(m, 0.0, ALPHA)
    assert on.total is None and on.why is not None and "sits on the threshold" in on.why
    tiny = PairedMetric.create("accuracy", ALPHA)
    tiny.update(np.zeros(1000), np.r_[np.ones(1), np.zeros(999)])  # +0.001 vs 0: far
    far = observations_needed(tiny, 0.0, ALPHA)
    assert far.why is not None if far.total is None else far.total > 10_000


def test_estimate_below_the_threshold_reads_the_upper_bound() -> None:
    """A candidate trending worse: the estimate is of when it would be shown worse."""
    m = PairedMetric.create("accuracy", ALPHA)
    d = np.r_[np.full(10, 1.0), np.full(30, -1.0), np.zeros(160)]
    m.update(np.zeros(200), d)
    need = observations_needed(m, 0.0, ALPHA)
    assert need.total is not None and need.total > 200
    scaled_upper = _upper_at(m, need.total)
    assert scaled_upper < 0.0
    assert _upper_at(m, int(need.total / 1.05)) >= 0.0


def _upper_at(m: PairedMetric, n: int) -> float:
    f = n / m.n
    hyp = PairedMetric(
        spec=m.spec, alpha=m.alpha, v_opt=m.v_opt, n=n, diff_sum=m.diff_sum * f,
        diff_sq=m.diff_sq * f,
    )  # fmt: skip
    return hyp.interval()[1]


def test_verdict_reasons_say_what_is_needed() -> None:
    p = Policy(min_pairs=100, min_labelled=100)
    alphas = metric_alpha(p, "classification")
    states = {name: PairedMetric.create(name, a) for name, a in alphas.items()}
    for name in ("error_rate", "timeout_rate", "availability"):
        states[name].update(np.zeros(250), np.zeros(250))
    rng = np.random.default_rng(5)
    correct = (rng.random(250) < 0.8).astype(float)
    states["accuracy"].update(correct, correct)
    d = decide(p, "classification", states, None, pairs=250, labelled=250)
    assert d.verdict == "hold"
    err = d.metrics["error_rate"]
    assert err["status"] == "inconclusive"
    assert err["needed"]["estimate"] is True and err["needed"]["unit"] == "pairs"
    assert err["needed"]["more"] == err["needed"]["total"] - 250
    assert 350 <= err["needed"]["more"] <= 550
    line = next(r for r in d.reasons if r.startswith("error_rate:"))
    assert "still contains the threshold -0.01 (n=250); about 440 more pairs" in line
    assert "more pairs needed at the current effect and variance (an estimate)" in line
    acc = d.metrics["accuracy"]
    assert acc["needed"]["more"] is None and acc["needed"]["unit"] == "labelled pairs"
    acc_line = next(r for r in d.reasons if r.startswith("accuracy:"))
    assert "cannot be estimated (the estimate sits on the threshold" in acc_line


def test_a_failing_error_guardrail_names_its_dominant_reason() -> None:
    p = Policy(min_pairs=100, min_labelled=100)
    alphas = metric_alpha(p, "classification")
    states = {name: PairedMetric.create(name, a) for name, a in alphas.items()}
    states["error_rate"].update(np.zeros(250), np.ones(250))
    d = decide(
        p, "classification", states, None, pairs=250, labelled=0,
        errors={"http_4xx": 250, "timeout": 0},
    )  # fmt: skip
    assert d.verdict == "reject"
    ev = d.metrics["error_rate"]
    assert ev["errors"]["reason"] == "http_4xx"
    assert ev["errors"]["count"] == 250 and ev["errors"]["of"] == 250
    assert "model name" in ev["errors"]["hint"]
    line = next(r for r in d.reasons if "error_rate" in r)
    assert line.startswith("shown worse: error_rate: estimate")
    assert "mostly http_4xx: 250 of 250 mirrors (the candidate refused" in line
    assert "needed" not in ev  # decided: nothing to estimate
    # a passing guardrail carries no error breakdown
    ok = {name: PairedMetric.create(name, a) for name, a in alphas.items()}
    ok["error_rate"].update(np.zeros(5000), np.zeros(5000))
    d2 = decide(p, "classification", ok, None, pairs=5000, labelled=0, errors={"reset": 1})
    assert "errors" not in d2.metrics["error_rate"]


def test_dominant_error_ties_and_empties() -> None:
    assert dominant_error(None, 10) is None
    assert dominant_error({"timeout": 0}, 10) is None
    assert dominant_error({"http_5xx": 3}, 0) is None
    top = dominant_error({"timeout": 4, "http_5xx": 4, "reset": 1}, 9)
    assert top == {
        "reason": "http_5xx",
        "count": 4,
        "of": 9,
        "hint": "the candidate failed with a 5xx status: see its logs",
    }
    assert dominant_error({"mystery": 2}, 2) == {
        "reason": "mystery",
        "count": 2,
        "of": 2,
        "hint": None,
    }


def test_the_memo_answers_as_the_computation_and_only_for_the_same_question() -> None:
    """Verdicts are decided again after every batch: ``NeededMemo`` reuses an estimate only
    for the same sums, spec, level, threshold, alpha and burn-in, and answers exactly what the
    computation answers."""
    rng = np.random.default_rng(5)
    memo = NeededMemo(size=8)
    for name in ("accuracy", "error_rate", "mse", "mae"):
        m = PairedMetric.create(name, ALPHA)
        for _ in range(4):
            p = (rng.random(60) < 0.8).astype(float)
            c = (rng.random(60) < 0.75).astype(float)
            m.update(p, c)  # the sums move: a new question
            for threshold, min_n in ((0.0, 0), (-0.01, 0), (0.0, 300)):
                want = observations_needed(m, threshold, ALPHA, min_n=min_n)
                hits = memo.hits
                assert memo(m, threshold, ALPHA, min_n=min_n) == want
                assert memo.hits == hits  # first time: computed
                assert memo(m, threshold, ALPHA, min_n=min_n) == want
                assert memo.hits == hits + 1  # again, nothing moved: remembered
                assert memo(m, threshold, ALPHA / 2, min_n=min_n) == observations_needed(
                    m, threshold, ALPHA / 2, min_n=min_n
                )
    assert len(memo._answers) <= 8  # bounded: dropped when full
    assert memo(None, 0.0, ALPHA) == observations_needed(None, 0.0, ALPHA)


def test_a_verdict_with_the_memo_is_the_verdict_without() -> None:
    rng = np.random.default_rng(9)
    policy = Policy(min_labelled=50)
    memo = NeededMemo()
    acc = PairedMetric.create("accuracy", metric_alpha(policy, "classification")["accuracy"])
    for _ in range(5):
        acc.update((rng.random(40) < 0.8).astype(float), (rng.random(40) < 0.78).astype(float))
        plain = decide(policy, "classification", {"accuracy": acc}, None, acc.n, acc.n)
        for _ in range(2):
            again = decide(
                policy, "classification", {"accuracy": acc}, None, acc.n, acc.n, needed=memo
            )
            assert again == plain
    assert memo.hits >= 5


@pytest.mark.parametrize("name", sorted(n for n, s in METRICS.items() if s.bounded))
def test_one_end_is_the_intervals_end_bit_for_bit(name: str) -> None:
    """The estimate computes only the end it reads (half the root solves); that end must be
    the interval's own, exactly, at every scale and level the estimate reads it."""
    rng = np.random.default_rng(17)
    lo, hi, _ = METRICS[name].range
    k = METRICS[name].scale
    for trial in range(40):
        m = PairedMetric.create(name, ALPHA)
        n = int(rng.integers(1, 3000))
        if name in ("error_rate", "timeout_rate", "availability"):
            m.update(rng.random(n) < 0.1, rng.random(n) < rng.uniform(0.0, 0.3))
        else:
            a = rng.uniform(lo / k if lo >= 0 else 0.0, 1.0, n)
            d = np.clip(rng.normal(0.02 * (trial % 5 - 2), 0.3, n), lo / k, hi / k)
            m.update(np.clip(a, 0, 1), np.clip(a - d, 0, 1))
        for at in (m.n, m.n * 3, m.n * 1000 + 7):
            scaled = _scaled(m, at)
            for alpha in (ALPHA, 0.05, 0.001):
                lower, upper = scaled.interval(alpha)
                assert scaled.end(alpha, lower=True) == lower
                assert scaled.end(alpha, lower=False) == upper


def _bisected(metric: PairedMetric, threshold: float, alpha: float, reads: list[int]) -> int | None:
    """The reference: double from n until the end passes, then halve the bracket to 1% (the
    search the estimate used before it aimed); each read of the end counted in ``reads``."""
    n = metric.n
    above = metric.diff_sum / n > threshold

    def passes(at: int) -> bool:
        reads[0] += 1
        end = _scaled(metric, at).end(alpha, lower=above)
        return end > threshold if above else end < threshold

    lo = hi = n
    if not passes(n):
        while True:
            lo, hi = hi, hi * 2
            if hi > MAX_NEEDED:
                if not passes(MAX_NEEDED):
                    return None
                hi = MAX_NEEDED
                break
            if passes(hi):
                break
        while hi > lo * 1.01 and hi - lo > 1:
            mid = (lo + hi) // 2
            if passes(mid):
                hi = mid
            else:
                lo = mid
    return hi


def test_the_aimed_search_keeps_the_bisections_contract_in_half_the_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Random metrics of every kind, above and below their thresholds, from 20 to 50,000
    observations: the estimate is a sample size where the end passes the threshold while 1%
    fewer does not (the bisection's contract), within 1% of the bisection's own answer, and it
    reads the end (a root solve each) less than half as often on average."""
    reads = [0]
    scaled = needed_module._scaled

    def counted(metric: PairedMetric, n: int) -> PairedMetric:
        reads[0] += 1
        return scaled(metric, n)

    rng = np.random.default_rng(11)
    aimed_reads: list[int] = []
    halved_reads: list[int] = []
    compared = 0
    for _ in range(240):
        name, m, n, threshold = random_paired_metric(
            rng, ALPHA, n_min=20, effect_sd=0.02, mae_sd=0.05
        )
        if abs(m.diff_sum / n - threshold) <= 1e-12:
            continue
        above = m.diff_sum / n > threshold
        counted_halving = [0]
        want = _bisected(m, threshold, ALPHA, counted_halving)
        halved = counted_halving[0]
        with monkeypatch.context() as patch:
            patch.setattr(needed_module, "_scaled", counted)
            before = reads[0]
            got = observations_needed(m, threshold, ALPHA)
            aimed = reads[0] - before
        if want is None:
            assert got.total is None and got.why is not None and "more than" in got.why
            continue
        assert got.total is not None and got.more == got.total - n
        if want == n:
            assert got.total == n  # decided already
            continue
        compared += 1
        aimed_reads.append(aimed)
        halved_reads.append(halved)
        assert abs(got.total / want - 1.0) <= 0.01, (name, n, threshold, got, want)

        def passes(at: int, m: PairedMetric = m, above: bool = above, t: float = threshold) -> bool:
            end = _scaled(m, at).end(ALPHA, lower=above)
            return end > t if above else end < t

        assert passes(got.total)
        assert not passes(max(n, math.floor(got.total / 1.01)))
    assert compared >= 100
    assert np.mean(aimed_reads) * 2 <= np.mean(halved_reads), (
        np.mean(aimed_reads),
        np.mean(halved_reads),
    )
