"""Live control of mirroring: the global switch and, per candidate, on/off and the fraction of
requests mirrored to it, as the config says them and as the API changed them since.

Pure: no file, no clock (times are handed in). What the API set (an *override*) wins over the
config, is kept across restarts in a small state file (read and written at the edge,
``runtime.control``) and across config reloads while its candidate is still configured; each
change is kept in a bounded change log (``changes``, newest last), which the state file keeps
too. The data plane is told one number per candidate, its *effective* fraction: the fraction,
or 0 while the candidate is off.

>>> from shadowroute.core.config import parse_config
>>> route = {"name": "r", "jsonpath": "$.y", "production": {"name": "p", "url": "http://p:1"},
...          "candidates": [{"name": "c", "url": "http://c:1", "fraction": 0.5}]}
>>> cfg = parse_config({"routes": [route]}, environ={})
>>> s = MirrorSettings(cfg)
>>> s.get("r", "c"), s.source("r", "c")
(CandidateMirror(enabled=True, fraction=0.5), 'config')
>>> change = s.set("r", "c", s.update("r", "c", {"enabled": False}), at_ms=1000)
>>> s.effective()[("r", "c")], change.to_json()["after"]
(0.0, {'enabled': False, 'fraction': 0.5})
>>> s.update("r", "c", {"fraction": 2})
Traceback (most recent call last):
...
shadowroute.core.mirror_control.ControlError: fraction must be a number from 0 to 1, got 2
>>> MirrorSettings(cfg, parse_state(s.to_state())).get("r", "c").enabled
False
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from shadowroute.core.config import Config

__all__ = [
    "MAX_CHANGES",
    "STATE_VERSION",
    "CandidateMirror",
    "Change",
    "ControlError",
    "MirrorSettings",
    "StoredState",
    "parse_state",
]

MAX_CHANGES: Final = 500
"""Changes kept in the change log (and the state file); the oldest go first."""
STATE_VERSION: Final = 1
Key = tuple[str, str]


class ControlError(ValueError):
    """A request the settings refuse: ``status`` 404 (no such route or candidate) or 400."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CandidateMirror:
    """Whether a candidate gets mirrors, and which fraction of the requests."""

    enabled: bool
    fraction: float

    @property
    def effective(self) -> float:
        """The fraction the data plane samples with: 0 while the candidate is off."""
        return self.fraction if self.enabled else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "fraction": self.fraction}


@dataclass(frozen=True)
class Change:
    """One change of the settings. ``route``/``candidate`` are None for the global switch;
    ``before``/``after`` are the settings (``{"enabled": ...}`` for the switch), ``after``
    None when a candidate left the config; ``source`` is ``api`` or ``reload``."""

    at_ms: int
    route: str | None
    candidate: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "route": self.route,
            "candidate": self.candidate,
            "before": self.before,
            "after": self.after,
            "source": self.source,
        }

    @staticmethod
    def from_json(doc: Any) -> Change:
        if not isinstance(doc, Mapping):
            raise ValueError("a change is not an object")
        at, src = doc.get("at_ms"), doc.get("source")
        if not isinstance(at, int) or not isinstance(src, str):
            raise ValueError("a change lacks at_ms or source")
        for k in ("route", "candidate"):
            if doc.get(k) is not None and not isinstance(doc.get(k), str):
                raise ValueError(f"a change's {k} is not a string")
        for k in ("before", "after"):
            if doc.get(k) is not None and not isinstance(doc.get(k), Mapping):
                raise ValueError(f"a change's {k} is not an object")
        return Change(
            at, doc.get("route"), doc.get("candidate"), doc.get("before"), doc.get("after"), src
        )


def _fraction(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0.0 <= value <= 1.0
    ):
        raise ControlError(400, f"fraction must be a number from 0 to 1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class StoredState:
    """A state file's content, validated: the switch (None: the config's), the overrides,
    the change log."""

    mirroring: bool | None
    candidates: dict[Key, CandidateMirror]
    changes: list[Change]


def parse_state(doc: Any) -> StoredState:
    """A state document, checked; ``ValueError`` saying what is wrong."""
    if not isinstance(doc, Mapping):
        raise ValueError("not a JSON object")
    if doc.get("version") != STATE_VERSION:
        raise ValueError(f"version {doc.get('version')!r}, expected {STATE_VERSION}")
    mirroring = doc.get("mirroring")
    if mirroring is not None and not isinstance(mirroring, bool):
        raise ValueError("mirroring must be true, false or null")
    rows = doc.get("candidates", [])
    if not isinstance(rows, list):
        raise ValueError("candidates must be a list")
    cands: dict[Key, CandidateMirror] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"candidates[{i}] is not an object")
        route, cand, enabled = row.get("route"), row.get("candidate"), row.get("enabled")
        if not isinstance(route, str) or not isinstance(cand, str):
            raise ValueError(f"candidates[{i}] lacks route or candidate")
        if not isinstance(enabled, bool):
            raise ValueError(f"candidates[{i}].enabled must be true or false")
        try:
            fraction = _fraction(row.get("fraction"))
        except ControlError as exc:
            raise ValueError(f"candidates[{i}]: {exc.message}") from None
        cands[(route, cand)] = CandidateMirror(enabled, fraction)
    changes = doc.get("changes", [])
    if not isinstance(changes, list):
        raise ValueError("changes must be a list")
    return StoredState(mirroring, cands, [Change.from_json(c) for c in changes[-MAX_CHANGES:]])


def _configured(config: Config) -> dict[Key, CandidateMirror]:
    return {(r.name, c.name): CandidateMirror(True, c.fraction) for r in config.routes
            for c in r.candidates}  # fmt: skip


class MirrorSettings:
    """The live settings of one serving process (the supervisor's, with workers)."""

    def __init__(self, config: Config, stored: StoredState | None = None) -> None:
        self._config = _configured(config)
        self._config_mirroring = config.mirror.enabled
        self._overrides: dict[Key, CandidateMirror] = {}
        self._mirroring: bool | None = None
        self.changes: deque[Change] = deque(maxlen=MAX_CHANGES)
        self.ignored: list[str] = []
        """Stored overrides for candidates the config does not have (dropped), in words."""
        if stored is not None:
            self._mirroring = stored.mirroring
            self.changes.extend(stored.changes)
            for key, value in stored.candidates.items():
                if key in self._config:
                    self._overrides[key] = value
                else:
                    self.ignored.append(f"route {key[0]!r} candidate {key[1]!r}")

    # --- reading -----------------------------------------------------------------------------

    def check(self, route: str, candidate: str) -> Key:
        key = (route, candidate)
        if key not in self._config:
            if all(r != route for r, _ in self._config):
                raise ControlError(404, f"unknown route {route!r}")
            raise ControlError(404, f"route {route!r} has no candidate {candidate!r}")
        return key

    def get(self, route: str, candidate: str) -> CandidateMirror:
        key = self.check(route, candidate)
        return self._overrides.get(key) or self._config[key]

    def configured(self, route: str, candidate: str) -> CandidateMirror:
        return self._config[self.check(route, candidate)]

    def source(self, route: str, candidate: str) -> str:
        """``api`` while an override is set, else ``config``."""
        return "api" if self.check(route, candidate) in self._overrides else "config"

    @property
    def mirroring(self) -> bool:
        """The global switch."""
        return self._config_mirroring if self._mirroring is None else self._mirroring

    def effective(self, config: Config | None = None) -> dict[Key, float]:
        """Every configured candidate's effective fraction; with ``config``, those that
        ``rebase(config)`` would give (nothing changes)."""
        configured = self._config if config is None else _configured(config)
        return {k: (self._overrides.get(k) or v).effective for k, v in configured.items()}

    def history(self, route: str, candidate: str) -> list[Change]:
        return [c for c in self.changes if c.route == route and c.candidate == candidate]

    # --- changing ----------------------------------------------------------------------------

    def update(self, route: str, candidate: str, body: Any) -> CandidateMirror:
        """The settings a PUT body ``{"enabled"?: bool, "fraction"?: number}`` asks for (what
        it leaves out stays as it is); ``ControlError`` for a bad body or an unknown name."""
        now = self.get(route, candidate)
        if not isinstance(body, Mapping) or not body:
            raise ControlError(400, 'body must be {"enabled"?: true|false, "fraction"?: 0..1}')
        extra = sorted(set(body) - {"enabled", "fraction"})
        if extra:
            raise ControlError(400, f"unknown field(s) {extra}: only enabled and fraction")
        enabled = body.get("enabled", now.enabled)
        if not isinstance(enabled, bool):
            raise ControlError(400, f"enabled must be true or false, got {enabled!r}")
        fraction = _fraction(body["fraction"]) if "fraction" in body else now.fraction
        return CandidateMirror(enabled, fraction)

    def set(
        self, route: str, candidate: str, value: CandidateMirror | None, *, at_ms: int,
        source: str = "api",
    ) -> Change:  # fmt: skip
        """Set a candidate's override (None: back to the config's); the change, logged."""
        key = self.check(route, candidate)
        before = self.get(route, candidate)
        if value is None:
            self._overrides.pop(key, None)
        else:
            self._overrides[key] = value
        change = Change(
            at_ms, route, candidate, before.to_json(), self.get(route, candidate).to_json(), source
        )
        self.changes.append(change)
        return change

    def set_mirroring(self, enabled: bool, *, at_ms: int, source: str = "api") -> Change:
        before = self.mirroring
        self._mirroring = enabled
        change = Change(at_ms, None, None, {"enabled": before}, {"enabled": enabled}, source)
        self.changes.append(change)
        return change

    def rebase(self, config: Config, *, at_ms: int) -> list[Change]:
        """A reloaded config: its values from now on, the overrides of candidates it still
        has kept; one change (source ``reload``) per candidate whose settings it changed."""
        before = {k: self.get(*k) for k in self._config}
        self._config = _configured(config)
        self._config_mirroring = config.mirror.enabled
        self._overrides = {k: v for k, v in self._overrides.items() if k in self._config}
        out: list[Change] = []
        for key in sorted(set(before) | set(self._config)):
            old = before.get(key)
            new = self.get(*key) if key in self._config else None
            if old != new:
                out.append(
                    Change(
                        at_ms, key[0], key[1], old.to_json() if old else None,
                        new.to_json() if new else None, "reload",
                    )
                )  # fmt: skip
        self.changes.extend(out)
        return out

    def to_state(self) -> dict[str, Any]:
        """What the state file keeps."""
        return {
            "version": STATE_VERSION,
            "mirroring": self._mirroring,
            "candidates": [
                {"route": r, "candidate": c, **v.to_json()}
                for (r, c), v in sorted(self._overrides.items())
            ],
            "changes": [c.to_json() for c in self.changes],
        }
