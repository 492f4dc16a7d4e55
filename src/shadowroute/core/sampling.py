"""Deterministic mirror sampling from the request id.

Every worker and replica maps a request id to the same point ``u`` in [0, 1); a candidate with
fraction ``f`` is mirrored when ``u < f``. Candidates therefore share their sampled requests
(a 10% candidate's requests are a subset of a 50% candidate's), so they are compared on the same
traffic.
"""

from __future__ import annotations

from hashlib import blake2b

_SCALE = float(1 << 64)


def sample_point(request_id: bytes) -> float:
    """A uniform point in [0, 1) fixed by the request id."""
    return int.from_bytes(blake2b(request_id, digest_size=8).digest(), "big") / _SCALE


def is_sampled(request_id: bytes, fraction: float) -> bool:
    return fraction >= 1.0 or (fraction > 0.0 and sample_point(request_id) < fraction)
