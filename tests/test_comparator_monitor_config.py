"""`routes[].monitor` decides how production's degradation is judged."""

from __future__ import annotations

import numpy as np

from shadowroute.comparator.production import new_production_state
from shadowroute.core.config import Monitor

HOUR = 3_600_000


def state_with_decay(drop: float) -> object:
    """Accuracy 0.9 for 4 hourly windows, then 0.9 - drop for 2, 400 labels per window."""
    rng = np.random.default_rng(7)
    st = new_production_state("r", "accuracy", "hour", [], [], None)
    for w in range(6):
        p = 0.9 if w < 4 else 0.9 - drop
        ts = [w * HOUR + i for i in range(400)]
        st.add_labelled(ts, [t + 1000 for t in ts], list(rng.random(400) < p))
    return st


def test_reference_and_current_windows_and_margin_come_from_config() -> None:
    st = state_with_decay(0.15)
    strict = Monitor(reference_windows=4, current_windows=2, min_labelled=100)
    out = st.degradation(0.05, strict)  # type: ignore[attr-defined]
    assert out["state"] == "degraded"
    assert 0.1 < out["estimate"] < 0.2
    # the same drop is tolerated with a margin larger than it
    lenient = strict.model_copy(update={"degradation_margin": 0.3})
    assert st.degradation(0.05, lenient)["state"] == "ok"  # type: ignore[attr-defined]
    # with a reference of all six windows there is nothing left to compare
    everything = Monitor(reference_windows=6, current_windows=2)
    assert st.degradation(0.05, everything)["state"] == "insufficient"  # type: ignore[attr-defined]
    # a stable stream is not degraded
    assert state_with_decay(0.0).degradation(0.05, strict)["state"] == "ok"  # type: ignore[attr-defined]
