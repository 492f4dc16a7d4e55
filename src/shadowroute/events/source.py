"""The snapshot of a process's read side the detector looks at: each candidate's decision
and each route's production document from the scores reader (where there is one), and the
candidates' circuits from the data plane (where there is one)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from shadowroute.comparator.reader import ScoresReader
from shadowroute.core.config import Config
from shadowroute.events.detect import Snapshot

__all__ = ["DecisionReader", "snapshot_source"]


DecisionReader = ScoresReader
"""What the detector reads: each candidate's decision and each route's production document."""


def snapshot_source(
    current: Callable[[], Config],
    reader: DecisionReader | None,
    circuits: Callable[[], Iterable[tuple[str, str, bool]]] | None,
) -> Callable[[], Snapshot]:
    """A function taking one ``Snapshot`` of what this process can see, over the routes of
    the config of the moment (``current``: after a reload, the reloaded one)."""

    def snapshot() -> Snapshot:
        snap = Snapshot()
        config = current()
        if reader is not None:
            for r in config.routes:
                for c in r.candidates:
                    if not c.noise:
                        snap.decisions[(r.name, c.name)] = reader.decision(r.name, c.name)
                snap.production[r.name] = reader.production(r.name)
        if circuits is not None:
            snap.circuits = {(r, c): is_open for r, c, is_open in circuits()}
        snap.psi_alert = {r.name: r.drift.psi_alert for r in config.routes}
        return snap

    return snapshot
