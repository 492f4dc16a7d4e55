"""Generated pair and label records, and paired metrics, for the comparator tests and
benchmarks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from shadowroute.comparator.aggregates import CandidateState
from shadowroute.comparator.state import StateKey
from shadowroute.core.config import Config, parse_config
from shadowroute.core.records import LabelRecord, Side, encode_pair
from shadowroute.core.revision import split_slot
from shadowroute.core.stats.paired import PairedMetric

if TYPE_CHECKING:
    from shadowroute.comparator.engine import Engine

T0 = 1_764_000_000_000


def config(
    state_path: str,
    *,
    task: str = "classification",
    ttl_s: float = 3600.0,
    policy: dict[str, object] | None = None,
    drift: dict[str, object] | None = None,
    prefix: str = "shadowroute",
    bootstrap: str | None = None,
    partitions: int = 1,
) -> Config:
    raw: dict[str, object] = {
        "comparator": {"state_path": state_path, "windows": ["hour"]},
        "routes": [
            {
                "name": "fraud",
                "protocol": "kserve-v1",
                "task": task,
                "label_ttl_s": ttl_s,
                "production": {
                    "name": "fraud-v7",
                    "url": "http://127.0.0.1:9001",
                    "lineage": {"trained_through": "2026-10-31", "training_data": "s3://x"},
                },
                "candidates": [
                    {"name": "fraud-v8", "url": "http://127.0.0.1:9002"},
                    {"name": "fraud-v9", "url": "http://127.0.0.1:9003"},
                ],
                "policy": policy or {"min_pairs": 200, "min_labelled": 100},
                "drift": drift or {"fields": ["$.amount"]},
            }
        ],
    }
    if bootstrap is not None:
        raw["transport"] = {
            "kind": "kafka",
            "bootstrap": bootstrap,
            "topic_prefix": prefix,
            "topics": {"partitions": partitions},
        }
    return parse_config(raw, environ={})


def routes_config(
    state_path: str, names: Sequence[str], *, min_pairs: int = 200, drift: bool = False
) -> Config:
    """Classification routes at ``/<name>/``, each with production ``fraud-v7`` and the two
    candidates of ``config``'s route (``fraud-v8``, ``fraud-v9``)."""

    def route(name: str) -> dict[str, object]:
        out: dict[str, object] = {
            "name": name,
            "protocol": "kserve-v1",
            "task": "classification",
            "path_prefix": f"/{name}/",
            "production": {"name": "fraud-v7", "url": "http://127.0.0.1:9001"},
            "candidates": [
                {"name": "fraud-v8", "url": "http://127.0.0.1:9002"},
                {"name": "fraud-v9", "url": "http://127.0.0.1:9003"},
            ],
            "policy": {"min_pairs": min_pairs, "min_labelled": 100},
        }
        if drift:
            out["drift"] = {"fields": ["$.amount"]}
        return out

    raw = {
        "comparator": {"state_path": state_path, "windows": ["hour"]},
        "routes": [route(n) for n in names],
    }
    return parse_config(raw, environ={})


def on_route(s: Stream, route: str) -> tuple[list[tuple[bytes, bytes]], list[LabelRecord]]:
    """A stream's pairs moved to ``route`` (their ids stay), and its labels."""
    pairs = []
    for key, value in s.pairs:
        d = orjson.loads(value)
        d["route"] = route
        pairs.append((key, orjson.dumps(d)))
    return pairs, s.labels


@dataclass
class Stream:
    """A deterministic stream: pairs (key, value) and labels, with the truth kept."""

    pairs: list[tuple[bytes, bytes]]
    labels: list[LabelRecord]


def classification(
    n: int,
    *,
    p_prod: float = 0.8,
    p_cand: float = 0.8,
    seed: int = 0,
    label_share: float = 1.0,
    candidate: str = "fraud-v8",
    step_ms: int = 10,
    label_delay_ms: int = 60_000,
    batched_every: int = 0,
) -> Stream:
    """Binary classification: each model right with its own probability (independently)."""
    rng = np.random.default_rng(seed)
    pairs: list[tuple[bytes, bytes]] = []
    labels: list[LabelRecord] = []
    for i in range(n):
        rid = f"r{seed}-{i}"
        k = 3 if batched_every and i % batched_every == 0 else 1
        ys = rng.integers(0, 2, size=k).tolist()
        prod = [y if rng.random() < p_prod else 1 - y for y in ys]
        cand = [y if rng.random() < p_cand else 1 - y for y in ys]
        ts = T0 + i * step_ms
        pairs.append(
            (rid.encode(), pair(rid, ts, prod, cand, candidate, amount=float(rng.normal())))
        )
        if rng.random() < label_share:
            for j, y in enumerate(ys):
                lid = rid if k == 1 else f"{rid}#{j}"
                labels.append(LabelRecord(id=lid, label=y, ts=ts + label_delay_ms))
    return Stream(pairs, labels)


def pair(
    rid: str,
    ts: int,
    prod: list[object],
    cand: list[object] | None,
    candidate: str = "fraud-v8",
    amount: float = 1.0,
    cand_error: str | None = None,
    revision: str | None = None,
    prod_revision: str | None = None,
) -> bytes:
    p = Side("fraud-v7", "7", 200, 4.0 + (ts % 7), prod, None, revision=prod_revision)
    c = None
    if cand is not None or cand_error is not None:
        c = Side(candidate, "8", 200, 5.0 + (ts % 5), cand, cand_error, revision=revision)
    return encode_pair(
        request_id=rid, route="fraud", ts_ms=ts, production=p, candidate=c,
        input={"amount": amount},
    )  # fmt: skip


def cand_key(states: Mapping[StateKey, Any], route: str, cand: str, partition: int) -> StateKey:
    """The state key of a candidate's one revision on a partition (states are kept per
    revision: ``name@revision id``)."""
    keys = [
        k
        for k in map(StateKey._make, states)
        if k.kind == "cand"
        and k.route == route
        and k.partition == partition
        and split_slot(k.candidate)[0] == cand
    ]
    if len(keys) != 1:
        raise KeyError(("cand", route, cand, partition, keys))
    return keys[0]


def cand_state(engine: Engine, route: str, cand: str, partition: int) -> CandidateState:
    """The state of a candidate's one revision on a partition."""
    revisions = engine.candidate_revisions(route, cand, partition)
    if len(revisions) != 1:
        raise KeyError(("cand", route, cand, partition, sorted(revisions)))
    return next(iter(revisions.values()))


def interleave(s: Stream, seed: int = 1) -> Iterator[tuple[str, object]]:
    """Pairs and labels in a random order ("pair", (k, v)) / ("label", LabelRecord)."""
    rng = np.random.default_rng(seed)
    items: list[tuple[str, object]] = [("pair", p) for p in s.pairs]
    items += [("label", lab) for lab in s.labels]
    order = rng.permutation(len(items))
    for i in order:
        yield items[int(i)]


def test_generated_records_follow_schema_v1() -> None:
    from shadowroute.comparator.engine import label_keys
    from shadowroute.core.records import decode_pair

    s = classification(50, batched_every=10)
    keys = set()
    for _, value in s.pairs:
        rec = decode_pair(value)
        assert rec.candidate is not None and rec.production.output is not None
        keys.update(label_keys(rec.id, len(rec.production.output)))
    assert {lab.id for lab in s.labels} == keys
    assert decode_pair(pair("m", T0, [1], None)).candidate is None


def random_paired_metric(
    rng: np.random.Generator, alpha: float, *, n_min: int, effect_sd: float, mae_sd: float
) -> tuple[str, PairedMetric, int, float]:
    """A paired accuracy, error rate or MAE of ``n_min`` to 50,000 observations, the
    candidate's effect drawn around zero (``effect_sd`` for rates, ``mae_sd`` for MAE), and a
    threshold of 0 or ±0.01: (name, metric, n, threshold)."""
    name = str(rng.choice(["accuracy", "error_rate", "mae"]))
    m = PairedMetric.create(name, alpha)
    n = int(rng.integers(n_min, 50_000))
    if name == "mae":
        m.update(np.zeros(n), -rng.normal(rng.normal(0.0, mae_sd), 1.0, n))
    else:
        p = rng.uniform(0.01, 0.95)
        c = min(max(p + rng.normal(0.0, effect_sd), 0.0), 1.0)
        m.update((rng.random(n) < p).astype(float), (rng.random(n) < c).astype(float))
    threshold = float(rng.choice([0.0, -0.01, 0.01]))
    return name, m, n, threshold
