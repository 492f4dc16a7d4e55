"""Pair and label records as the engine reads them: one plain object per record.

``read_pair`` and ``read_label`` accept the common shape of a schema-v1 record after the same
exact type checks as the fast paths of ``shadowroute.core.records.decode_pair`` and
``decode_label``, without building frozen record objects; anything else goes through those
decoders, which accept it or name the reason (``RecordError``). Either way the result holds
the same values.

>>> from shadowroute.core.records import Side, encode_pair
>>> side = Side("fraud-v7", "7", 200, 4.0, [1], None)
>>> rec = read_pair(encode_pair(request_id="a", route="fraud", ts_ms=1, production=side,
...                             candidate=None, input={"x": 1}))
>>> rec.id, rec.prod_output, rec.candidate, rec.input
('a', [1], None, {'x': 1})
>>> lab = read_label(b'{"v": 1, "id": "a", "label": 1, "ts": 5}')
>>> lab.id, lab.label, lab.ts, lab.route, lab.joined
('a', 1, 5, None, False)
"""

from __future__ import annotations

from typing import Any, Final

from shadowroute.core.records import (
    LabelRecord,
    PairRecord,
    decode_label,
    decode_pair,
    fast_label_fields,
    fast_pair_fields,
    parse_record,
)
from shadowroute.core.revision import Identity

__all__ = ["Label", "Pair", "read_label", "read_pair"]

_NO_KEYS: Final[list[str]] = []
"""A new pair's label keys until the engine sets them (shared: never appended to)."""


class Pair:
    """A valid pair record, with the fields ``CandidateState.add_pairs`` reads (``PairRow``'s)
    plus the request id, route, candidate model (``None`` in a production-only record), input
    and, once the engine has set them, the label keys of its instances. Each side's url,
    version and revision are its revision identity (``prod_ident``, ``cand_ident``); the
    engine replaces ``candidate`` by the state slot of its revision
    (``core.revision.slot_name``)."""

    __slots__ = (
        "cand_error",
        "cand_latency",
        "cand_llm",
        "cand_output",
        "cand_revision",
        "cand_url",
        "cand_version",
        "candidate",
        "id",
        "input",
        "keys",
        "prod_error",
        "prod_latency",
        "prod_llm",
        "prod_output",
        "prod_revision",
        "prod_url",
        "prod_version",
        "route",
        "ts",
    )

    def __init__(
        self, rid: str, route: str, ts: int, prod_error: str | None,
        prod_latency: float | None, prod_output: list[Any] | None, candidate: str | None,
        cand_error: str | None, cand_latency: float | None, cand_output: list[Any] | None,
        doc: Any,
    ) -> None:  # fmt: skip
        self.id = rid
        self.route = route
        self.ts = ts
        self.prod_error = prod_error
        self.prod_latency = prod_latency
        self.prod_output = prod_output
        self.candidate = candidate
        self.cand_error = cand_error
        self.cand_latency = cand_latency
        self.cand_output = cand_output
        self.input = doc
        self.keys: list[str] = _NO_KEYS  # set by the engine before any use
        self.prod_url: str | None = None
        self.prod_version: str | None = None
        self.prod_revision: str | None = None
        self.cand_url: str | None = None
        self.cand_version: str | None = None
        self.cand_revision: str | None = None
        self.prod_llm: dict[str, Any] | None = None  # ``Side.llm`` (``openai`` routes)
        self.cand_llm: dict[str, Any] | None = None

    @property
    def prod_ident(self) -> Identity:
        return (self.prod_url, self.prod_version, self.prod_revision)

    @property
    def cand_ident(self) -> Identity | None:
        """``None`` in a production-only record."""
        if self.candidate is None:
            return None
        return (self.cand_url, self.cand_version, self.cand_revision)

    @classmethod
    def of(cls, rec: PairRecord) -> Pair:
        p, c = rec.production, rec.candidate
        if c is None:
            out = cls(rec.id, rec.route, rec.ts, p.error, p.latency_ms, p.output,
                      None, None, None, None, rec.input)  # fmt: skip
        else:
            out = cls(rec.id, rec.route, rec.ts, p.error, p.latency_ms, p.output,
                      c.model, c.error, c.latency_ms, c.output, rec.input)  # fmt: skip
            out.cand_url, out.cand_version, out.cand_revision = c.url, c.version, c.revision
            out.cand_llm = c.llm
        out.prod_url, out.prod_version, out.prod_revision = p.url, p.version, p.revision
        out.prod_llm = p.llm
        return out


def read_pair(value: bytes) -> Pair:
    """Parse and validate a pair record; raises ``RecordError`` with the reason."""
    obj = parse_record(value)
    if type(obj) is dict:
        rec = _fast(obj)
        if rec is not None:
            return rec
    return Pair.of(decode_pair(value))


def _fast(obj: dict[str, Any]) -> Pair | None:
    f = fast_pair_fields(obj)
    if f is None:
        return None
    rid, route, ts, p, c, inp = f
    if c is None:
        out = Pair(rid, route, ts, p[5], p[3], p[4], None, None, None, None, inp)
    else:
        out = Pair(rid, route, ts, p[5], p[3], p[4], c[0], c[5], c[3], c[4], inp)
        out.cand_url, out.cand_version, out.cand_revision = c[6], c[1], c[7]
    out.prod_url, out.prod_version, out.prod_revision = p[6], p[1], p[7]
    return out


class Label:
    """A valid label record, with the flags of its joins in the batch that first sees it
    (``joined``: some pair instance joined it; ``prod_done``: production's entry did)."""

    __slots__ = ("id", "joined", "label", "prod_done", "route", "slots", "ts")

    def __init__(self, rid: str, label: Any, ts: int, route: str | None) -> None:
        self.id = rid
        self.label = label
        self.ts = ts
        self.route = route
        self.joined = False
        self.prod_done = False
        self.slots: list[str] = []  # ``slot/ts`` of the entries that joined it (``/ts``: prod)

    @classmethod
    def of(cls, lab: LabelRecord) -> Label:
        return cls(lab.id, lab.label, lab.ts, lab.route)


def read_label(value: bytes) -> Label:
    """Parse and validate a label record (``ts`` required); raises ``RecordError``."""
    obj = parse_record(value)
    if type(obj) is dict:
        lab = _fast_label(obj)
        if lab is not None:
            return lab
    return Label.of(decode_label(obj))


def _fast_label(obj: dict[str, Any]) -> Label | None:
    f = fast_label_fields(obj)
    return None if f is None else Label(f[0], f[1], f[2], f[3])


def same_text(a: str | None, b: str | None) -> bool:
    """``a == b`` for optional strings, cheaply when they are the same object or ``None``."""
    if a is b:
        return True
    return a is not None and b is not None and a == b
