"""The operator's log: what a running router says of itself, as lines a person reads.

At start, a summary: routes, where production is, each candidate with its fraction, the
ports, the scorecard's URL. Then one line per change of state, never one per request: a
candidate's circuit breaker opening or closing; a candidate whose mirrors mostly fail, and
with what (``http_4xx``, ``connect``, ...); mirrors or records dropped window after window;
and, logged where verdicts are decided (``comparator.reader.Verdicts``, same logger), a
verdict change with its reason. A condition that
lasts is said again every ``repeat_s``, not on every sample.

``Watch`` is the pure part: it is handed cumulative counters (``Sample``) at each tick and
returns the lines to log; ``watch_loop`` samples the data plane's counters every few seconds
in the process that serves the admin port, in every process layout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shadowroute.core.config import Config

__all__ = ["Sample", "Watch", "sample_of", "startup_lines", "watch_loop"]

log = logging.getLogger("shadowroute.ops")

INFO = logging.INFO
WARNING = logging.WARNING


def _pct(x: float) -> str:
    return f"{x:.0%}" if x >= 0.01 or x == 0 else "<1%"


def startup_lines(config: Config, listen: str, admin: str) -> list[str]:
    """What a starting router says: where clients go, where to look, what is mirrored.

    ``listen`` and ``admin`` are ``host:port`` as bound."""
    transport = config.transport
    where = (
        "embedded (comparator in this process)"
        if transport.kind == "embedded"
        else f"Kafka at {transport.bootstrap}, topics {transport.topic_prefix}.*"
    )
    lines = [
        f"clients: http://{listen}  admin: http://{admin} (scorecard /, API /v1, "
        f"metrics /metrics)  records: {where}",
    ]
    if not config.mirror.enabled:
        lines.append("mirroring is off (mirror.enabled: false; PUT /v1/mirroring turns it on)")
    for r in config.routes:
        host = f" host {r.host}" if r.host else ""
        lines.append(
            f"route {r.name}: {r.path_prefix}{host} -> production {r.production.name} at "
            f"{r.production.url} ({r.protocol}, {r.task}, monitored {_pct(r.monitor_fraction)})"
        )
        for c in r.candidates:
            extra = []
            if c.noise:
                extra.append("noise")
            if c.rewrite is not None and c.rewrite.model:
                extra.append(f"model {c.rewrite.model}")
            elif c.rewrite is not None and (c.rewrite.path or c.rewrite.path_prefix):
                extra.append("path rewritten")
            tail = f" [{', '.join(extra)}]" if extra else ""
            lines.append(
                f"  candidate {c.name} at {c.url}: {_pct(c.fraction)} of requests mirrored{tail}"
            )
        if not r.candidates:
            lines.append("  no candidates: production is monitored only")
    return lines


@dataclass
class Sample:
    """Cumulative counters of the data plane at one tick (as ``/metrics`` shows them)."""

    mirrors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(route, candidate, outcome) -> count (``shadowroute_mirror_requests_total``)."""
    errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(route, candidate, reason) -> count (``shadowroute_mirror_errors_total``)."""
    dropped: Counter[str] = field(default_factory=Counter)
    """reason -> records lost (``shadowroute_records_dropped_total``)."""
    circuits: dict[tuple[str, str], bool] = field(default_factory=dict)
    """(route, candidate) -> the breaker is open."""


@dataclass
class _Alert:
    since: float
    said: float


class Watch:
    """Turns successive ``Sample``s into the lines worth logging (pure: no clock, no I/O).

    A candidate is *failing* when, in the window since the last sample, at least
    ``min_mirrors`` mirrors ended and at least ``fail_share`` of them without a prediction;
    it has *recovered* when that share falls under ``recover_share``. Drops are *sustained*
    when two windows in a row had some."""

    def __init__(
        self,
        *,
        min_mirrors: int = 20,
        fail_share: float = 0.5,
        recover_share: float = 0.1,
        repeat_s: float = 300.0,
    ) -> None:
        self.min_mirrors = min_mirrors
        self.fail_share = fail_share
        self.recover_share = recover_share
        self.repeat_s = repeat_s
        self._last: Sample | None = None
        self._last_t = 0.0
        self._failing: dict[tuple[str, str], _Alert] = {}
        self._dropping: dict[tuple[str, ...], _Alert] = {}
        self._dropped_before: set[tuple[str, ...]] = set()

    def observe(self, sample: Sample, now: float) -> list[tuple[int, str]]:
        last, self._last = self._last, sample
        window, self._last_t = now - self._last_t, now
        if last is None:
            return [
                (WARNING, f"candidate {r}/{c}: circuit breaker open")
                for (r, c), is_open in sorted(sample.circuits.items())
                if is_open
            ]
        out: list[tuple[int, str]] = []
        secs = f"{window:.0f} s" if window >= 10 else f"{window:.1f} s"
        for key, is_open in sorted(sample.circuits.items()):
            was = last.circuits.get(key, False)
            if is_open and not was:
                why = "mirrors are not sent until it lets one through again"
                out.append((WARNING, f"candidate {key[0]}/{key[1]}: circuit breaker open; {why}"))
            elif was and not is_open:
                out.append((INFO, f"candidate {key[0]}/{key[1]}: circuit breaker closed"))
        out += self._failures(last, sample, now, secs)
        out += self._drops(last, sample, now, secs)
        return out

    def _failures(
        self, last: Sample, sample: Sample, now: float, secs: str
    ) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        cands = {(r, c) for r, c, _ in sample.mirrors}
        for key in sorted(cands):
            r, c = key
            ok = sample.mirrors[(r, c, "ok")] - last.mirrors[(r, c, "ok")]
            reasons = Counter(
                {
                    reason: n - last.errors[(rr, cc, reason)]
                    for (rr, cc, reason), n in sample.errors.items()
                    if (rr, cc) == key and n > last.errors[(rr, cc, reason)]
                }
            )
            failed = sum(reasons.values())
            ended = ok + failed
            alert = self._failing.get(key)
            if ended < self.min_mirrors:
                continue
            share = failed / ended
            top = ", ".join(f"{why} {n}" for why, n in reasons.most_common(3))
            said = f"{failed} of {ended} mirrors failed in the last {secs}"
            if top:
                said += f": {top}"
            if share >= self.fail_share:
                if alert is None:
                    self._failing[key] = _Alert(now, now)
                    out.append((WARNING, f"candidate {r}/{c}: {said}"))
                elif now - alert.said >= self.repeat_s:
                    alert.said = now
                    since = f"{now - alert.since:.0f} s"
                    out.append((WARNING, f"candidate {r}/{c}: still failing after {since}, {said}"))
            elif alert is not None and share < self.recover_share:
                del self._failing[key]
                out.append((INFO, f"candidate {r}/{c}: mirrors answer again ({said})"))
        return out

    def _drops(self, last: Sample, sample: Sample, now: float, secs: str) -> list[tuple[int, str]]:
        now_dropping: dict[tuple[str, ...], tuple[int, str]] = {}
        for reason, n in sample.dropped.items():
            d = n - last.dropped[reason]
            if d > 0:
                now_dropping[("records", reason)] = (d, f"{d} records dropped ({reason})")
        for (r, c, outcome), n in sample.mirrors.items():
            if outcome == "dropped_full":
                d = n - last.mirrors[(r, c, outcome)]
                if d > 0:
                    msg = f"candidate {r}/{c}: {d} mirrors dropped at its max_in_flight"
                    now_dropping[("mirrors", r, c)] = (d, msg)
        out: list[tuple[int, str]] = []
        for key, (_, msg) in sorted(now_dropping.items()):
            alert = self._dropping.get(key)
            if alert is None:
                if key in self._dropped_before:  # two windows in a row: sustained
                    self._dropping[key] = _Alert(now, now)
                    out.append((WARNING, f"{msg} in the last {secs}, and in the window before"))
            elif now - alert.said >= self.repeat_s:
                alert.said = now
                out.append(
                    (WARNING, f"{msg} in the last {secs}; dropping for {now - alert.since:.0f} s")
                )
        for key in [k for k in self._dropping if k not in now_dropping]:
            del self._dropping[key]
            what = f"records ({key[1]})" if key[0] == "records" else f"mirrors to {key[1]}/{key[2]}"
            out.append((INFO, f"no more {what} dropped in the last {secs}"))
        self._dropped_before = set(now_dropping)
        return out


async def watch_loop(
    sample: Callable[[], Sample],
    *,
    interval_s: float = 10.0,
    watch: Watch | None = None,
    clock: Callable[[], float] | None = None,
) -> None:
    """Log what ``Watch`` finds in the counters every ``interval_s``, until cancelled."""
    w = watch or Watch()
    now = clock or asyncio.get_running_loop().time
    while True:
        for level, line in w.observe(sample(), now()):
            log.log(level, "%s", line)
        await asyncio.sleep(interval_s)


def sample_of(
    mirrors: Counter[tuple[str, str, str]],
    errors: Counter[tuple[str, str, str]],
    dropped: Counter[str],
    circuits: Iterable[tuple[str, str, bool]],
) -> Sample:
    """A ``Sample`` from copies of the data plane's counters (they keep changing)."""
    return Sample(
        Counter(mirrors), Counter(errors), Counter(dropped), {(r, c): o for r, c, o in circuits}
    )
