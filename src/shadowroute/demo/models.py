"""Demo models: trained at start on scikit-learn's bundled breast-cancer data (no download).

The data set has 569 tumours, 30 numeric features and a binary target (0 = malignant,
1 = benign). It is split once, stratified: models train on one part and the traffic generator
replays the other, so every score the comparator computes is a held-out score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

Kind = Literal["logistic", "boosting"]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class MissingExtra(RuntimeError):
    """scikit-learn is not installed."""


def _sklearn() -> None:
    try:
        import sklearn  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        raise MissingExtra("the demo needs scikit-learn: pip install 'shadowroute[demo]'") from None


@dataclass(frozen=True)
class Dataset:
    """A train/test split of the breast-cancer data."""

    feature_names: tuple[str, ...]
    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray


def load_dataset(seed: int = 0, test_size: float = 0.4) -> Dataset:
    _sklearn()
    from sklearn.datasets import load_breast_cancer  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return Dataset(tuple(str(n) for n in bunch.feature_names), x_tr, y_tr, x_te, y_te)


@dataclass(frozen=True)
class ModelSpec:
    """What to train: ``features`` are column indices (None = all 30)."""

    name: str
    version: str
    kind: Kind
    features: tuple[int, ...] | None = None

    def describe(self, names: Sequence[str]) -> str:
        algo = "logistic regression" if self.kind == "logistic" else "gradient boosting"
        if self.features is None:
            return f"{algo} on all {len(names)} features"
        cols = ", ".join(names[i] for i in self.features)
        return f"{algo} on {len(self.features)} feature(s): {cols}"


class _Estimator(Protocol):
    def fit(self, x: FloatArray, y: IntArray) -> object: ...
    def predict_proba(self, x: FloatArray) -> FloatArray: ...


@dataclass(frozen=True)
class TrainedModel:
    """A fitted model that takes full 30-column rows and picks its own columns."""

    spec: ModelSpec
    estimator: _Estimator

    def predict_proba(self, rows: FloatArray) -> FloatArray:
        cols = rows if self.spec.features is None else rows[:, list(self.spec.features)]
        return np.asarray(self.estimator.predict_proba(cols), dtype=np.float64)

    def accuracy(self, x: FloatArray, y: IntArray) -> float:
        return float(np.mean(self.predict_proba(x).argmax(axis=1) == y))


def _estimator(kind: Kind, seed: int) -> _Estimator:
    from sklearn.ensemble import GradientBoostingClassifier  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

    if kind == "logistic":
        est: _Estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    else:
        est = GradientBoostingClassifier(random_state=seed)
    return est


def train(spec: ModelSpec, data: Dataset, seed: int = 0) -> TrainedModel:
    _sklearn()
    est = _estimator(spec.kind, seed)
    cols = data.x_train if spec.features is None else data.x_train[:, list(spec.features)]
    est.fit(cols, data.y_train)
    return TrainedModel(spec, est)
