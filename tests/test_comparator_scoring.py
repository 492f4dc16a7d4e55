"""Per-task scoring: agreement, deltas and quality values, and the other tasks end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from documented import assert_documented
from shadowroute.comparator import scoring
from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.store import Store
from shadowroute.core.records import LabelRecord
from test_comparator_gen import T0, cand_state, config, pair


def test_agreement_by_task() -> None:
    assert scoring.agree("classification", 1, 1.0) is True
    assert scoring.agree("classification", "a", "b") is False
    assert scoring.agree("probability", 0.7, 0.55) is True  # same side of 0.5
    assert scoring.agree("probability", [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]) is False
    assert scoring.agree("regression", 100.0, 100.9) is True  # within 1%
    assert scoring.agree("regression", 100.0, 102.0) is False
    assert scoring.agree("text", "yes", "yes") is True
    assert scoring.agree("regression", "n/a", 1.0) is None


def test_deltas_and_similarity() -> None:
    assert scoring.delta("regression", 2.0, 3.0) == (1.0, 0.5)
    abs_d, rel_d = scoring.delta("probability", [0.2, 0.8], [0.5, 0.5])  # type: ignore[misc]
    assert abs_d == pytest.approx(0.3) and rel_d == pytest.approx(0.3)
    assert scoring.similarity("abcd", "abce") == pytest.approx(0.75)


def test_quality_of_class_indices_matches_the_general_rule() -> None:
    # two ints take a shortcut in quality() and add_labelled(); bools, floats and strings not
    values: list[object] = [0, 1, 2, -1, True, False, 1.0, "1", "0", None, [1]]
    for classes in (None, ["ok", "fraud"]):
        for pred in values:
            for label in values:
                a = scoring.class_name(pred, classes)
                b = scoring.class_name(label, classes)
                want = () if a is None or b is None else ((1.0,) if a == b else (0.0,))
                assert scoring.quality("classification", pred, label, classes) == want


def test_quality_values() -> None:
    assert scoring.quality("classification", "fraud", 1, ["ok", "fraud"]) == (1.0,)
    ll, brier = scoring.quality("probability", 0.8, 1, None)
    assert ll == pytest.approx(-math.log(0.8)) and brier == pytest.approx(2 * 0.2**2)
    ll, brier = scoring.quality("probability", [0.1, 0.7, 0.2], "b", ["a", "b", "c"])
    assert ll == pytest.approx(-math.log(0.7))
    assert brier == pytest.approx(0.1**2 + 0.3**2 + 0.2**2)
    assert scoring.quality("regression", 3.0, 1.0, None) == (2.0, 4.0)
    assert scoring.quality("text", "Paris", "Paris", None) == (1.0,)
    assert scoring.quality("probability", 0.8, 5, None) == ()  # no such class


@pytest.mark.parametrize(
    ("task", "prod", "cand", "label", "metric", "diff"),
    [
        ("probability", [0.9], [0.6], 1, "brier", 2 * 0.01 - 2 * 0.16),
        ("regression", [10.0], [12.0], 11.5, "mae", 1.5 - 0.5),
        ("text", ["a"], ["b"], "b", "exact_match", 1.0),
    ],
)
def test_other_tasks_end_to_end(
    tmp_path: Path, task: str, prod: list[object], cand: list[object], label: object,
    metric: str, diff: float,
) -> None:  # fmt: skip
    cfg = config(str(tmp_path / "s.sqlite"), task=task)
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    engine.process(0, [(b"a", pair("a", T0, prod, cand))], [LabelRecord("a", label, T0 + 1)])
    state = cand_state(engine, "fraud", "fraud-v8", 0)
    assert isinstance(state, CandidateState)
    m = state.quality[metric]
    assert m.n == 1 and m.diff_sum == pytest.approx(diff)  # positive: candidate better
    scores = state.scores()
    if task in ("probability", "regression"):
        assert scores["output_delta"]["n"] == 1
    else:
        assert scores["similarity"]["mean"] == 0.0
    # the API's documents of this task, in their documented shape
    from shadowroute.comparator.reader import Reader, StateView, Verdicts

    view = StateView()
    view.update(engine.snapshot())
    reader = Reader(cfg, view, Verdicts(cfg, view, engine.store), engine.store)
    assert_documented(reader.scores("fraud", "fraud-v8"), "Scores")
    assert_documented(reader.decision("fraud", "fraud-v8"), "Decision")
    assert_documented(reader.production("fraud"), "Production")


def test_drift_against_a_reference_file(tmp_path: Path) -> None:
    import numpy as np

    from shadowroute.comparator.production import ProductionState
    from shadowroute.comparator.reader import Reader, StateView, Verdicts

    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.csv"
    ref.write_text("amount\n" + "\n".join(f"{v:.4f}" for v in rng.normal(0, 1, 5000)))
    cfg = config(
        str(tmp_path / "s.sqlite"),
        drift={"fields": ["$.amount"], "reference_file": str(ref)},
    )
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    shifted = [
        (f"d{i}".encode(), pair(f"d{i}", T0 + i, [1], [1], amount=float(rng.normal(1.5, 1))))
        for i in range(2000)
    ]
    engine.process(0, shifted, [])
    prod = engine.production("fraud", 0)
    assert isinstance(prod, ProductionState)
    view = StateView()
    view.update(engine.snapshot())
    reader = Reader(cfg, view, Verdicts(cfg, view, engine.store), engine.store)
    drift = reader.production("fraud")["drift"]["$.amount"]
    assert drift["reference_n"] == 5000 and drift["n"] == 2000
    assert drift["state"] == "major" and drift["psi"] > 0.25
