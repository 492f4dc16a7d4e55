"""Does a run's outcome match its scenario? Pure: API documents in, a verdict on the demo out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shadowroute.demo.scenarios import ScenarioName

DRIFTING = frozenset({"minor", "major"})
OUTPUT_FIELD = "output"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    summary: str
    """One line: what happened against what was expected."""


def drifting_fields(production: dict[str, Any] | None) -> dict[str, float]:
    """Input fields whose drift state is minor or major, with their PSI."""
    drift = (production or {}).get("drift")
    if not isinstance(drift, dict):
        return {}
    out: dict[str, float] = {}
    for name, f in drift.items():
        if name != OUTPUT_FIELD and isinstance(f, dict) and f.get("state") in DRIFTING:
            psi = f.get("psi")
            out[str(name)] = float(psi) if isinstance(psi, int | float) else float("nan")
    return out


def degradation_state(production: dict[str, Any] | None) -> str | None:
    deg = (production or {}).get("degradation")
    state = deg.get("state") if isinstance(deg, dict) else None
    return state if isinstance(state, str) else None


def check(
    scenario: ScenarioName, decision: dict[str, Any] | None, production: dict[str, Any] | None
) -> Outcome:
    verdict = (decision or {}).get("verdict", "none")
    if scenario == "better":
        ok = verdict == "promote"
        return Outcome(ok, f"verdict {verdict}, expected promote")
    if scenario == "worse":
        ok = verdict == "reject"
        return Outcome(ok, f"verdict {verdict}, expected reject")
    if scenario == "same":
        ok = verdict != "promote"
        return Outcome(ok, f"verdict {verdict}, expected hold or reject (never promote)")
    fields = drifting_fields(production)
    degraded = degradation_state(production) == "degraded"
    if fields or degraded:
        names = ", ".join(f"{k} (PSI {v:.2f})" for k, v in sorted(fields.items()))
        what = [f"drift on {names}"] if fields else []
        what += ["production quality degraded"] if degraded else []
        return Outcome(True, "; ".join(what))
    return Outcome(False, "no drift and no degradation detected, expected at least one")


PROMPT_FIELD = "embedding:$.messages[-1].content"
"""The LLM demo's embedding drift field (the user's last message)."""


def check_llm(
    decision: dict[str, Any] | None,
    production: dict[str, Any] | None,
    scores: dict[str, Any] | None,
) -> Outcome:
    """The LLM demo: a candidate faster and cheaper but worse by the judge holds or rejects
    with the judge's interval among the reasons; its TTFT and cost ratios are shown; the topic
    shift is flagged by the prompt's embedding drift."""
    d = decision or {}
    verdict = d.get("verdict", "none")
    judged = any("judge" in str(r) for r in d.get("reasons") or [])
    llm = (scores or {}).get("llm") or {}
    ttft = ((llm.get("ttft_ms") or {}).get("ratio") or {}).get("p99")
    cost = (llm.get("cost") or {}).get("ratio")
    drift = ((production or {}).get("drift") or {}).get(PROMPT_FIELD) or {}
    state = drift.get("state")
    problems = []
    if verdict not in ("hold", "reject") or not judged:
        problems.append(f"verdict {verdict}, expected reject or hold on the judge")
    if not isinstance(ttft, int | float) or not isinstance(cost, int | float):
        problems.append("no TTFT or cost ratio")
    if state not in DRIFTING:
        problems.append(f"prompt embedding drift {state or 'absent'}, expected minor or major")
    if problems:
        return Outcome(False, "; ".join(problems))
    return Outcome(
        True,
        f"verdict {verdict} on the judge; candidate/production TTFT p99 ×{ttft:.2f}, "
        f"cost ×{cost:.2f}; prompt embedding drift {state}",
    )
