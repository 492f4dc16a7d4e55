"""openai routes over a real Kafka broker: pair records carrying ``llm`` on the pairs topic,
``shadowroute compare`` in its own process, and the figures it publishes equal to the ones
computed from the same records in one batch, read back through the scores topic."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from shadowroute.comparator.engine import Engine
from shadowroute.comparator.reader import Reader, Verdicts
from shadowroute.comparator.store import Store
from shadowroute.core.config import parse_config
from shadowroute.core.records import Side, encode_pair
from shadowroute.core.stats.policy import COST, TTFT
from shadowroute.stream.kafka import create_topics
from shadowroute.stream.murmur2 import partition_for
from test_comparator_gen import cand_state
from test_comparator_kafka import _follow, _produce, _spawn, _stop, _wait_done

pytestmark = pytest.mark.kafka
PARTS = 3
T0 = 1_764_100_000_000
PRICE = {"input_per_million": 1.0, "output_per_million": 4.0}


def _raw(bootstrap: str, prefix: str, state: Path) -> dict[str, Any]:
    return {
        "admin": {"host": "127.0.0.1", "port": 0},
        "transport": {
            "kind": "kafka",
            "bootstrap": bootstrap,
            "topic_prefix": prefix,
            "topics": {"partitions": PARTS},
        },
        "comparator": {"state_path": str(state), "windows": ["hour"]},
        "routes": [
            {
                "name": "chat",
                "protocol": "openai",
                "task": "text",
                "production": {"name": "big", "url": "http://127.0.0.1:9001", "price": PRICE},
                "candidates": [{"name": "small", "url": "http://127.0.0.1:9002", "price": PRICE}],
                "policy": {
                    "min_pairs": 50,
                    "primary_metric": "agreement",
                    "guardrails": {"ttft_p99_ratio": 1.5, "cost_ratio": 1.2},
                },
            }
        ],
    }


def _llm(ttft: float, tokens_out: int) -> dict[str, Any]:
    return {"ttft_ms": ttft, "itl_ms": 12.5, "tokens_in": 30, "tokens_out": tokens_out,
            "tokens_counted": False, "streamed": True}  # fmt: skip


def _pairs(n: int) -> list[tuple[str, bytes, bytes]]:
    """The candidate answers faster (half the TTFT) and with twice the tokens."""
    out = []
    for i in range(n):
        rid = f"q{i}"
        prod = Side("big", None, 200, 900.0, ["a"], None, llm=_llm(200.0 + i % 13, 50))
        cand = Side("small", None, 200, 500.0, ["a"], None, llm=_llm(100.0 + i % 11, 100))
        value = encode_pair(request_id=rid, route="chat", ts_ms=T0 + i, production=prod,
                            candidate=cand, input=None)  # fmt: skip
        out.append(("pairs", rid.encode(), value))
    return out


async def test_llm_figures_over_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = "l" + uuid.uuid4().hex[:10]
    raw = _raw(kafka_bootstrap, prefix, tmp_path / "a.sqlite")
    config = parse_config(raw, environ={})
    await create_topics(config.transport)
    cfg_path = tmp_path / "a.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    items = _pairs(120)
    by_part: dict[int, list[tuple[bytes, bytes]]] = {}
    for _, key, value in items:
        p = partition_for(key, PARTS)
        by_part.setdefault(p, []).append((key, value))
    ends = {p: (len(v), 0) for p, v in by_part.items()}
    proc = _spawn(cfg_path)
    try:
        await _produce(kafka_bootstrap, prefix, items)
        await _wait_done([tmp_path / "a.sqlite"], ends)
    finally:
        _stop(proc)
    # the comparator's state equals the one computed from the records in one batch
    want = Engine(config, Store(tmp_path / "want.sqlite"))
    for p, recs in by_part.items():
        want.process(p, recs, [])
    got = Engine(config, Store(tmp_path / "a.sqlite"))
    for p in by_part:
        g, w = cand_state(got, "chat", "small", p), cand_state(want, "chat", "small", p)
        assert g.llm_scores() == w.llm_scores()
        assert g.to_dict()["ttft_cand"] == w.to_dict()["ttft_cand"]
    # what a reader of the scores topic sees (the API of a comparator fleet)
    view = await _follow(config, tmp_path, want_messages=len(by_part))
    history = Store(tmp_path / "reader.sqlite")
    reader = Reader(config, view, Verdicts(config, view, history), history)
    scores = reader.scores("chat", "small")
    decision = reader.decision("chat", "small")
    history.close()
    llm = orjson.loads(orjson.dumps(scores))["llm"]
    assert llm["production"]["answers"] == llm["candidate"]["answers"] == 120
    assert llm["cost"]["pairs"] == 120
    assert llm["cost"]["ratio"] == pytest.approx((30 + 400) / (30 + 200))
    assert llm["ttft_ms"]["ratio"]["p50"] < 0.6
    assert decision["metrics"][TTFT]["status"] == "pass"
    assert decision["metrics"][COST]["status"] == "fail"
    assert decision["verdict"] == "reject"
    assert any(r.startswith(f"shown worse: {COST}") for r in decision["reasons"])
