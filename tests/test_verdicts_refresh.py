"""Verdicts after each batch: only the routes the batch reached are decided again.

The comparator refreshes every verdict after every committed batch. A candidate whose route's
evidence did not move keeps its decision (``StateView.route_stamp``); the decision it keeps is
the one deciding afresh would give, and a config reload, or labels waiting for their pair,
still show at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shadowroute.comparator import reader as reader_mod
from shadowroute.comparator.embedded import Comparator
from shadowroute.comparator.reader import StateView, Verdicts
from shadowroute.comparator.state import StateKey
from shadowroute.core.config import Config
from shadowroute.core.records import LabelRecord
from test_comparator_gen import T0, classification, on_route, routes_config

ROUTES = ("a", "b", "c")


def _config(state_path: Path, min_pairs: int = 200) -> Config:
    return routes_config(str(state_path), ROUTES, min_pairs=min_pairs)


def _stream(route: str, n: int, seed: int, label_share: float = 1.0) -> Any:
    """``classification`` pairs moved to ``route``; ids unique per seed."""
    return on_route(classification(n, seed=seed, p_cand=0.75, label_share=label_share), route)


@pytest.fixture()
def comp(tmp_path: Path) -> Comparator:
    c = Comparator(_config(tmp_path / "s.sqlite"), clock=None)
    for i, route in enumerate(ROUTES):
        c._commit(*_stream(route, 300, seed=10 + i))
    return c


def _spy(comp: Comparator, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    decided: list[tuple[str, str]] = []
    real = comp.verdicts._decide_on

    def spy(route: Any, cand: str) -> Any:
        decided.append((route.name, cand))
        return real(route, cand)

    monkeypatch.setattr(comp.verdicts, "_decide_on", spy)
    return decided


def _fresh(comp: Comparator) -> Verdicts:
    """Verdicts that have decided nothing yet, over a view that has merged nothing yet."""
    view = StateView()
    view.update(comp.engine.snapshot(), replace=True)
    return Verdicts(comp.config, view, comp._history)


def test_a_batch_decides_again_only_the_route_it_reached(
    comp: Comparator, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {(r, c): comp.verdicts.current(r, c) for r in ROUTES for c in ("fraud-v8", "fraud-v9")}
    decided = _spy(comp, monkeypatch)
    comp._commit(*_stream("b", 50, seed=99))
    assert decided == [("b", "fraud-v8"), ("b", "fraud-v9")]
    assert (
        comp.verdicts.current("b", "fraud-v8")["pairs"] == before[("b", "fraud-v8")]["pairs"] + 50
    )
    for route in ("a", "c"):
        for cand in ("fraud-v8", "fraud-v9"):
            assert comp.verdicts.current(route, cand) == before[(route, cand)]

    decided.clear()
    comp.verdicts.refresh()  # nothing moved: nothing decided
    assert decided == []


def test_kept_decisions_are_what_deciding_afresh_gives(comp: Comparator) -> None:
    rng = np.random.default_rng(7)
    for step in range(12):
        route = ROUTES[int(rng.integers(0, len(ROUTES)))]
        share = float(rng.choice([0.0, 0.5, 1.0]))
        comp._commit(*_stream(route, int(rng.integers(1, 80)), seed=100 + step, label_share=share))
        fresh = _fresh(comp)
        for r in ROUTES:
            for cand in ("fraud-v8", "fraud-v9"):
                assert comp.verdicts.current(r, cand) == fresh.current(r, cand), (step, r, cand)


def test_a_reloaded_policy_decides_every_route_again(
    comp: Comparator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert comp.verdicts.current("c", "fraud-v8")["pairs"] == 300
    decided = _spy(comp, monkeypatch)
    comp.verdicts.config = _config(tmp_path / "s.sqlite", min_pairs=5000)
    comp.verdicts.refresh()
    assert sorted(decided) == sorted((r, c) for r in ROUTES for c in ("fraud-v8", "fraud-v9"))
    d = comp.verdicts.current("c", "fraud-v8")
    assert d["verdict"] == "hold"
    assert any("5000" in reason for reason in d["reasons"]), d["reasons"]


def test_labels_waiting_show_on_a_route_whose_evidence_did_not_move(tmp_path: Path) -> None:
    comp = Comparator(_config(tmp_path / "s.sqlite"), clock=None)
    for i, route in enumerate(ROUTES):
        comp._commit(*_stream(route, 300, seed=10 + i, label_share=0.0))
    head = "needs 100 labelled pairs,"
    reasons = comp.verdicts.current("a", "fraud-v8")["reasons"]
    assert any(r.startswith(head) for r in reasons)
    assert not any("wait for their pair" in r for r in reasons)
    stamp = comp.view.route_stamp("a")

    # labels under ids no request had, for route c: route a's evidence does not move
    comp._commit(
        [], [LabelRecord(id=f"nope-{i}", label=1, ts=T0 + 5_000, route="c") for i in range(4)]
    )
    assert comp.view.route_stamp("a") == stamp
    assert not any(
        "wait for their pair" in r for r in comp.verdicts.current("a", "fraud-v8")["reasons"]
    )
    reasons = comp.verdicts.current("c", "fraud-v8")["reasons"]
    assert any(r.startswith("4 label(s) wait for their pair") for r in reasons), reasons

    # and without a route they may join any route's pair: a shows them too
    comp._commit([], [LabelRecord(id=f"none-{i}", label=1, ts=T0 + 5_000) for i in range(3)])
    assert comp.view.route_stamp("a") == stamp
    reasons = comp.verdicts.current("a", "fraud-v8")["reasons"]
    assert any(r.startswith("3 label(s) wait for their pair") for r in reasons), reasons


# --- StateView ---------------------------------------------------------------------------------


def _cand_key(route: str, partition: int = 0) -> StateKey:
    return StateKey("cand", route, "fraud-v8", partition)


def test_the_view_keeps_merged_states_of_groups_no_update_touched(comp: Comparator) -> None:
    view = comp.view
    a, b = view.candidate("a", "fraud-v8"), view.candidate("b", "fraud-v8")
    stamps = {r: view.route_stamp(r) for r in ROUTES}
    assert all(stamps.values())
    view.update(comp.engine.snapshot())  # the same objects again: nothing changed
    assert view.candidate("a", "fraud-v8") is a
    assert {r: view.route_stamp(r) for r in ROUTES} == stamps

    comp._commit(*_stream("b", 10, seed=77))
    assert view.candidate("a", "fraud-v8") is a
    assert view.route_stamp("a") == stamps["a"]
    b2 = view.candidate("b", "fraud-v8")
    assert b2 is not b and b2 is not None and b is not None
    assert b2.pairs == b.pairs + 10
    assert view.route_stamp("b") > stamps["b"]


def test_removing_or_replacing_states_moves_their_routes() -> None:
    view = StateView()
    state = {"a": 1}
    view.update({_cand_key("a"): state, _cand_key("b"): {"b": 1}})
    sa, sb = view.route_stamp("a"), view.route_stamp("b")
    view.remove([_cand_key("a")])
    assert view.route_stamp("a") > sa and view.route_stamp("b") == sb
    view.update({_cand_key("b"): {"b": 1}}, replace=True)  # a new object: b moved
    assert view.route_stamp("b") > sb
    assert view.route_stamp("never") == 0


def test_a_merge_raced_by_an_update_is_not_kept(
    comp: Comparator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update landing while a group is being merged: the merged object (made from the old
    parts) is returned to that reader but not kept, so the next reader sees the update."""
    view = comp.view
    # copies of a's states: its merged state is dropped, and nothing merges it again yet
    view.update({k: dict(d) for k, d in comp.engine.snapshot().items() if k.route == "a"})
    real = reader_mod.state_from_dict
    raced: list[bool] = []

    def racing(kind: str, d: dict[str, Any]) -> Any:
        if not raced:
            raced.append(True)
            comp._commit(*_stream("a", 7, seed=56))  # a commit lands mid-merge
        return real(kind, d)

    monkeypatch.setattr(reader_mod, "state_from_dict", racing)
    old = view.candidate("a", "fraud-v8")
    monkeypatch.setattr(reader_mod, "state_from_dict", real)
    new = view.candidate("a", "fraud-v8")
    assert old is not None and new is not None
    assert raced and new.pairs == old.pairs + 7
