"""A reloaded config reaches the comparator: added routes and candidates are scored, removed
ones retire without refusing what is in flight, the read side and the events follow the new
routes, and the state file records the reloaded config. What cannot change live (a kept
route's task or production model) is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shadowroute.comparator.embedded import Comparator
from shadowroute.comparator.engine import DeadLetter, Engine
from shadowroute.comparator.reader import NotFound
from shadowroute.comparator.statefile import check_state_file
from shadowroute.comparator.store import Store
from shadowroute.core.config import Config, parse_config
from shadowroute.core.records import LabelRecord
from shadowroute.core.reload import refusals
from shadowroute.events.detect import Detector
from shadowroute.events.source import snapshot_source
from test_comparator_gen import T0, cand_state, pair

ROUTE = "fraud"


def _raw(path: Path, cands: list[str], *, extra_route: bool = False) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {
            "name": ROUTE,
            "protocol": "kserve-v1",
            "task": "classification",
            "production": {"name": "fraud-v7", "url": "http://127.0.0.1:9001"},
            "candidates": [
                {"name": c, "url": f"http://127.0.0.1:{9002 + i}"} for i, c in enumerate(cands)
            ],
            "policy": {"min_pairs": 5, "min_labelled": 5},
            "drift": {"fields": ["$.amount"], "psi_alert": 0.25},
        }
    ]
    if extra_route:
        routes.append(
            {
                "name": "other",
                "protocol": "kserve-v1",
                "production": {"name": "other-v1", "url": "http://127.0.0.1:9101"},
                "candidates": [{"name": "other-v2", "url": "http://127.0.0.1:9102"}],
                "drift": {"psi_alert": 0.4},
            }
        )
    return {"comparator": {"state_path": str(path), "windows": ["hour"]}, "routes": routes}


def _config(path: Path, cands: list[str], *, extra_route: bool = False) -> Config:
    return parse_config(_raw(path, cands, extra_route=extra_route), environ={})


def _pairs(cand: str, n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(start, start + n):
        rid = f"{cand}-{i}"
        out.append((rid.encode(), pair(rid, T0 + i, [1], [1], cand)))
    return out


def test_engine_scores_added_candidates_and_keeps_retired_ones_known(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    dead: list[DeadLetter] = []
    engine = Engine(_config(path, ["fraud-v8", "fraud-v9"]), Store(path), dead_letters=dead.extend)
    engine.process(0, _pairs("fraud-v10", 3), [])
    assert [d[2] for d in dead] == ["unknown_candidate"] * 3  # not configured yet

    # The reload drops v9 and adds v10.
    dead.clear()
    engine.reconfigure(_config(path, ["fraud-v8", "fraud-v10"]))
    engine.process(0, _pairs("fraud-v10", 4, 100), [])
    # a v9 pair sent before the reload arrives after it, then its label: both taken
    engine.process(0, _pairs("fraud-v9", 2, 200), [])
    engine.process(0, [], [LabelRecord("fraud-v9-200", 1, T0 + 300)])
    assert dead == []
    v10 = cand_state(engine, ROUTE, "fraud-v10", 0)
    v9 = cand_state(engine, ROUTE, "fraud-v9", 0)
    assert v10.pairs == 4
    assert v9.pairs == 2 and v9.labelled == 1

    # A route the reload adds is scored; a label naming it is taken.
    engine.reconfigure(_config(path, ["fraud-v8"], extra_route=True))
    other = pair("o-1", T0, [1], [0], "other-v2").replace(b'"fraud"', b'"other"', 1)
    other = other.replace(b'"fraud-v7"', b'"other-v1"', 1)
    engine.process(0, [(b"o-1", other)], [LabelRecord("o-1", 1, T0 + 5, route="other")])
    assert dead == []
    state = cand_state(engine, "other", "other-v2", 0)
    assert state.pairs == 1 and state.labelled == 1
    engine.store.close()


async def test_embedded_comparator_follows_a_reload_and_records_it(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    old, new = _config(path, ["fraud-v8", "fraud-v9"]), _config(path, ["fraud-v8", "fraud-v10"])
    comp = Comparator(old, clock=None)
    try:
        await comp.consume(_pairs("fraud-v8", 6))
        await comp.flush()
        await comp.reconfigure(new)
        await comp.consume(_pairs("fraud-v10", 6, 50))
        await comp.flush()
        assert comp.dead_letters.counts == {}
        decision = comp.reader.decision(ROUTE, "fraud-v10")
        assert decision["pairs"] == 6
        assert comp.reader.decision(ROUTE, "fraud-v8")["pairs"] == 6  # kept its evidence
        with pytest.raises(NotFound):
            comp.reader.decision(ROUTE, "fraud-v9")  # retired from the read side
        routes = comp.reader.routes()["routes"]
        assert routes[0]["candidates"] == ["fraud-v8", "fraud-v10"]
    finally:
        await comp.close()
    check_state_file(new, path)  # the reloaded config is the file's: no mismatch on restart
    comp = Comparator(new, clock=None)
    try:
        assert comp.reader.decision(ROUTE, "fraud-v10")["pairs"] == 6
    finally:
        await comp.close()


def test_a_kept_routes_task_or_production_cannot_change_live(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "s.sqlite", ["fraud-v8"])
    old = parse_config(raw, environ={})
    raw["routes"][0]["task"] = "probability"
    raw["routes"][0]["production"]["name"] = "fraud-v7b"
    problems = refusals(old, parse_config(raw, environ={}))
    assert len(problems) == 2
    assert problems[0].startswith("routes[0].task changed ('classification' -> 'probability')")
    assert problems[1].startswith("routes[0].production.name changed ('fraud-v7' -> 'fraud-v7b')")
    assert all("restart to apply it" in p for p in problems)
    # adding, removing and changing candidates, or a new route, is what a reload is for
    assert refusals(old, _config(tmp_path / "s.sqlite", ["fraud-v9"], extra_route=True)) == []


def test_events_follow_the_routes_of_the_config_of_the_moment(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    configs = [_config(path, ["fraud-v8"])]
    circuits = [(ROUTE, "fraud-v8", False)]
    snapshot = snapshot_source(lambda: configs[-1], None, lambda: circuits)
    detector = Detector(instance="t", psi_alert={ROUTE: 0.25})
    detector.observe(snapshot(), 0.0, 0.0)
    assert detector.psi_alert == {ROUTE: 0.25}

    configs.append(_config(path, ["fraud-v8"], extra_route=True))
    snap = snapshot()
    assert snap.psi_alert == {ROUTE: 0.25, "other": 0.4}
    detector.observe(snap, 1.0, 1.0)
    assert detector.psi_alert["other"] == 0.4


def test_a_judge_added_or_changed_by_a_reload_is_refused(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "s.sqlite", ["fraud-v8"])
    raw["routes"][0]["task"] = "text"
    raw["routes"][0]["protocol"] = "openai"
    old = parse_config(raw, environ={})
    judge = {"url": "http://127.0.0.1:9200", "model": "j", "rubric": "the right one"}
    raw["routes"][0]["judge"] = judge
    added = refusals(old, parse_config(raw, environ={}))
    assert added == [
        "routes[0].judge added on route 'fraud': the comparator's assessor reads it at start; "
        "restart to apply it"
    ]
    judged = parse_config(raw, environ={})
    raw["routes"][0]["judge"] = judge | {"rubric": "the shorter one"}
    assert "routes[0].judge changed" in refusals(judged, parse_config(raw, environ={}))[0]
    del raw["routes"][0]["judge"]
    assert refusals(judged, parse_config(raw, environ={})) == []  # removing one is live
