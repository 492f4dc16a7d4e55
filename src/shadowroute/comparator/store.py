"""The comparator's local store: one SQLite file in WAL mode.

Tables:

- ``positions`` — per source partition, the next offset to read on pairs and labels, and the
  two watermarks (largest record timestamp seen on each stream);
- ``state`` — the serialised aggregates per (kind, route, candidate, partition);
- ``pending`` — pair instances waiting for their label, one row per (label key, kind): kind
  ``""`` is production's own monitoring entry, any other kind a candidate's entry. The first
  record of a request writes one row for both: production's entry with ``cand`` set to the
  record's candidate, whose entry it also stands for (``data`` is then the candidate's entry,
  from which production's follows);
- ``labels`` — labels, kept until their TTL ends (several candidates may join one label);
  ``slots`` lists the ``slot/ts`` of the entries that joined each (space-separated;
  production's alone as ``/ts``), so a pair record that comes again after its label joined
  (a Kafka re-delivery) is known, and so is another request under the same id (another ts);
- ``decisions`` — the verdict history;
- ``meta`` — what the file is about: the config fingerprint (``comparator.statefile``).

``pending.data`` and ``labels.label`` hold JSON as text. The columns are declared ``BLOB``:
rows written by earlier versions hold the same UTF-8 bytes as BLOBs, and both read alike.

Everything a batch changes is written in one transaction (``Store.commit``), so state and the
positions it reflects never disagree. A ``Store`` is used by one thread at a time.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from shadowroute.comparator.state import StateKey

__all__ = ["PROD", "LabelRow", "PendingRow", "Positions", "Store"]

PROD: Final = ""
"""The ``kind`` of production's own pending entry."""
_CHUNK: Final = 4000

PendingRow = tuple[str, str, str, str | bytes, str | None]
"""A pending row as read to join it: (key, kind, route, data, cand). ``data`` is the entry,
``[pair ts, production output, candidate output]`` as JSON text (bytes in rows written by
earlier versions); ``cand`` is set on a combined row (production's entry standing for that
candidate's too)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS positions(
  partition INTEGER PRIMARY KEY, pairs INTEGER NOT NULL, labels INTEGER NOT NULL,
  pairs_wm INTEGER NOT NULL, labels_wm INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state(
  kind TEXT NOT NULL, route TEXT NOT NULL, candidate TEXT NOT NULL, partition INTEGER NOT NULL,
  data BLOB NOT NULL, PRIMARY KEY(kind, route, candidate, partition));
CREATE TABLE IF NOT EXISTS pending(
  key TEXT NOT NULL, kind TEXT NOT NULL, partition INTEGER NOT NULL, route TEXT NOT NULL,
  expires INTEGER NOT NULL, data BLOB NOT NULL, cand TEXT, PRIMARY KEY(key, kind))
  WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_expiry ON pending(partition, expires);
CREATE TABLE IF NOT EXISTS labels(
  key TEXT PRIMARY KEY, partition INTEGER NOT NULL, ts INTEGER NOT NULL,
  expires INTEGER NOT NULL, route TEXT, label BLOB NOT NULL, joined INTEGER NOT NULL,
  prod_done INTEGER NOT NULL, slots TEXT NOT NULL DEFAULT '') WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_expiry ON labels(partition, expires);
CREATE TABLE IF NOT EXISTS decisions(
  id INTEGER PRIMARY KEY AUTOINCREMENT, route TEXT NOT NULL, candidate TEXT NOT NULL,
  model TEXT NOT NULL, verdict TEXT NOT NULL, as_of INTEGER, at_ms INTEGER NOT NULL,
  evidence BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS assessment_positions(
  partition INTEGER PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS assessed(
  key TEXT NOT NULL, slot TEXT NOT NULL, partition INTEGER NOT NULL, expires INTEGER NOT NULL,
  PRIMARY KEY(key, slot)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS assessed_expiry ON assessed(partition, expires);
"""


@dataclass
class Positions:
    """Where a partition's state stands: next offsets and watermarks (ms)."""

    pairs: int = 0
    labels: int = 0
    pairs_wm: int = 0
    labels_wm: int = 0
    assessments: int = 0
    """Next offset on the assessments topic (Kafka), or assessment records committed
    (embedded); kept in its own table (``assessment_positions``)."""


@dataclass(slots=True)
class LabelRow:
    """A stored label; ``value`` is the label, parsed."""

    key: str
    ts: int
    route: str | None
    value: Any
    joined: bool
    prod_done: bool
    slots: frozenset[str] = frozenset()
    """``slot/ts`` of the candidate entries that joined it."""


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in WAL mode; ``synchronous=NORMAL`` keeps every commit atomic (a crash
    loses at most the latest commits, never half of one)."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.executescript(_SCHEMA)
    _add_column(conn, "pending", "cand", "TEXT")  # a file written before combined entries
    _add_column(conn, "labels", "slots", "TEXT NOT NULL DEFAULT ''")  # before slot tracking
    return conn


def _add_column(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    if column in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
        return
    try:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    except sqlite3.OperationalError as exc:  # another connection added it meanwhile
        if "duplicate column" not in str(exc):
            raise


def entry_ts(data: str | bytes) -> int:
    """The time in a pending entry's data (``[ts, production, candidate]``), read without
    parsing the predictions."""
    text = data if isinstance(data, str) else data.decode()
    return int(text[1 : text.index(",")])


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.conn = connect(path)
        self._params = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        """Most ``?`` one statement may have."""

    def _where_keys(self, head: str, first: Sequence[Any], keys: Sequence[str]) -> None:
        """``head key IN (keys)``, with the ``first`` parameters before the keys."""
        for chunk in _chunks(keys, self._params - len(first)):
            self.conn.execute(f"{head} key IN ({','.join('?' * len(chunk))})", [*first, *chunk])

    def close(self) -> None:
        self.conn.close()

    # --- reading at start -------------------------------------------------------------------

    def positions(self) -> dict[int, Positions]:
        rows = self.conn.execute(
            "SELECT partition, pairs, labels, pairs_wm, labels_wm FROM positions"
        )
        out = {int(r[0]): Positions(int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}
        for part, nxt in self.conn.execute("SELECT partition, next FROM assessment_positions"):
            out.setdefault(int(part), Positions()).assessments = int(nxt)
        return out

    def states(self, partitions: Iterable[int] | None = None) -> dict[StateKey, bytes]:
        """The serialised states (of the given partitions, or all) by key."""
        rows = self.conn.execute("SELECT kind, route, candidate, partition, data FROM state")
        wanted = None if partitions is None else set(partitions)
        return {
            StateKey(str(r[0]), str(r[1]), str(r[2]), int(r[3])): bytes(r[4])
            for r in rows
            if wanted is None or int(r[3]) in wanted
        }

    def meta(self, key: str) -> bytes | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_meta(self, key: str, value: bytes) -> None:
        """Set a meta entry (its own transaction)."""
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def state_names(self) -> list[tuple[str, str, str]]:
        """(kind, route, candidate) of every stored state."""
        q = "SELECT DISTINCT kind, route, candidate FROM state"
        return [(str(r[0]), str(r[1]), str(r[2])) for r in self.conn.execute(q)]

    def pending_count(self) -> int:
        """Pending entries (a combined row holds two)."""
        row = self.conn.execute("SELECT count(*) + count(cand) FROM pending").fetchone()
        return int(row[0])

    def label_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM labels").fetchone()[0])

    # --- inside a batch (call begin() first) ------------------------------------------------

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def labels_for(self, keys: Sequence[str]) -> dict[str, LabelRow]:
        out: dict[str, LabelRow] = {}
        for chunk in _chunks(keys):
            q = (
                "SELECT key, ts, route, label, joined, prod_done, slots FROM labels WHERE key IN "
                f"({','.join('?' * len(chunk))})"
            )
            for r in self.conn.execute(q, chunk):
                out[r[0]] = LabelRow(
                    r[0],
                    int(r[1]),
                    r[2],
                    orjson.loads(r[3]),
                    bool(r[4]),
                    bool(r[5]),
                    frozenset(r[6].split()) if r[6] else frozenset(),
                )
        return out

    def pending_for(self, keys: Sequence[str]) -> list[PendingRow]:
        """Every pending row under these keys, in (key, kind) order."""
        out: list[PendingRow] = []
        for chunk in _chunks(keys):
            q = (
                "SELECT key, kind, route, data, cand FROM pending WHERE key IN "
                f"({','.join('?' * len(chunk))}) ORDER BY key, kind"
            )
            out.extend(self.conn.execute(q, chunk))
        return out

    def assessed(self, keys: Sequence[str]) -> set[tuple[str, str]]:
        """(key, slot) of the assessments already counted under these keys (``id/ts``)."""
        out: set[tuple[str, str]] = set()
        for chunk in _chunks(keys):
            q = f"SELECT key, slot FROM assessed WHERE key IN ({','.join('?' * len(chunk))})"
            out.update((str(k), str(s)) for k, s in self.conn.execute(q, chunk))
        return out

    def add_assessed(self, rows: Sequence[tuple[str, str, int, int]]) -> None:
        """Remember counted assessments: (key, slot, partition, expires)."""
        self.conn.executemany("INSERT OR IGNORE INTO assessed VALUES (?, ?, ?, ?)", rows)

    def expire_assessed(self, partition: int, before: int) -> None:
        """Forget the assessments of a partition whose memory ended before ``before`` (ms)."""
        self.conn.execute(
            "DELETE FROM assessed WHERE partition = ? AND expires < ?", (partition, before)
        )

    def pending_kinds(self, keys: Sequence[str]) -> dict[tuple[str, str], int]:
        """(key, kind) of every pending entry under these keys (both of a combined row), with
        the time of the request it came from."""
        out: dict[tuple[str, str], int] = {}
        for chunk in _chunks(keys):
            q = (
                "SELECT key, kind, cand, data FROM pending WHERE key IN "
                f"({','.join('?' * len(chunk))})"
            )
            for key, kind, cand, data in self.conn.execute(q, chunk):
                ts = entry_ts(data)
                out[(key, kind)] = ts
                if cand is not None:
                    out[(key, cand)] = ts
        return out

    def pending_ts(self, wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The timestamp of the pending entry of each (key, candidate slot) that has one (a
        candidate's own row, or a combined row standing for it)."""
        want = set(wanted)
        out: dict[tuple[str, str], int] = {}
        for key, kind, _, data, cand in self.pending_for(sorted({k for k, _ in want})):
            slot = cand if cand is not None else kind
            if (key, slot) in want:
                out[(key, slot)] = entry_ts(data)
        return out

    def add_pending(self, rows: Sequence[tuple[str, str, int, str, int, str, str | None]]) -> None:
        """(key, kind, partition, route, expires, data, cand); an existing row is kept."""
        self.conn.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def drop_pending(self, rows: Sequence[tuple[str, str]]) -> None:
        """Delete the pending rows of these (key, kind)."""
        by_kind: dict[str, list[str]] = defaultdict(list)
        for key, kind in rows:
            by_kind[kind].append(key)
        for kind, keys in by_kind.items():
            self._where_keys("DELETE FROM pending WHERE kind = ? AND", (kind,), keys)

    def add_labels(
        self, rows: Sequence[tuple[str, int, int, int, str | None, str, int, int, str]]
    ) -> None:
        """(key, partition, ts, expires, route, label, joined, prod_done, slots)."""
        self.conn.executemany(
            "INSERT INTO labels(key, partition, ts, expires, route, label, joined, prod_done, "
            "slots) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def add_label_slots(self, rows: Sequence[tuple[str, str]]) -> None:
        """(slots, key): these ``slot/ts`` (space-separated; ``/ts``: production's entry)
        joined the stored label."""
        self.conn.executemany(
            "UPDATE labels SET slots = CASE WHEN slots = '' THEN ? ELSE slots || ' ' || ? END "
            "WHERE key = ?",
            [(slots, slots, key) for slots, key in rows],
        )

    def mark_labels(self, rows: Sequence[tuple[int, str]]) -> None:
        """(prod_done, key): the label has joined (and production's entry if prod_done)."""
        by_prod: dict[int, list[str]] = defaultdict(list)
        for prod, key in rows:
            by_prod[prod].append(key)
        for prod, keys in sorted(by_prod.items()):
            self._where_keys(
                "UPDATE labels SET joined = 1, prod_done = max(prod_done, ?) WHERE", (prod,), keys
            )

    def any_expired(self, partition: int, pairs_before_ms: int, labels_before_ms: int) -> bool:
        """Whether a pending pair expires before ``pairs_before_ms`` or a label before
        ``labels_before_ms`` (one indexed look-up each)."""
        for query, before in (
            ("SELECT 1 FROM pending WHERE partition = ? AND expires < ? LIMIT 1", pairs_before_ms),
            ("SELECT 1 FROM labels WHERE partition = ? AND expires < ? LIMIT 1", labels_before_ms),
        ):
            if self.conn.execute(query, (partition, before)).fetchone() is not None:
                return True
        return False

    def expire_pending(self, partition: int, now_ms: int) -> list[tuple[str, str, str | None]]:
        """Delete rows whose TTL ended; returns their (kind, route, cand)."""
        rows = self.conn.execute(
            "DELETE FROM pending WHERE partition = ? AND expires < ? RETURNING kind, route, cand",
            (partition, now_ms),
        )
        return [(str(r[0]), str(r[1]), r[2]) for r in rows.fetchall()]

    def expire_labels(self, partition: int, now_ms: int) -> list[tuple[bool, str | None]]:
        """Delete labels whose TTL ended; returns (joined, route) of each."""
        rows = self.conn.execute(
            "DELETE FROM labels WHERE partition = ? AND expires < ? RETURNING joined, route",
            (partition, now_ms),
        )
        return [(bool(r[0]), r[1]) for r in rows.fetchall()]

    def put_states(self, rows: Sequence[tuple[str, str, str, int, bytes]]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?)", rows)

    def delete_states(self, keys: Sequence[StateKey]) -> None:
        self.conn.executemany(
            "DELETE FROM state WHERE kind = ? AND route = ? AND candidate = ? AND partition = ?",
            keys,
        )

    def put_positions(self, partition: int, p: Positions) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?, ?)",
            (partition, p.pairs, p.labels, p.pairs_wm, p.labels_wm),
        )
        if p.assessments:
            self.conn.execute(
                "INSERT OR REPLACE INTO assessment_positions VALUES (?, ?)",
                (partition, p.assessments),
            )

    def add_decision(
        self, route: str, candidate: str, model: str, verdict: str, as_of: int | None,
        at_ms: int, evidence: bytes,
    ) -> None:  # fmt: skip
        self.conn.execute(
            "INSERT INTO decisions(route, candidate, model, verdict, as_of, at_ms, evidence) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (route, candidate, model, verdict, as_of, at_ms, evidence),
        )

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    # --- history ----------------------------------------------------------------------------

    def decisions(
        self, route: str | None = None, candidate: str | None = None, model: str | None = None
    ) -> list[tuple[str, str, str, str, int | None, int, bytes]]:
        q = "SELECT route, candidate, model, verdict, as_of, at_ms, evidence FROM decisions"
        cond: list[str] = []
        args: list[Any] = []
        for col, val in (("route", route), ("candidate", candidate), ("model", model)):
            if val is not None:
                cond.append(f"{col} = ?")
                args.append(val)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        q += " ORDER BY id"
        return [
            (r[0], r[1], r[2], r[3], r[4], int(r[5]), bytes(r[6]))
            for r in self.conn.execute(q, args)
        ]
