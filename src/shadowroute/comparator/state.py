"""The comparator's named state: what a state is keyed by, the three kinds and their types.

A comparator keeps, per source partition, one state per key (``StateKey``):

- ``cand`` — a candidate revision's evidence against production (``CandidateState``); its
  ``candidate`` is the slot ``<name>@<revision id>`` (``core.revision.slot_name``; a bare name
  in state written before revisions);
- ``prod`` — production's own monitoring of a route (``ProductionState``), ``candidate`` empty;
- ``part`` — the partition's counters (``PartitionCounters``), route and candidate empty.

``STATE_TYPES`` is the one table from kind to type: every state type reads itself from its
serialised form (``from_dict``), writes it (``to_dict``) and merges with the same state of
another partition (``merge``). The serialised forms and the keys are those the state file
(``state`` rows) and the scores topic have always held: ``StateKey.topic_key`` is the scores
topic's message key (``route|candidate|partition``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.production import ProductionState

__all__ = [
    "CAND",
    "PART",
    "PARTITION",
    "PRODUCTION",
    "PROD_STATE",
    "STATE_TYPES",
    "PartitionCounters",
    "State",
    "StateKey",
    "state_from_dict",
]

CAND: Final = "cand"
PROD_STATE: Final = "prod"
PART: Final = "part"

PRODUCTION: Final = "@production"
"""The ``candidate`` of production's state in a scores-topic key."""
PARTITION: Final = "@partition"
"""The route and candidate of the partition counters in a scores-topic key."""


class StateKey(NamedTuple):
    """(kind, route, candidate, partition): the key of one state (``cand``, ``prod`` or
    ``part``; see the module docstring). Equal to the plain tuple of the same four values."""

    kind: str
    route: str
    candidate: str
    partition: int

    @staticmethod
    def cand(route: str, slot: str, partition: int) -> StateKey:
        """A candidate revision's state (``slot``: ``<name>@<revision id>``)."""
        return StateKey(CAND, route, slot, partition)

    @staticmethod
    def prod(route: str, partition: int) -> StateKey:
        """Production's monitoring state of a route."""
        return StateKey(PROD_STATE, route, "", partition)

    @staticmethod
    def part(partition: int) -> StateKey:
        """The partition's counters."""
        return StateKey(PART, "", "", partition)

    def topic_key(self) -> bytes:
        """The scores-topic message key: ``route|candidate|partition`` (production's state
        ``route|@production|p``, the counters ``@partition|@partition|p``)."""
        route, cand = self.route, self.candidate
        if self.kind == PROD_STATE:
            cand = PRODUCTION
        elif self.kind == PART:
            route = cand = PARTITION
        return f"{route}|{cand}|{self.partition}".encode()

    @staticmethod
    def of_tombstone(raw: bytes | None) -> StateKey | None:
        """The candidate state a scores-topic tombstone (key ``route|candidate|partition``,
        no value) drops; None for any other key."""
        parts = (raw or b"").decode("utf-8", "replace").rsplit("|", 2)
        if len(parts) != 3 or parts[1] in (PRODUCTION, PARTITION) or not parts[2].isdigit():
            return None
        return StateKey(CAND, parts[0], parts[1], int(parts[2]))


class PartitionCounters(dict[str, int]):
    """A partition's counters by name (``pairs_read``, ``duplicate_ids``, ``waiting:<route>``,
    ``deadletter:<reason>``...). Serialised as the plain JSON object of the counters."""

    def add(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n

    def merge(self, other: Mapping[str, int]) -> PartitionCounters:
        """The sums of both (a new object)."""
        out = PartitionCounters(self)
        for name, n in other.items():
            out[name] = out.get(name, 0) + n
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartitionCounters:
        return cls({str(k): int(v) for k, v in data.items()})


State = CandidateState | ProductionState | PartitionCounters
"""A state of any kind."""

STATE_TYPES: Final[Mapping[str, Any]] = {
    CAND: CandidateState,
    PROD_STATE: ProductionState,
    PART: PartitionCounters,
}
"""Kind -> the type of its state (each with ``from_dict``, ``to_dict`` and ``merge``)."""


def state_from_dict(kind: str, data: Mapping[str, Any]) -> State:
    """The state of a kind from its serialised form. An unknown kind raises ``KeyError``."""
    out: State = STATE_TYPES[kind].from_dict(data)
    return out
