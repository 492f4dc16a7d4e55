"""The operator's log, pure: successive counter samples in, the lines worth logging out."""

from __future__ import annotations

import logging
from collections import Counter

from shadowroute.comparator.reader import verdict_line
from shadowroute.core.config import parse_config
from shadowroute.oplog import Sample, Watch, startup_lines

R, C = "fraud", "v2"


class Counters:
    """Cumulative counters as the data plane keeps them."""

    def __init__(self) -> None:
        self.mirrors: Counter[tuple[str, str, str]] = Counter()
        self.errors: Counter[tuple[str, str, str]] = Counter()
        self.dropped: Counter[str] = Counter()
        self.open = False

    def mirrored(self, ok: int = 0, **errors: int) -> None:
        self.mirrors[(R, C, "sent")] += ok + sum(errors.values())
        self.mirrors[(R, C, "ok")] += ok
        for reason, n in errors.items():
            self.errors[(R, C, reason)] += n

    def sample(self) -> Sample:
        return Sample(
            Counter(self.mirrors), Counter(self.errors), Counter(self.dropped), {(R, C): self.open}
        )


def run(watch: Watch, steps: list[tuple[float, Sample]]) -> list[list[tuple[int, str]]]:
    return [watch.observe(s, t) for t, s in steps]


def test_a_candidate_answering_4xx_is_said_once_with_its_reason_then_its_recovery() -> None:
    w, c = Watch(repeat_s=300.0), Counters()
    assert w.observe(c.sample(), 0.0) == []
    c.mirrored(http_4xx=250)
    [(level, line)] = w.observe(c.sample(), 10.0)
    assert level == logging.WARNING
    assert line == "candidate fraud/v2: 250 of 250 mirrors failed in the last 10 s: http_4xx 250"
    c.mirrored(http_4xx=240, timeout=10)
    assert w.observe(c.sample(), 20.0) == []  # the same condition: not said again yet
    c.mirrored(http_4xx=100)
    [(level, line)] = w.observe(c.sample(), 310.0)
    assert "still failing after 300 s" in line and "http_4xx 100" in line
    c.mirrored(ok=95, http_4xx=5)
    [(level, line)] = w.observe(c.sample(), 320.0)
    assert level == logging.INFO and line.startswith("candidate fraud/v2: mirrors answer again")


def test_too_few_mirrors_or_a_minority_of_failures_says_nothing() -> None:
    w, c = Watch(min_mirrors=20), Counters()
    w.observe(c.sample(), 0.0)
    c.mirrored(connect=19)
    assert w.observe(c.sample(), 10.0) == []  # 19 ended: under min_mirrors
    c.mirrored(ok=60, http_5xx=40)
    assert w.observe(c.sample(), 20.0) == []  # 40 %: under fail_share
    c.mirrored(ok=10, http_5xx=30, connect=20, reset=5, bad_json=1)
    [(_, line)] = w.observe(c.sample(), 30.0)
    assert line.endswith(
        "56 of 66 mirrors failed in the last 10 s: http_5xx 30, connect 20, reset 5"
    )


def test_the_breaker_is_said_when_it_opens_and_when_it_closes() -> None:
    w, c = Watch(), Counters()
    w.observe(c.sample(), 0.0)
    c.open = True
    [(level, line)] = w.observe(c.sample(), 10.0)
    assert level == logging.WARNING and line.startswith("candidate fraud/v2: circuit breaker open")
    assert w.observe(c.sample(), 20.0) == []
    c.open = False
    assert w.observe(c.sample(), 30.0) == [
        (logging.INFO, "candidate fraud/v2: circuit breaker closed")
    ]
    # a breaker already open when the log starts is said at once
    first = Counters()
    first.open = True
    assert len(Watch().observe(first.sample(), 0.0)) == 1


def test_drops_are_said_when_they_last_and_when_they_stop() -> None:
    w, c = Watch(repeat_s=60.0), Counters()
    w.observe(c.sample(), 0.0)
    c.dropped["queue_full"] += 5
    assert w.observe(c.sample(), 10.0) == []  # one window: a burst, not said
    c.dropped["queue_full"] += 7
    c.mirrors[(R, C, "dropped_full")] += 3
    [(level, line)] = w.observe(c.sample(), 20.0)
    assert level == logging.WARNING
    assert line == "7 records dropped (queue_full) in the last 10 s, and in the window before"
    c.dropped["queue_full"] += 1
    c.mirrors[(R, C, "dropped_full")] += 3
    [(_, line)] = w.observe(c.sample(), 30.0)
    assert line.startswith("candidate fraud/v2: 3 mirrors dropped at its max_in_flight")
    for t in (40.0, 50.0):
        c.dropped["queue_full"] += 1
        c.mirrors[(R, C, "dropped_full")] += 1
        assert w.observe(c.sample(), t) == []
    c.dropped["queue_full"] += 1
    c.mirrors[(R, C, "dropped_full")] += 1
    lines = [line for _, line in w.observe(c.sample(), 80.0)]
    assert any("dropping for 60 s" in x and "queue_full" in x for x in lines)
    ended = w.observe(c.sample(), 90.0)
    assert sorted(line for _, line in ended) == [
        "no more mirrors to fraud/v2 dropped in the last 10 s",
        "no more records (queue_full) dropped in the last 10 s",
    ]
    assert all(level == logging.INFO for level, _ in ended)


def test_the_startup_summary_names_routes_candidates_ports_and_the_scorecard() -> None:
    cfg = parse_config(
        {
            "mirror": {"enabled": False},
            "routes": [
                {
                    "name": "fraud",
                    "path_prefix": "/v2/models/fraud",
                    "protocol": "openinference",
                    "task": "classification",
                    "monitor_fraction": 0.25,
                    "production": {"name": "fraud", "url": "http://fraud:8080"},
                    "candidates": [
                        {"name": "fraud-v2", "url": "http://v2:8080", "fraction": 0.1,
                         "rewrite": {"model": "fraud-v2"}},
                    ],
                },
                {"name": "ltv", "jsonpath": "$.y", "production": {"name": "p", "url": "http://p"}},
            ],
        },
        environ={},
    )  # fmt: skip
    lines = startup_lines(cfg, "0.0.0.0:8080", "127.0.0.1:9090")
    assert lines[0].startswith("clients: http://0.0.0.0:8080  admin: http://127.0.0.1:9090")
    assert "scorecard /" in lines[0] and "embedded" in lines[0]
    assert "mirroring is off" in lines[1]
    assert lines[2] == (
        "route fraud: /v2/models/fraud -> production fraud at http://fraud:8080 "
        "(openinference, classification, monitored 25%)"
    )
    assert lines[3] == (
        "  candidate fraud-v2 at http://v2:8080: 10% of requests mirrored [model fraud-v2]"
    )
    assert lines[5] == "  no candidates: production is monitored only"


def test_a_verdict_change_line_carries_its_reason() -> None:
    change = {"route": "fraud", "candidate": "v2", "verdict": "promote", "event": "verdict",
              "reasons": ["accuracy +0.04 [+0.01, +0.07] is above +0.00", "more"],
              "pairs": 1200, "labelled": 900}  # fmt: skip
    assert verdict_line(change, "hold") == (
        "verdict fraud/v2: hold -> promote (accuracy +0.04 [+0.01, +0.07] is above +0.00; "
        "1200 pairs, 900 labelled)"
    )
    first = verdict_line({**change, "reasons": []}, None)
    assert first.startswith("verdict fraud/v2: promote (no reason given")
