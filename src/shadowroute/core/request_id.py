"""Request ids: validated when a client sends one, generated otherwise."""

from __future__ import annotations

import os
import re

MAX_LEN = 128
_VALID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


def is_valid(value: bytes) -> bool:
    """Printable, header-safe and bounded: no spaces, quotes, commas or control characters."""
    return _VALID.fullmatch(value) is not None


class IdGenerator:
    """Unique request ids without a system call per request: a random 64-bit prefix drawn
    when the generator is made (per process, after any fork) and a counter.

    >>> g = IdGenerator(b"0123456789abcdef")
    >>> g(), g()
    (b'0123456789abcdef-1', b'0123456789abcdef-2')
    """

    __slots__ = ("_n", "_prefix")

    def __init__(self, prefix: bytes | None = None) -> None:
        self._prefix = (prefix or os.urandom(8).hex().encode()) + b"-"
        self._n = 0

    def __call__(self) -> bytes:
        self._n += 1
        return self._prefix + b"%x" % self._n
