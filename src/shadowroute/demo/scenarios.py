"""The demo's scenarios: which models play production and candidate, and what should happen.

Pure data; ``expectation.py`` checks an outcome against a scenario.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shadowroute.demo.models import ModelSpec

ScenarioName = Literal["better", "worse", "same", "drift", "llm"]
TRAINED: tuple[ScenarioName, ...] = ("better", "worse", "same", "drift")
"""The scenarios of the trained classifiers below."""
SCENARIOS: tuple[ScenarioName, ...] = (*TRAINED, "llm")
"""``llm`` is a language-model route with stand-in chat models (``demo/llm_run.py``)."""

SERVED_NAME = "cancer"
"""The model name every demo server serves (``/v2/models/cancer/infer``)."""

ROUTE = "cancer"

# Column indices into the breast-cancer features.
MEAN_TEXTURE, MEAN_SMOOTHNESS = 1, 4
SIZE_FEATURES = (0, 2, 3, 20, 22, 23)
"""Mean and worst radius, perimeter and area: the ones the drift scenario rescales."""
DRIFT_FIELDS = (0, 1, 2, 3, 4, 20)
"""Features watched for drift (mean radius/texture/perimeter/area/smoothness, worst radius)."""

SMALL = ModelSpec("lr-2feat", "1", "logistic", (MEAN_TEXTURE, MEAN_SMOOTHNESS))
BOOSTED = ModelSpec("gbm-30feat", "2", "boosting")
BOOSTED_COPY = ModelSpec("gbm-30feat-copy", "2", "boosting")
LOGISTIC_ALL = ModelSpec("lr-30feat", "3", "logistic")


@dataclass(frozen=True)
class Shift:
    """From ``at`` (a fraction of the run) on, multiply ``features`` by ``factor``: an upstream
    change of units that production never saw in training."""

    at: float
    features: tuple[int, ...]
    factor: float


@dataclass(frozen=True)
class Scenario:
    name: ScenarioName
    production: ModelSpec
    candidate: ModelSpec
    expect: str
    """What should happen, in words (printed at the start)."""
    shift: Shift | None = None


def scenario(name: ScenarioName) -> Scenario:
    if name == "llm":
        raise ValueError("the llm scenario has no trained models: see demo/llm_run.py")
    if name == "better":
        return Scenario(name, SMALL, BOOSTED, "the candidate is better: promote")
    if name == "worse":
        return Scenario(name, BOOSTED, SMALL, "the candidate is worse: reject")
    if name == "same":
        return Scenario(name, BOOSTED, BOOSTED_COPY, "A/A, the same model twice: do not promote")
    return Scenario(
        name,
        LOGISTIC_ALL,
        BOOSTED,
        "production's inputs shift half-way: drift detected and production degraded",
        Shift(at=0.5, features=SIZE_FEATURES, factor=1.5),
    )
