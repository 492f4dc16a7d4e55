"""Request ids: validated when a client sends one, generated otherwise."""

from __future__ import annotations

import os
import re
from binascii import hexlify
from typing import Final

MAX_LEN = 128
_VALID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")

ID_BYTES: Final = 16
"""Random bytes per generated id (128 bits: 32 hex characters)."""
_BATCH: Final = 256
"""Ids drawn per ``os.urandom`` call."""


def is_valid(value: bytes) -> bool:
    """Printable, header-safe and bounded: no spaces, quotes, commas or control characters."""
    return _VALID.fullmatch(value) is not None


class IdGenerator:
    """Unpredictable request ids: 128 random bits each, as 32 lowercase hex characters.

    Nothing about one id tells anything about the next (a counter would let a client send
    requests under the ids the router is about to give others). The bits come from
    ``os.urandom`` in batches of 256 ids, hex-encoded once, so an id costs one slice. The
    buffer is filled on first use, so a generator made before a fork draws its own bits in
    each process as long as it was not used before the fork.

    >>> g = IdGenerator()
    >>> a, b = g(), g()
    >>> len(a), a != b, is_valid(a)
    (32, True, True)
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def __call__(self) -> bytes:
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = hexlify(os.urandom(ID_BYTES * _BATCH))
            pos = 0
        end = pos + 2 * ID_BYTES
        self._pos = end
        return self._buf[pos:end]
