"""Request ids: validated when a client sends one, generated otherwise."""

from __future__ import annotations

import os
import re

MAX_LEN = 128
_VALID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


def is_valid(value: bytes) -> bool:
    """Printable, header-safe and bounded: no spaces, quotes, commas or control characters."""
    return _VALID.fullmatch(value) is not None


def generate() -> bytes:
    return os.urandom(16).hex().encode()
