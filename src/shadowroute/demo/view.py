"""The live terminal view: progress and current scores, redrawn about once a second on a
terminal, or printed as plain lines every few seconds when stdout is not a terminal.

``render`` is pure (a snapshot in, lines out); ``TerminalView`` only writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TextIO

BAR_WIDTH = 24


@dataclass
class Snapshot:
    scenario: str
    elapsed_s: float
    duration_s: float
    sent: int = 0
    ok: int = 0
    failed: int = 0
    labels_posted: int = 0
    shifted: bool = False
    primary: str = "accuracy"
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Candidate name → the decision document from the API."""
    production: dict[str, Any] | None = None


def fmt_signed(x: Any) -> str:
    return f"{x:+.3f}" if isinstance(x, int | float) else "n/a"


def fmt_interval(ev: dict[str, Any] | None) -> str:
    """``+0.152 [+0.081, +0.240]`` from a metric's evidence."""
    if not ev or ev.get("estimate") is None:
        return "no data yet"
    lo, up = fmt_signed(ev.get("lower")), fmt_signed(ev.get("upper"))
    return f"{fmt_signed(ev['estimate'])} [{lo}, {up}]"


def progress_bar(done: float, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, round(done * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def decision_line(candidate: str, doc: dict[str, Any], primary: str) -> str:
    verdict = str(doc.get("verdict", "?")).upper()
    ev = (doc.get("metrics") or {}).get(primary)
    return (
        f"{candidate:<18} {verdict:<8} pairs {doc.get('pairs', 0):>5}  "
        f"labelled {doc.get('labelled', 0):>5}  {primary} {fmt_interval(ev)}"
    )


def production_line(doc: dict[str, Any] | None) -> str | None:
    """Production quality (latest window), its degradation state and the worst drifting
    input field, from ``GET /v1/routes/{route}/production``."""
    if not doc:
        return None
    parts: list[str] = []
    series = doc.get("quality")
    if isinstance(series, list) and series and isinstance(series[-1], dict):
        value = series[-1].get("value")
        if isinstance(value, int | float):
            parts.append(f"{doc.get('metric', 'quality')} {value:.3f}")
    deg = doc.get("degradation")
    if isinstance(deg, dict) and deg.get("state"):
        parts.append(f"degradation {deg['state']}")
    worst = worst_drift(doc)
    if worst is not None:
        name, psi, state = worst
        parts.append(f"drift {state} (PSI {psi:.2f} on {name})")
    parts += embedding_drift(doc)
    return "production         " + " · ".join(parts) if parts else None


def worst_drift(doc: dict[str, Any]) -> tuple[str, float, str] | None:
    """The input field with the highest PSI (production's own output excluded)."""
    drift = doc.get("drift")
    best: tuple[str, float, str] | None = None
    if isinstance(drift, dict):
        for name, f in drift.items():
            if name == "output" or not isinstance(f, dict):
                continue
            psi = f.get("psi")
            if isinstance(psi, int | float) and (best is None or psi > best[1]):
                best = (str(name), float(psi), str(f.get("state", "?")))
    return best


def embedding_drift(doc: dict[str, Any]) -> list[str]:
    """Embedding drift fields (``embedding:<path>``) past ``stable``, with their p-value."""
    drift = doc.get("drift")
    out: list[str] = []
    if isinstance(drift, dict):
        for name, f in sorted(drift.items()):
            if not isinstance(f, dict) or f.get("kind") != "embedding":
                continue
            state, p = f.get("state"), f.get("p_value")
            if state in ("minor", "major"):
                shown = f"p {p:.2g} " if isinstance(p, int | float) else ""
                out.append(f"embedding drift {state} ({shown}on {name})")
    return out


def render(s: Snapshot) -> list[str]:
    done = min(1.0, s.elapsed_s / s.duration_s) if s.duration_s > 0 else 1.0
    lines = [
        f"scenario {s.scenario}  {progress_bar(done)} {s.elapsed_s:4.0f}s / {s.duration_s:.0f}s",
        f"traffic            {s.sent} sent · {s.ok} ok · {s.failed} failed · "
        f"{s.labels_posted} labels posted" + ("   (inputs shifted)" if s.shifted else ""),
    ]
    for name, doc in sorted(s.decisions.items()):
        lines.append(decision_line(name, doc, s.primary))
    prod = production_line(s.production)
    if prod:
        lines.append(prod)
    return lines


class TerminalView:
    """Redraws in place on a terminal; otherwise prints one block every ``plain_every_s``."""

    def __init__(self, out: TextIO, interactive: bool, plain_every_s: float = 5.0) -> None:
        self.out = out
        self.interactive = interactive
        self.plain_every_s = plain_every_s
        self._drawn = 0
        self._last_plain = -1e9

    def show(self, snap: Snapshot) -> None:
        lines = render(snap)
        if self.interactive:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        elif snap.elapsed_s - self._last_plain >= self.plain_every_s:
            self._last_plain = snap.elapsed_s
            self.out.write(" | ".join(line.strip() for line in lines) + "\n")
        self.out.flush()

    def release(self) -> None:
        """Stop redrawing: later output goes below the view."""
        self._drawn = 0
