"""The rate-limiting log filter for chatty client libraries."""

from __future__ import annotations

import logging

from shadowroute.logfilter import RateLimitFilter


def _record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_same_kind_passes_once_per_interval_then_reports_the_suppressed_count() -> None:
    now = [0.0]
    f = RateLimitFilter(interval_s=30.0, clock=lambda: now[0])
    passed = []
    for i in range(200):  # 20 a second for 10 s, as during a broker outage
        now[0] = i * 0.05
        rec = _record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused")
        if f.filter(rec):
            passed.append(rec.getMessage())
    assert len(passed) == 1
    now[0] = 31.0
    rec = _record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused")
    assert f.filter(rec)
    assert rec.getMessage().endswith("(199 similar messages suppressed)")


def test_other_loggers_and_other_kinds_are_untouched() -> None:
    f = RateLimitFilter(clock=lambda: 0.0)
    assert all(f.filter(_record("shadowroute.proxy", "x")) for _ in range(5))
    assert f.filter(_record("aiokafka.conn", "one"))
    assert f.filter(_record("aiokafka.conn", "two"))
    assert not f.filter(_record("aiokafka.conn", "one"))


def test_memory_stays_bounded() -> None:
    now = [0.0]
    f = RateLimitFilter(clock=lambda: now[0])
    for i in range(5000):
        now[0] = float(i)
        f.filter(_record("aiokafka.x", f"message {i}"))
    assert len(f._last) <= 1025
