"""A DDSketch-style log-bucket quantile sketch for latencies.

A positive value ``x`` goes to bucket ``ceil(log_γ x)`` with ``γ = (1 + a)/(1 − a)``; zeros are
counted apart. A quantile is answered with ``2γ^i/(γ + 1)`` for the bucket ``i`` holding the
value of rank ``q·(count − 1)`` (rounded down, like numpy ``method='lower'``), so its relative
error is at most ``a``. Merging adds bucket counts: the merge of two sketches equals the sketch
of the union of their data, bucket for bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_ACCURACY = 0.01


@dataclass
class Sketch:
    relative_accuracy: float = DEFAULT_ACCURACY
    buckets: dict[int, int] = field(default_factory=dict)
    zero_count: int = 0
    min: float = math.inf
    max: float = -math.inf
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {self.relative_accuracy}")

    @property
    def gamma(self) -> float:
        return (1.0 + self.relative_accuracy) / (1.0 - self.relative_accuracy)

    @property
    def count(self) -> int:
        return self.zero_count + sum(self.buckets.values())

    def add(self, x: float) -> None:
        self.add_many(np.array([x], dtype=np.float64))

    def add_many(self, values: npt.ArrayLike) -> None:
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if not (np.all(np.isfinite(arr)) and np.all(arr >= 0.0)):
            raise ValueError("sketch values must be finite and >= 0")
        positive = arr[arr > 0.0]
        self.zero_count += int(arr.size - positive.size)
        if positive.size:
            keys = np.ceil(np.log(positive) / math.log(self.gamma)).astype(np.int64)
            uniq, counts = np.unique(keys, return_counts=True)
            for k, c in zip(uniq.tolist(), counts.tolist(), strict=True):
                self.buckets[k] = self.buckets.get(k, 0) + c
        self.min = min(self.min, float(arr.min()))
        self.max = max(self.max, float(arr.max()))
        self.sum += float(arr.sum())

    def merge(self, other: Sketch) -> Sketch:
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge sketches with different relative accuracy")
        buckets = dict(self.buckets)
        for k, c in other.buckets.items():
            buckets[k] = buckets.get(k, 0) + c
        return Sketch(
            relative_accuracy=self.relative_accuracy,
            buckets=buckets,
            zero_count=self.zero_count + other.zero_count,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            sum=self.sum + other.sum,
        )

    def quantile(self, q: float) -> float:
        """The value at rank ``q·(count − 1)``, within relative accuracy; NaN when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        total = self.count
        if total == 0:
            return math.nan
        rank = q * (total - 1)
        if rank < self.zero_count:
            return 0.0
        running = self.zero_count
        key = max(self.buckets)
        for k in sorted(self.buckets):
            running += self.buckets[k]
            if running > rank:
                key = k
                break
        g = self.gamma
        # The true value lies in [min, max], so clamping can only reduce the error.
        return min(max(2.0 * g**key / (g + 1.0), self.min), self.max)

    def to_dict(self) -> dict[str, Any]:
        keys = sorted(self.buckets)
        return {
            "relative_accuracy": self.relative_accuracy,
            "keys": keys,
            "counts": [self.buckets[k] for k in keys],
            "zero_count": self.zero_count,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "sum": self.sum,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sketch:
        keys = [int(k) for k in data["keys"]]
        counts = [int(c) for c in data["counts"]]
        return cls(
            relative_accuracy=float(data["relative_accuracy"]),
            buckets=dict(zip(keys, counts, strict=True)),
            zero_count=int(data["zero_count"]),
            min=math.inf if data["min"] is None else float(data["min"]),
            max=-math.inf if data["max"] is None else float(data["max"]),
            sum=float(data["sum"]),
        )
