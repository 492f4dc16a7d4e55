"""Deterministic mirror sampling from the request id.

Every worker and replica maps a request id to the same point ``u`` in [0, 1); a candidate with
fraction ``f`` is mirrored when ``u < f``. Candidates therefore share their sampled requests
(a 10% candidate's requests are a subset of a 50% candidate's), so they are compared on the same
traffic.
"""

from __future__ import annotations

import struct
from hashlib import blake2b
from typing import Final

_SCALE: Final = float(1 << 64)
# Copying a made hash object is cheaper than making one with keyword arguments, per request.
_BLAKE2B_8: Final = blake2b(digest_size=8)
_UINT64: Final = struct.Struct(">Q")


def sample_point(request_id: bytes) -> float:
    """A uniform point in [0, 1) fixed by the request id: the first 8 bytes of its BLAKE2b-64
    digest, big-endian, over 2**64.

    >>> sample_point(b"req-1") == int.from_bytes(
    ...     blake2b(b"req-1", digest_size=8).digest(), "big") / 2**64
    True
    """
    h = _BLAKE2B_8.copy()
    h.update(request_id)
    value: int = _UINT64.unpack(h.digest())[0]
    return value / _SCALE


def is_sampled(request_id: bytes, fraction: float) -> bool:
    return fraction >= 1.0 or (fraction > 0.0 and sample_point(request_id) < fraction)
