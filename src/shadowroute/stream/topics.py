"""Topic administration: create the four topics, check pairs and labels are co-partitioned,
describe them for an operator. Each call opens its own admin client and closes it.

``<prefix>.pairs`` and ``<prefix>.labels`` must have the same partition count: a label and its
pair are joined by request id, which only works when both land in the same partition number.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from shadowroute.core.config import KafkaSecurity, Transport
from shadowroute.stream.kafka_client import security_kwargs

TOPIC_KINDS = ("pairs", "labels", "scores", "deadletter", "events", "assessments")


def topic_name(prefix: str, kind: str) -> str:
    """``<prefix>.<kind>`` for kind in pairs, labels, scores, deadletter, events,
    assessments."""
    if kind not in TOPIC_KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{prefix}.{kind}"


class CopartitionError(RuntimeError):
    """Pairs and labels topics do not have the same number of partitions."""


def _admin(bootstrap: str, security: KafkaSecurity) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="shadowroute-admin",
        request_timeout_ms=15_000,
        **security_kwargs(security),
    )


async def topic_partitions(
    bootstrap: str, security: KafkaSecurity, topics: list[str], settle_s: float = 3.0
) -> dict[str, int]:
    """Partition count per existing topic (missing ones left out). Topics whose metadata is
    not yet available (just created) are asked about again for up to ``settle_s``."""
    admin = _admin(bootstrap, security)
    await admin.start()
    counts: dict[str, int] = {}
    try:
        deadline = time.monotonic() + settle_s
        while True:
            described = await admin.describe_topics(topics)
            counts = {
                t["topic"]: len(t["partitions"])
                for t in described
                if t["error_code"] == 0 and t["partitions"]
            }
            if len(counts) == len(topics) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return counts


async def check_copartitioned(bootstrap: str, security: KafkaSecurity, prefix: str) -> int:
    """Raise ``CopartitionError`` unless ``<prefix>.pairs`` and ``<prefix>.labels`` exist
    with the same partition count; return that count."""
    pairs, labels = topic_name(prefix, "pairs"), topic_name(prefix, "labels")
    counts = await topic_partitions(bootstrap, security, [pairs, labels])
    missing = [t for t in (pairs, labels) if t not in counts]
    if missing:
        raise CopartitionError(f"topic(s) missing: {', '.join(missing)}")
    if counts[pairs] != counts[labels]:
        raise CopartitionError(
            f"{pairs} has {counts[pairs]} partitions but {labels} has {counts[labels]}: "
            "pairs and labels must have the same partition count to be joined by request id"
        )
    return counts[pairs]


class TopicSettingsError(ValueError):
    """The topics asked for cannot work on this cluster (e.g. more replicas than brokers)."""


async def create_topics(transport: Transport) -> list[str]:
    """Create ``<prefix>.pairs``, ``.labels``, ``.scores`` (compacted), ``.deadletter``,
    ``.events`` (docs/events.md) and ``.assessments`` (the judge's, docs/llm.md; as many
    partitions as the pairs: an assessment lands in its pair's partition)
    with the configured partitions, replication and ``min.insync.replicas``; topics that
    already exist are left as they are. Returns the names created now. Raises
    ``TopicSettingsError`` when the replication exceeds the cluster's brokers."""
    if not transport.bootstrap:
        raise ValueError("create_topics needs transport.bootstrap")
    tc = transport.topics
    retention = str(int(tc.retention_hours * 3_600_000))
    isr = {"min.insync.replicas": str(tc.min_isr)}
    configs = {
        "pairs": {"retention.ms": retention, **isr},
        "labels": {"retention.ms": retention, **isr},
        "scores": {"cleanup.policy": "compact", **isr},
        "deadletter": {"retention.ms": retention, **isr},
        "events": {"retention.ms": retention, **isr},
        "assessments": {"retention.ms": retention, **isr},
    }
    wanted = {topic_name(transport.topic_prefix, kind): cfg for kind, cfg in configs.items()}
    admin = _admin(transport.bootstrap, transport.security)
    await admin.start()
    try:
        brokers = len((await _retrying(admin.describe_cluster))["brokers"])
        if tc.replication > brokers:
            raise TopicSettingsError(
                f"transport.topics.replication is {tc.replication} but the cluster has "
                f"{brokers} broker(s): lower it, or add brokers"
            )
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, tc.partitions, tc.replication, topic_configs=cfg)
            for name, cfg in wanted.items()
            if name not in existing
        ]
        if not new:
            return []
        response = await admin.create_topics(new)
    finally:
        await admin.close()
    created: list[str] = []
    problems: list[str] = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code == 0:
            created.append(name)
        elif code != 36:  # TOPIC_ALREADY_EXISTS: created meanwhile by someone else
            message = entry[2] if len(entry) > 2 else ""
            problems.append(f"{name}: error {code} {message or ''}".strip())
    if problems:
        raise RuntimeError("could not create topics: " + "; ".join(problems))
    return created


# The settings `topics describe` shows for each topic.
DESCRIBED_CONFIGS = ("min.insync.replicas", "retention.ms", "cleanup.policy")


async def _retrying(call: Callable[[], Any], attempts: int = 10, pause_s: float = 0.5) -> Any:
    """An admin call, again while a node it picked is down (the client's metadata still
    lists a dead broker until the controller fences it)."""
    for attempt in range(attempts):
        try:
            return await call()
        except KafkaError as exc:
            if attempt == attempts - 1 or not getattr(exc, "retriable", False):
                raise
            await asyncio.sleep(pause_s)
    raise AssertionError("unreachable")


async def describe_topics(transport: Transport) -> dict[str, Any]:
    """The cluster's brokers and controller, and for each of the four topics its partitions
    (leader, replicas, in-sync replicas, offline replicas) and key settings; a topic that does
    not exist is ``{"exists": False}``."""
    if not transport.bootstrap:
        raise ValueError("describe_topics needs transport.bootstrap")
    names = [topic_name(transport.topic_prefix, kind) for kind in TOPIC_KINDS]
    admin = _admin(transport.bootstrap, transport.security)
    await admin.start()
    try:
        cluster = await _retrying(admin.describe_cluster)
        described = await _retrying(lambda: admin.describe_topics(names))
        present = [t["topic"] for t in described if t["error_code"] == 0 and t["partitions"]]
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs=dict.fromkeys(DESCRIBED_CONFIGS))
            for name in present
        ]
        config_responses = (
            await _retrying(lambda: admin.describe_configs(resources)) if resources else []
        )
    finally:
        await admin.close()
    settings: dict[str, dict[str, str]] = {}
    for response in config_responses:
        for res in response.to_object()["resources"]:
            settings[res["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in res["config_entries"]
            }
    topics: dict[str, Any] = {name: {"exists": False} for name in names}
    for t in described:
        if t["topic"] not in present:
            continue
        parts = sorted(t["partitions"], key=lambda p: p["partition"])
        topics[t["topic"]] = {
            "exists": True,
            "partitions": [
                {
                    "partition": p["partition"],
                    "leader": p["leader"],
                    "replicas": list(p["replicas"]),
                    "isr": list(p["isr"]),
                    "offline": list(p.get("offline_replicas", [])),
                }
                for p in parts
            ],
            "configs": settings.get(t["topic"], {}),
        }
    return {
        "cluster_id": cluster.get("cluster_id"),
        "controller": cluster.get("controller_id"),
        "brokers": sorted(b["node_id"] for b in cluster["brokers"]),
        "topics": topics,
    }


def describe_text(doc: dict[str, Any]) -> str:
    """``describe_topics`` for a terminal: one line per partition, problems marked."""
    lines = [
        f"cluster {doc['cluster_id']}: brokers {doc['brokers']}, controller {doc['controller']}"
    ]
    for name, t in doc["topics"].items():
        if not t["exists"]:
            lines.append(f"{name}: MISSING (run `shadowroute topics create`)")
            continue
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(t["configs"].items()))
        lines.append(f"{name}: {len(t['partitions'])} partitions; {cfg}")
        min_isr = int(t["configs"].get("min.insync.replicas", "1"))
        for p in t["partitions"]:
            flags = []
            if p["leader"] is None or p["leader"] < 0:
                flags.append("NO LEADER")
            if len(p["isr"]) < len(p["replicas"]):
                flags.append("UNDER-REPLICATED")
            if len(p["isr"]) < min_isr:
                flags.append("BELOW MIN ISR: acks=all writes refused")
            lines.append(
                f"  {p['partition']}: leader {p['leader']}, replicas {p['replicas']}, "
                f"isr {p['isr']}" + (f"  [{'; '.join(flags)}]" if flags else "")
            )
    return "\n".join(lines)
