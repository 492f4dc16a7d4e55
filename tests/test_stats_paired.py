"""Paired aggregates: signs, scales, exact merges and storage round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shadowroute.core.stats.confseq import AsymState
from shadowroute.core.stats.paired import (
    PairedMetric,
    abs_error,
    binary_brier_values,
    brier_values,
    correct,
    log_loss_values,
    metric_spec,
)

ALPHA = 0.05


def _classification(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, n)
    prod = np.where(rng.random(n) < 0.75, y, rng.integers(0, 3, n))
    cand = np.where(rng.random(n) < 0.85, y, rng.integers(0, 3, n))
    return correct(prod, y), correct(cand, y)


def _partition_merge(name: str, prod: np.ndarray, cand: np.ndarray, k: int) -> PairedMetric:
    merged = PairedMetric.create(name, ALPHA)
    for part in np.array_split(np.arange(prod.size), k):
        m = PairedMetric.create(name, ALPHA)
        for chunk in np.array_split(part, 3):
            m.update(prod[chunk], cand[chunk])
        merged = merged.merge(m)
    return merged


def test_accuracy_sign_and_summary() -> None:
    rng = np.random.default_rng(1)
    prod, cand = _classification(rng, 5000)
    m = PairedMetric.create("accuracy", ALPHA)
    m.update(prod, cand)
    s = m.summary()
    assert s["n"] == 5000
    assert s["estimate"] == pytest.approx(cand.mean() - prod.mean())
    assert s["prod_mean"] == pytest.approx(prod.mean())
    assert s["cand_mean"] == pytest.approx(cand.mean())
    assert 0 < s["lower"] < s["estimate"] < s["upper"]  # type: ignore[operator]


def test_loss_metrics_are_signed_candidate_better_positive() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(0, 1, 3000)
    prod_err = abs_error(y + rng.normal(0, 1.0, y.size), y)
    cand_err = abs_error(y + rng.normal(0, 0.5, y.size), y)
    m = PairedMetric.create("mae", ALPHA)
    m.update(prod_err, cand_err)
    s = m.summary()
    assert s["estimate"] == pytest.approx(prod_err.mean() - cand_err.mean())
    assert s["lower"] > 0  # type: ignore[operator]
    assert isinstance(m.asym, AsymState)


def test_merge_of_partitions_equals_union_aggregate() -> None:
    rng = np.random.default_rng(3)
    prod, cand = _classification(rng, 9000)
    union = PairedMetric.create("accuracy", ALPHA)
    union.update(prod, cand)
    merged = _partition_merge("accuracy", prod, cand, 4)
    # 0/1 values: the sums are integers, so they agree to the float.
    assert merged.n == union.n
    for f in ("prod_sum", "prod_sq", "cand_sum", "cand_sq", "diff_sum", "diff_sq"):
        assert getattr(merged, f) == getattr(union, f), f
    assert merged.summary()["estimate"] == union.summary()["estimate"]
    assert merged.interval() == union.interval()
    lo, up = merged.interval()
    assert lo <= merged.summary()["estimate"] <= up  # type: ignore[operator]


def test_merge_of_unbounded_partitions_within_float_tolerance() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(0, 1, 7000)
    prod = (y - rng.normal(0, 1, y.size)) ** 2
    cand = (y - rng.normal(0, 0.9, y.size)) ** 2
    union = PairedMetric.create("mse", ALPHA)
    union.update(prod, cand)
    merged = _partition_merge("mse", prod, cand, 5)
    assert merged.n == union.n
    for f in ("prod_sum", "prod_sq", "cand_sum", "cand_sq", "diff_sum", "diff_sq"):
        assert getattr(merged, f) == pytest.approx(getattr(union, f), rel=1e-12), f
    assert merged.asym is not None and union.asym is not None
    assert merged.asym.mean == pytest.approx(union.asym.mean, rel=1e-12)
    assert merged.asym.m2 == pytest.approx(union.asym.m2, rel=1e-12)
    assert merged.interval() == pytest.approx(union.interval(), rel=1e-12)


@pytest.mark.parametrize("name", ["accuracy", "log_loss", "agreement", "brier"])
def test_json_round_trip_is_exact(name: str) -> None:
    rng = np.random.default_rng(5)
    m = PairedMetric.create(name, ALPHA / 3, t_opt=500, n_classes=4)
    if name == "agreement":
        m.update(rng.integers(0, 3, 800), rng.integers(0, 3, 800))
    else:
        m.update(rng.random(800), rng.random(800))
    back = PairedMetric.from_dict(json.loads(json.dumps(m.to_dict(), allow_nan=False)))
    assert back == m
    assert back.summary() == m.summary()


def test_multiclass_brier_is_scaled_into_bounds() -> None:
    rng = np.random.default_rng(6)
    n, k = 4000, 4
    y = rng.integers(0, k, n)
    prod = brier_values(rng.dirichlet(np.ones(k), n), y)
    good = np.full((n, k), 0.1 / (k - 1))
    good[np.arange(n), y] = 0.9
    cand = brier_values(good, y)
    assert prod.max() <= 2.0 and cand.max() <= 2.0
    m = PairedMetric.create("brier", ALPHA, n_classes=k)
    assert metric_spec("brier", n_classes=k).scale == 0.5
    m.update(prod, cand)
    lo, up = m.interval()
    est = prod.mean() - cand.mean()
    assert lo <= est <= up
    assert up - lo < 0.2  # on the Brier scale
    empty = PairedMetric.create("brier", ALPHA, n_classes=k)
    assert empty.interval() == (-2.0, 2.0)
    with pytest.raises(ValueError, match="bounded"):
        PairedMetric.create("brier", ALPHA).update(np.array([0.0]), np.array([1.8]))


def test_binary_brier_and_log_loss_values() -> None:
    assert binary_brier_values([0.9, 0.2], [1, 1]).tolist() == pytest.approx([0.01, 0.64])
    ll = log_loss_values([0.0, 1.0, 0.5])
    assert ll[0] == pytest.approx(-math.log(1e-6))
    assert ll[1] == pytest.approx(-math.log(1 - 1e-6))
    assert ll[2] == pytest.approx(math.log(2))


def test_agreement_is_a_rate() -> None:
    rng = np.random.default_rng(7)
    prod = rng.integers(0, 2, 3000)
    cand = np.where(rng.random(3000) < 0.8, prod, 1 - prod)
    m = PairedMetric.create("agreement", ALPHA)
    m.update(prod, cand)
    s = m.summary()
    assert s["estimate"] == pytest.approx(np.mean(prod == cand))
    assert s["prod_mean"] is None
    assert 0.7 < s["lower"] < s["estimate"] < s["upper"] < 0.9  # type: ignore[operator]
    with pytest.raises(ValueError):
        PairedMetric.create("accuracy", ALPHA).update_rate([1.0])


def test_error_rate_delta() -> None:
    prod = np.zeros(2000)
    cand = (np.arange(2000) % 10 == 0).astype(float)  # 10% candidate errors
    m = PairedMetric.create("error_rate", ALPHA)
    m.update(prod, cand)
    s = m.summary()
    assert s["estimate"] == pytest.approx(-0.1)
    assert s["upper"] < -0.05  # type: ignore[operator]


def test_mismatched_merge_and_lengths_rejected() -> None:
    a = PairedMetric.create("accuracy", ALPHA)
    other_split = a.merge(PairedMetric.create("accuracy", ALPHA / 2))  # an older policy's
    assert other_split.alpha == a.alpha
    with pytest.raises(ValueError):
        a.merge(PairedMetric.create("error_rate", ALPHA))
    with pytest.raises(ValueError):
        a.update(np.ones(3), np.ones(4))
    with pytest.raises(ValueError):
        PairedMetric.create("nope", ALPHA)
    with pytest.raises(ValueError):
        PairedMetric(spec=metric_spec("accuracy"), alpha=1.5)
    assert a.merge(PairedMetric(spec=metric_spec("accuracy"), alpha=ALPHA, v_opt=1e3)).v_opt == (
        a.v_opt
    )
