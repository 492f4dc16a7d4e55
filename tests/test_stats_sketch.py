"""The latency sketch: relative accuracy against numpy, exact merges, storage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shadowroute.core.stats.sketch import Sketch

QUANTILES = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]


@pytest.mark.parametrize("seed", range(4))
def test_relative_error_within_one_percent(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.lognormal(mean=-3 + seed, sigma=1 + seed / 2, size=50_000)
    sk = Sketch()
    sk.add_many(data)
    assert sk.count == data.size
    for q in QUANTILES:
        exact = float(np.quantile(data, q, method="lower"))
        assert abs(sk.quantile(q) - exact) <= 0.01 * exact * (1 + 1e-12), q


def test_zeros_are_counted_apart() -> None:
    sk = Sketch()
    data = np.concatenate([np.zeros(300), np.linspace(0.001, 1, 700)])
    sk.add_many(data)
    assert sk.zero_count == 300
    assert sk.quantile(0.2) == 0.0
    exact = float(np.quantile(data, 0.5, method="lower"))
    assert sk.quantile(0.5) == pytest.approx(exact, rel=0.01)


def test_merge_equals_sketch_of_union_bucket_for_bucket() -> None:
    rng = np.random.default_rng(7)
    parts = [rng.lognormal(-2, 1.5, int(rng.integers(1, 5000))) for _ in range(6)]
    parts.append(np.zeros(17))
    union = Sketch()
    union.add_many(np.concatenate(parts))
    merged = Sketch()
    for p in parts:
        s = Sketch()
        s.add_many(p)
        merged = merged.merge(s)
    assert merged.buckets == union.buckets
    assert merged.zero_count == union.zero_count
    assert (merged.min, merged.max, merged.count) == (union.min, union.max, union.count)
    assert merged.sum == pytest.approx(union.sum, rel=1e-12)
    for q in QUANTILES:
        assert merged.quantile(q) == union.quantile(q)


def test_add_one_at_a_time_equals_add_many() -> None:
    rng = np.random.default_rng(8)
    data = rng.exponential(0.05, 2000)
    one, many = Sketch(), Sketch()
    many.add_many(data)
    for x in data:
        one.add(float(x))
    assert one.buckets == many.buckets


def test_json_round_trip() -> None:
    rng = np.random.default_rng(9)
    sk = Sketch()
    sk.add_many(np.concatenate([rng.lognormal(0, 2, 1000), [0.0]]))
    back = Sketch.from_dict(json.loads(json.dumps(sk.to_dict(), allow_nan=False)))
    assert back == sk
    empty = Sketch.from_dict(json.loads(json.dumps(Sketch().to_dict(), allow_nan=False)))
    assert empty == Sketch()
    assert math.isnan(empty.quantile(0.5))


def test_invalid_input_and_mismatched_merge() -> None:
    with pytest.raises(ValueError):
        Sketch().add(-1.0)
    with pytest.raises(ValueError):
        Sketch().add_many(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        Sketch().quantile(1.5)
    with pytest.raises(ValueError):
        Sketch().merge(Sketch(relative_accuracy=0.02))
