"""The shipped alert rules and Grafana panels against the /metrics of running processes.

``test_deploy_helm.py`` checks their metric names against the names the code declares; this
checks them against what real processes expose: ``shadowroute serve`` (the default
``--workers 1``, embedded and with Kafka) and ``shadowroute compare``, after traffic, labels,
drift and a dead letter. Every metric an alert or a panel reads must have series there, and
every label it matches on or groups by must be one of that metric's labels (or one Prometheus
adds to each target) — so an alert that can never fire fails here.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from servehelp import Samples, route, running, send_requests, value

from shadowroute.core.config import Transport
from shadowroute.stream.kafka import create_topics
from upstreams import ModelServer

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
ALERTS = [ROOT / "deploy/prometheus/alerts.yaml", ROOT / "helm/shadowroute/files/alerts.yaml"]
DASHBOARD = ROOT / "deploy" / "grafana" / "shadowroute.json"

TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
"""Labels Prometheus (with the chart's ServiceMonitor) adds to every series of a target."""

_SELECTOR = re.compile(r"\b(shadowroute_[a-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*(shadowroute_[a-z0-9_]+)\s*,\s*(\w+)\s*\)")


def exposed(samples: Samples) -> dict[str, set[str]]:
    """Metric name (as a query names it: ``_total`` kept, a histogram by its base name and
    its ``_bucket``/``_count``/``_sum`` series) -> the label names of its series."""
    out: dict[str, set[str]] = {}
    for name, labels, _ in samples:
        out.setdefault(name, set()).update(labels)
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        if base != name:
            out.setdefault(base, set()).update(labels)
    return out


def problems(expr: str, metrics: dict[str, set[str]]) -> list[str]:
    """What in one PromQL expression can never match the exposed series."""
    found: list[str] = []
    used: set[str] = set()
    for name, matchers in _SELECTOR.findall(expr):
        used.add(name)
        if name not in metrics:
            found.append(f"{name}: no such series")
            continue
        for label in _MATCHER.findall(matchers):
            if label not in metrics[name] | TARGET_LABELS:
                found.append(f"{name}: no label {label!r} (has {sorted(metrics[name])})")
    available = set(TARGET_LABELS)
    for name in used:
        available |= metrics.get(name, set())
    for group in _GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",")):
            if label and label not in available:
                found.append(f"grouping by {label!r}: none of {sorted(used)} has it")
    return found


def test_problems_finds_what_cannot_match() -> None:
    metrics = {"shadowroute_a_total": {"route"}, "shadowroute_h_seconds": {"le", "route"}}
    assert problems("sum by (route) (rate(shadowroute_a_total[5m]))", metrics) == []
    assert problems("sum by (pod) (shadowroute_a_total)", metrics) == []
    assert problems('rate(shadowroute_h_seconds_bucket{route="x"}[1m])', metrics) == [
        "shadowroute_h_seconds_bucket: no such series"
    ]
    assert problems('max(shadowroute_a_total{cand="x"})', metrics) == [
        "shadowroute_a_total: no label 'cand' (has ['route'])"
    ]
    assert problems("max by (candidate) (shadowroute_a_total)", metrics) == [
        "grouping by 'candidate': none of ['shadowroute_a_total'] has it"
    ]
    assert problems("shadowroute_b == 1", metrics) == ["shadowroute_b: no such series"]


def shipped_expressions() -> dict[str, str]:
    """Where -> PromQL: every alert rule of both copies, every dashboard target and variable."""
    out: dict[str, str] = {}
    for path in ALERTS:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[f"{path.relative_to(ROOT)}: {rule['alert']}"] = rule["expr"]
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for i, target in enumerate(panel.get("targets", [])):
            out[f"dashboard: {panel['title']} [{i}]"] = target["expr"]
    for var in dash["templating"]["list"]:
        m = _LABEL_VALUES.search(var.get("definition") or "")
        if m:  # label_values(metric, label) -> a selector matching on the label
            out[f"dashboard variable {var['name']}"] = f'{m.group(1)}{{{m.group(2)}=~".+"}}'
    return out


async def _embedded(tmp_path: Path, model: ModelServer) -> Samples:
    """``serve`` (default layout, embedded) after requests, labels, a drift window against
    a reference and a dead letter (a label over the waiting bound)."""
    rnd = random.Random(7)
    ref = tmp_path / "reference.jsonl"
    ref.write_text("".join(json.dumps({"instances": [[rnd.random()]]}) + "\n" for _ in range(1000)))
    r = route(
        model.url,
        [{"name": "c", "url": model.url}],
        drift={"fields": ["$.instances[*][0]"], "reference_file": str(ref)},
    )
    r["production"]["lineage"] = {"trained_through": "2026-06-30"}
    cfg = {"labels": {"max_waiting_per_route": 1}, "routes": [r]}
    async with running(tmp_path, cfg, ["serve"]) as served:
        assert await send_requests(served.proxy, 20) == [200] * 20
        wide = json.dumps({"instances": [[rnd.random()] for _ in range(50)]}).encode()
        assert await send_requests(served.proxy, 12, body=wide) == [200] * 12
        now = int(time.time() * 1000)
        labels = [{"v": 1, "id": f"req-{i}", "label": 2.0, "ts": now} for i in range(20)]
        labels += [{"v": 1, "id": f"nobody-{i}", "label": 1.0, "ts": now} for i in range(2)]
        async with httpx.AsyncClient(base_url=served.api) as c:
            res = await c.post("/v1/labels", json=labels)
            assert res.status_code in (202, 429), res.text
        wanted = {
            "shadowroute_drift_psi",
            "shadowroute_deadletter_records_total",
            "shadowroute_requests_total",  # the worker's counters: shipped twice a second
            "shadowroute_mirror_requests_total",
        }
        return await served.until(lambda s: wanted <= {n for n, _, _ in s})


async def _kafka(tmp_path: Path, bootstrap: str, model: ModelServer) -> tuple[Samples, Samples]:
    """``serve`` with Kafka and ``compare``, after requests and labels."""
    prefix = "al" + uuid.uuid4().hex[:8]
    await create_topics(Transport(kind="kafka", bootstrap=bootstrap, topic_prefix=prefix))
    transport = {
        "kind": "kafka",
        "bootstrap": bootstrap,
        "topic_prefix": prefix,
        "linger_ms": 5,
        "spool": {"path": str(tmp_path / "spool")},
    }
    cfg = {"transport": transport, "routes": [route(model.url, [{"name": "c", "url": model.url}])]}
    (tmp_path / "serve").mkdir()
    (tmp_path / "compare").mkdir()
    async with (
        running(tmp_path / "serve", cfg, ["serve"], ready_timeout_s=60) as served,
        running(tmp_path / "compare", cfg, ["compare"], ready_timeout_s=60) as compare,
    ):
        assert await send_requests(served.proxy, 20) == [200] * 20
        now = int(time.time() * 1000)
        labels = [{"v": 1, "id": f"req-{i}", "label": 2.0, "ts": now} for i in range(20)]
        async with httpx.AsyncClient(base_url=compare.api, timeout=20) as c:
            res = await c.post("/v1/labels", json=labels)
            assert res.status_code == 202, res.text
        s1 = await served.until(
            lambda s: (
                value(s, "shadowroute_kafka_send_latency_seconds_count") > 0
                and value(s, "shadowroute_requests_total") == 20
            )
        )
        s2 = await compare.until(
            lambda s: (
                any(n == "shadowroute_kafka_consumer_lag" for n, _, _ in s)
                and any(n == "shadowroute_candidate_labelled_total" and v > 0 for n, _, v in s)
            ),
            timeout_s=60,
        )
    return s1, s2


async def test_alerts_and_panels_match_what_running_processes_expose(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    model = await ModelServer().start()
    try:
        (tmp_path / "embedded").mkdir()
        (tmp_path / "kafka").mkdir()
        embedded = await _embedded(tmp_path / "embedded", model)
        serve_kafka, compare = await _kafka(tmp_path / "kafka", kafka_bootstrap, model)
    finally:
        await model.stop()
    metrics: dict[str, set[str]] = {}
    for samples in (embedded, serve_kafka, compare):
        for name, labels in exposed(samples).items():
            metrics.setdefault(name, set()).update(labels)
    exprs = shipped_expressions()
    assert len(exprs) > 40
    bad = {where: p for where, expr in exprs.items() if (p := problems(expr, metrics))}
    assert not bad, "\n".join(f"{where}: {'; '.join(p)}" for where, p in sorted(bad.items()))
