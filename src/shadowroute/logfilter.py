"""A logging filter that lets each kind of message from chatty libraries through once per
interval: during a broker outage the Kafka client logs the same error many times a second per
connection, which buries everything else.

A "kind" is the logger name plus the message template (before arguments are filled in). The
first record of a kind passes; later ones within ``interval_s`` are counted and dropped; the
next one after the interval passes with "(N similar messages suppressed)" appended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

NOISY_PREFIXES = ("aiokafka", "kafka")


class RateLimitFilter(logging.Filter):
    def __init__(
        self,
        interval_s: float = 30.0,
        prefixes: tuple[str, ...] = NOISY_PREFIXES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.prefixes = prefixes
        self.clock = clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} ({seen[1]} similar messages suppressed)"
        if len(self._last) > 1024:  # bounded: forget the oldest kinds
            for old in sorted(self._last, key=lambda k: self._last[k][0])[:512]:
                del self._last[old]
        self._last[key] = (now, 0)
        return True
