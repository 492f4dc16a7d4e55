"""The comparator's store: rows deleted and marked by key, many keys per statement."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowroute.comparator.store import PROD, Store


@pytest.mark.parametrize("params", [None, 4])
def test_drop_pending_and_mark_labels_touch_exactly_their_keys(
    tmp_path: Path, params: int | None
) -> None:
    store = Store(tmp_path / "s.sqlite")
    if params is not None:  # a few keys per statement: several statements per kind
        store._params = params
    keys = [f"k{i}" for i in range(10)]
    store.begin()
    store.add_pending(
        [(k, kind, 0, "r", 100, "[1,1,null]", None) for k in keys for kind in (PROD, "c1", "c2")]
    )
    store.add_labels([(k, 0, 1, 100, None, "1", 0, 0, "") for k in keys])
    gone = [(k, PROD) for k in keys[:7]] + [(k, "c2") for k in keys[3:]]
    store.drop_pending(gone)
    store.mark_labels([(1, k) for k in keys[:5]] + [(0, k) for k in keys[5:8]])
    store.commit()
    left = set(store.conn.execute("SELECT key, kind FROM pending"))
    every = {(k, kind) for k in keys for kind in (PROD, "c1", "c2")}
    assert left == every - set(gone)
    flags = {
        k: (j, p) for k, j, p in store.conn.execute("SELECT key, joined, prod_done FROM labels")
    }
    assert flags == {
        k: (1, 1) if i < 5 else (1, 0) if i < 8 else (0, 0) for i, k in enumerate(keys)
    }
    store.begin()
    store.mark_labels([(0, k) for k in keys[:2]])  # production's flag never goes back
    store.commit()
    assert store.conn.execute("SELECT prod_done FROM labels WHERE key = 'k0'").fetchone() == (1,)
    store.close()


@pytest.mark.parametrize("params", [None, 4])
def test_pending_kinds_names_each_entry_with_its_request_time(
    tmp_path: Path, params: int | None
) -> None:
    store = Store(tmp_path / "s.sqlite")
    if params is not None:  # a few keys per statement: several statements
        store._params = params
    store.begin()
    store.add_pending(
        [
            ("a", PROD, 0, "r", 100, "[1796000000123,1,0]", "c1"),  # combined: both entries
            ("b", "c2", 0, "r", 100, '[1796000000456,{"x":[1,2]},null]', None),
            *[(f"k{i}", PROD, 0, "r", 100, f"[{i},1,null]", None) for i in range(9)],
        ]
    )
    store.commit()
    # a row written as bytes by an earlier version reads alike
    store.conn.execute("INSERT INTO pending VALUES ('c', 'c1', 0, 'r', 100, ?, NULL)",
                       (b"[7,1,1]",))  # fmt: skip
    got = store.pending_kinds(["a", "b", "c", "nobody", *[f"k{i}" for i in range(9)]])
    assert got == {
        ("a", PROD): 1796000000123,
        ("a", "c1"): 1796000000123,
        ("b", "c2"): 1796000000456,
        ("c", "c1"): 7,
        **{(f"k{i}", PROD): i for i in range(9)},
    }
    store.close()
