"""Rules a label must meet before it is taken: a timestamp near the time it was received and a
bounded value. Pure functions over the config's ``labels`` section.

>>> from shadowroute.core.config import parse_config
>>> cfg = parse_config({"routes": [{"name": "r", "protocol": "kserve-v1",
...     "production": {"name": "p", "url": "http://127.0.0.1:1"}}]}, environ={})
>>> rules = LabelRules.of(cfg)
>>> rules.check(LabelRecord("a", 1, 1_000, None), now_ms=1_000)
>>> rules.check(LabelRecord("a", 1, 9 * 10**15, None), now_ms=1_000)
'ts_in_future'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from shadowroute.core.config import Config
from shadowroute.core.records import LabelRecord

__all__ = ["LabelRules", "same_label"]


@dataclass(frozen=True, slots=True)
class LabelRules:
    max_future_ms: int
    max_age_ms: int
    max_value_bytes: int

    @classmethod
    def of(cls, config: Config) -> LabelRules:
        lab = config.labels
        age_s = lab.max_age_s
        if age_s is None:
            age_s = max(r.label_ttl_s for r in config.routes)
        return cls(int(lab.max_future_s * 1000), int(age_s * 1000), lab.max_value_bytes)

    def check(self, label: LabelRecord, now_ms: int) -> str | None:
        """None when the label may be taken, else the reason it is refused."""
        if label.ts > now_ms + self.max_future_ms:
            return "ts_in_future"
        if label.ts < now_ms - self.max_age_ms:
            return "ts_too_old"
        value = label.label
        if isinstance(value, str | list | dict) and _json_size(value) > self.max_value_bytes:
            return "label_too_large"
        return None

    def split(
        self, labels: Sequence[LabelRecord], now_ms: int
    ) -> tuple[list[LabelRecord], list[tuple[str, str]]]:
        """The labels that meet the rules, and (id, reason) of each one that does not."""
        good: list[LabelRecord] = []
        refused: list[tuple[str, str]] = []
        for lab in labels:
            reason = self.check(lab, now_ms)
            if reason is None:
                good.append(lab)
            else:
                refused.append((lab.id, reason))
        return good, refused

    def trusted_ts(self, ts: int, now_ms: int) -> int:
        """A label's time as far as a watermark may move with it: never beyond the time the
        router trusts (now, plus the tolerated clock difference)."""
        return min(ts, now_ms + self.max_future_ms)


def _json_size(value: object) -> int:
    if isinstance(value, str) and len(value) <= 64:
        return len(value) + 2
    return len(orjson.dumps(value))


def same_label(a: object, b: object) -> bool:
    """Whether two label values are the same (an identical re-send, not a conflict)."""
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )
