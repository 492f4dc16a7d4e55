"""Per-class views of classification routes: precision, recall, F1 and confusion matrices of
production and a candidate on the same labelled pairs, the paired per-class recall difference
with its anytime-valid interval, the class cap, merges across partitions and restarts.

References are computed by hand here (plain loops over the generated rows), not by the code
under test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shadowroute.api.openapi import document
from shadowroute.api.scores import ScoresCollector
from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.classes import NONE, OTHER, ClassCounts
from shadowroute.comparator.engine import Engine
from shadowroute.comparator.reader import Reader, StateView, Verdicts
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config, parse_config
from shadowroute.core.records import LabelRecord
from shadowroute.core.stats.confseq import eb_interval
from shadowroute.core.stats.paired import MetricSpec, PairedMetric
from test_comparator_gen import T0, cand_key, cand_state, pair

CLASSES = ["cat", "dog", "owl", "fox"]


def _config(state: Path, **route: Any) -> Config:
    raw: dict[str, Any] = {
        "comparator": {"state_path": str(state), "windows": ["hour"]},
        "routes": [
            {
                "name": "fraud",
                "protocol": "kserve-v1",
                "task": "classification",
                "production": {"name": "fraud-v7", "url": "http://127.0.0.1:9001"},
                "candidates": [{"name": "fraud-v8", "url": "http://127.0.0.1:9002"}],
                **route,
            }
        ],
    }
    return parse_config(raw, environ={})


Row = tuple[str, str, str | None]
"""(label, production's prediction, the candidate's or None)."""


def _rows(n: int, seed: int = 0, classes: list[str] = CLASSES) -> list[Row]:
    rng = np.random.default_rng(seed)
    out: list[Row] = []
    for _ in range(n):
        y = classes[int(rng.integers(len(classes)))]
        p = y if rng.random() < 0.7 else classes[int(rng.integers(len(classes)))]
        u = rng.random()
        c: str | None = y if u < 0.75 else classes[int(rng.integers(len(classes)))]
        if u > 0.97:
            c = None  # no prediction: the candidate's miss
        out.append((y, p, c))
    return out


def _feed(engine: Engine, rows: list[Row], partition: int = 0, start: int = 0) -> None:
    pairs = []
    labels = []
    for i, (y, p, c) in enumerate(rows, start):
        rid = f"q{i}"
        pairs.append((rid.encode(), pair(rid, T0 + i, [p], [c])))
        labels.append(LabelRecord(rid, y, T0 + i + 1))
    engine.process(partition, pairs, labels)


def _state(engine: Engine, partition: int = 0) -> CandidateState:
    state = cand_state(engine, "fraud", "fraud-v8", partition)
    assert isinstance(state, CandidateState)
    return state


def _by_hand(rows: list[Row], k: str, side: int) -> dict[str, float | None]:
    tp = sum(1 for r in rows if r[0] == k and r[side] == k)
    support = sum(1 for r in rows if r[0] == k)
    predicted = sum(1 for r in rows if r[side] == k)
    prec = tp / predicted if predicted else None
    rec = tp / support if support else None
    f1 = None if prec is None or rec is None or prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return {"precision": prec, "recall": rec, "f1": f1}


def test_per_class_figures_match_a_hand_count(tmp_path: Path) -> None:
    rows = _rows(3000)
    engine = Engine(_config(tmp_path / "s.sqlite"), Store(tmp_path / "s.sqlite"))
    _feed(engine, rows)
    state = _state(engine)
    view = state.scores()["classes"]
    assert sorted(view["classes"]) == sorted(CLASSES) and view["untracked"] == 0
    for item in view["per_class"]:
        k = item["class"]
        assert item["support"] == sum(1 for r in rows if r[0] == k)
        for side, name in ((1, "production"), (2, "candidate")):
            want = _by_hand(rows, k, side)
            for key in ("precision", "recall", "f1"):
                assert item[name][key] == pytest.approx(want[key]), (k, name, key)
        # paired: the same labelled requests of class k
        b = sum(1 for y, p, c in rows if y == k and c == y and p != y)
        c_ = sum(1 for y, p, c in rows if y == k and p == y and c != y)
        rd = item["recall_diff"]
        assert (rd["candidate_only_right"], rd["production_only_right"]) == (b, c_)
        assert rd["estimate"] == pytest.approx(
            item["candidate"]["recall"] - item["production"]["recall"]
        )
    # confusion matrices: rows are labels, columns predictions (+ the candidate's misses)
    conf = view["confusion"]
    for side, name in ((1, "production"), (2, "candidate")):
        m = conf[name]
        for i, y in enumerate(conf["labels"]):
            for j, p in enumerate(conf["columns"]):
                pv = NONE if p == NONE else p
                want = sum(1 for r in rows if r[0] == y and (r[side] or NONE) == pv)
                assert m[i][j] == want, (name, y, p)
    # the diagonal is the accuracy comparison's own count, on the same rows
    acc = state.quality["accuracy"]
    diag = sum(conf["candidate"][i][i] for i in range(len(CLASSES)))
    assert diag == pytest.approx(acc.cand_sum) and acc.n == len(rows)
    assert sum(map(sum, conf["production"])) == len(rows)


def test_recall_intervals_are_the_accuracy_machinery_split_across_classes(tmp_path: Path) -> None:
    rows = _rows(2000, seed=3)
    engine = Engine(_config(tmp_path / "s.sqlite", max_classes=8), Store(tmp_path / "s.sqlite"))
    _feed(engine, rows)
    view = _state(engine).scores()["classes"]
    assert view["interval"]["alpha_per_class"] == pytest.approx(0.05 / 8)
    for item in view["per_class"]:
        k = item["class"]
        sub = [(p == y, c == y) for y, p, c in rows if y == k]
        # the accuracy comparison's paired metric over the class's rows, each end at α/(2K)
        m = PairedMetric(MetricSpec("accuracy", True, True), alpha=0.05 / 16, v_opt=50.0)
        m.update([float(p) for p, _ in sub], [float(c) for _, c in sub])
        lower, upper = m.interval()
        assert item["recall_diff"]["lower"] == pytest.approx(lower)
        assert item["recall_diff"]["upper"] == pytest.approx(upper)
        assert lower <= item["recall_diff"]["estimate"] <= upper


def test_per_class_intervals_hold_together_over_time_in_simulation() -> None:
    """Three classes, each with its own true recall difference; 300 runs of 1,500 labelled
    pairs, read after every 50: how often does any class's interval miss its truth, at any
    read? At most alpha (the boundary is conservative: none here)."""
    rng = np.random.default_rng(7)
    classes = ["a", "b", "c"]
    p_prod = {"a": 0.9, "b": 0.6, "c": 0.7}
    p_cand = {"a": 0.8, "b": 0.7, "c": 0.7}
    truth = {k: p_cand[k] - p_prod[k] for k in classes}
    misses = 0
    runs = 300
    for _ in range(runs):
        counts = ClassCounts.create(0.05, classes, 3)
        ys = rng.integers(0, 3, size=1500)
        pr = rng.random(1500)
        cr = rng.random(1500)
        missed = False
        for i in range(1500):
            y = classes[int(ys[i])]
            p_ok, c_ok = bool(pr[i] < p_prod[y]), bool(cr[i] < p_cand[y])
            counts.add(y, y if p_ok else "x", y if c_ok else "x", p_ok, c_ok)
            if (i + 1) % 50 == 0:
                for item in counts.view()["per_class"]:
                    rd = item["recall_diff"]
                    if not rd["lower"] <= truth[item["class"]] <= rd["upper"]:
                        missed = True
        misses += missed
    assert misses / runs <= 0.05


def test_the_class_cap_folds_the_rest_into_other_and_counts_them(tmp_path: Path) -> None:
    many = [f"c{i}" for i in range(10)]
    rows = _rows(500, seed=1, classes=many)
    engine = Engine(_config(tmp_path / "s.sqlite", max_classes=3), Store(tmp_path / "s.sqlite"))
    _feed(engine, rows)
    view = _state(engine).scores()["classes"]
    tracked = view["classes"]
    assert len(tracked) == 3 and view["max_classes"] == 3
    # the first three seen (labels and predictions, in order) are tracked
    seen: list[str] = []
    for y, p, c in rows:
        for v in (y, p, c):
            if v is not None and v not in seen:
                seen.append(v)
    assert tracked == seen[:3]
    outside = sum(
        1 for y, p, c in rows if y not in tracked or p not in tracked or (c and c not in tracked)
    )
    assert view["untracked"] == outside > 0
    cfg = engine.config
    sv = StateView()
    sv.update(engine.snapshot())
    registry = CollectorRegistry()
    registry.register(
        ScoresCollector(Reader(cfg, sv, Verdicts(cfg, sv, engine.store), engine.store))
    )
    text = generate_latest(registry).decode()
    metric = 'shadowroute_classes_untracked_total{candidate="fraud-v8",route="fraud"}'
    assert f"{metric} {float(outside)}" in text
    assert view["confusion"]["labels"] == [*tracked, OTHER]
    assert sum(map(sum, view["confusion"]["production"])) == len(rows)


def test_declared_classes_are_the_tracked_ones(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "s.sqlite", classes=["cat", "dog"])
    engine = Engine(cfg, Store(tmp_path / "s.sqlite"))
    rows: list[Row] = [("cat", "cat", "dog"), ("owl", "owl", "owl"), ("dog", "owl", "dog")]
    _feed(engine, rows)
    view = _state(engine).scores()["classes"]
    assert view["classes"] == ["cat", "dog"] and view["declared"] is True
    assert view["untracked"] == 2
    assert view["interval"]["alpha_per_class"] == pytest.approx(0.05 / 2)


def test_partitions_merge_to_the_single_partition_figures_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    rows = _rows(1200, seed=5)
    one = Engine(_config(tmp_path / "a.sqlite"), Store(tmp_path / "a.sqlite"))
    _feed(one, rows)
    cfg = _config(tmp_path / "b.sqlite")
    two = Engine(cfg, Store(tmp_path / "b.sqlite"))
    _feed(two, rows[:500], partition=0)
    _feed(two, rows[500:], partition=1, start=500)
    view = StateView()
    view.update(two.snapshot())
    merged = view.candidate("fraud", "fraud-v8")
    assert merged is not None and merged.class_counts is not None
    a = cand_state(one, "fraud", "fraud-v8", 0).scores()["classes"]
    b = merged.scores()["classes"]
    assert sorted(a["classes"]) == sorted(b["classes"])
    by_a = {r["class"]: r for r in a["per_class"]}
    for r in b["per_class"]:
        assert r == by_a[r["class"]]
    # restart: a new engine on the same store reads the same per-class state back
    before = two.snapshot()
    two.store.close()
    again = Engine(cfg, Store(tmp_path / "b.sqlite"))
    for p in (0, 1):
        key = cand_key(before, "fraud", "fraud-v8", p)
        assert (
            cand_state(again, "fraud", "fraud-v8", p).to_dict()["classes"]
            == (before[key]["classes"])
        )
    view2 = StateView()
    view2.update(again.snapshot())
    merged2 = view2.candidate("fraud", "fraud-v8")
    assert merged2 is not None
    assert merged2.scores()["classes"] == b
    # and the API gives it, in the documented shape
    reader = Reader(cfg, view2, Verdicts(cfg, view2, again.store), again.store)
    scores = reader.scores("fraud", "fraud-v8")
    assert scores["classes"]["per_class"] == b["per_class"]
    components = document()["components"]
    jsonschema.validate(scores, {"$ref": "#/components/schemas/Scores", "components": components})


def test_long_or_reserved_class_names_are_not_tracked() -> None:
    c = ClassCounts.create(0.05, None, 5)
    c.add("x" * 201, "a", "a", False, False)
    c.add(OTHER, NONE, "a", False, False)
    assert c.classes == ["a"] and c.untracked == 2
    assert c.prod[OTHER] == {"a": 1, OTHER: 1}


def test_a_merge_beyond_the_cap_folds_into_other() -> None:
    a = ClassCounts.create(0.05, None, 2)
    b = ClassCounts.create(0.05, None, 2)
    a.add("x", "x", "x", True, True)
    b.add("y", "y", "z", True, False)
    b.add("z", "z", "z", True, True)
    m = a.merge(b)
    assert m.classes == ["x", "y"]
    assert m.prod[OTHER] == {OTHER: 1} and m.paired[OTHER] == [1, 0, 0]
    assert m.cand["y"] == {OTHER: 1}
    assert m.untracked == 1
    assert ClassCounts.from_dict(m.to_dict()) == m


def test_state_written_before_per_class_views_still_reads(tmp_path: Path) -> None:
    engine = Engine(_config(tmp_path / "s.sqlite"), Store(tmp_path / "s.sqlite"))
    _feed(engine, _rows(10))
    data = _state(engine).to_dict()
    del data["classes"]
    old = CandidateState.from_dict(data)
    assert old.class_counts is None and "classes" not in old.scores()
    merged = old.merge(_state(engine))
    assert merged.class_counts is not None


def test_interval_of_an_empty_class_is_the_whole_range() -> None:
    assert eb_interval(0, 0.0, 0.0, 0.01) == (-1.0, 1.0)
    c = ClassCounts.create(0.05, ["a", "b"], 20)
    c.add("a", "a", "a", True, True)
    items = {r["class"]: r for r in c.view()["per_class"]}
    assert items["b"]["support"] == 0 and items["b"]["recall_diff"]["estimate"] is None
    assert items["b"]["production"]["recall"] is None
