"""The model registry: verdict.changed events written as model version tags on a real MLflow
tracking server (the harness's `mlflow server`), the alias moved only when configured, bad
events and a registry that refuses or is down counted and never raised, lineage read from the
registry."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from documented import assert_documented
from mlflow_harness import Registered, alias_version, model_version, register_model
from shadowroute.core.config import Config, parse_config
from shadowroute.registry.collector import RegistryCollector
from shadowroute.registry.lineage import RegistryLineage
from shadowroute.registry.mlflow import MAX_RESPONSE_BYTES, MlflowClient, RegistryError
from shadowroute.registry.verdicts import (
    TAG_KEYS,
    VERDICT_CHANGED,
    EventError,
    VerdictWriter,
    evidence_url,
    interval_text,
    parse_verdict_event,
    registry_writer,
    verdict_tags,
)
from upstreams import ModelServer, Reply, Seen

DECISION: dict[str, Any] = {
    "route": "fraud",
    "candidate": "v2",
    "verdict": "promote",
    "reasons": ["accuracy: interval [0.012, 0.05] clears 0"],
    "metrics": {
        "error_rate": {"estimate": 0.0, "lower": -0.01, "upper": 0.01, "n": 900},
        "accuracy": {
            "estimate": 0.0312345,
            "lower": 0.0121,
            "upper": 0.0504,
            "n": 1200,
            "threshold": 0.0,
            "status": "pass",
        },
    },
    "pairs": 1500,
    "labelled": 1200,
    "as_of": 1796440000.0,
    "revision": "sha256:abc",
}


def event(
    verdict: str = "promote",
    previous: str | None = "hold",
    *,
    when: str = "2026-12-05T04:00:00Z",
    candidate: str = "v2",
    revision: str | None = "sha256:abc",
    event_id: str | None = None,
) -> dict[str, Any]:
    decision = copy.deepcopy(DECISION) | {"verdict": verdict, "candidate": candidate}
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "/shadowroute/test",
        "type": VERDICT_CHANGED,
        "time": when,
        "subject": f"fraud/{candidate}",
        "datacontenttype": "application/json",
        "data": {
            "route": "fraud",
            "candidate": candidate,
            "revision": revision,
            "previous": previous,
            "verdict": verdict,
            "decision": decision,
        },
    }


def config(
    tracking_uri: str,
    model: str,
    *,
    promote_alias: str | None = None,
    production: bool = True,
    retries: int = 2,
    token: str | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    cand: dict[str, Any] = {
        "route": "fraud",
        "model": "v2",
        "registered_model": model,
        "alias": "challenger",
    }
    if promote_alias:
        cand["promote_alias"] = promote_alias
    models = [cand]
    if production:
        models.append(
            {"route": "fraud", "model": "prod", "registered_model": model, "alias": "champion"}
        )
    reg: dict[str, Any] = {
        "tracking_uri": tracking_uri,
        "public_base_url": "https://shadowroute.example.com/",
        "retries": retries,
        "backoff_s": 0.01,
        "timeout_s": 2,
        "models": models,
    }
    if token:
        reg["token"] = token
    return parse_config(
        {
            "routes": [
                {
                    "name": "fraud",
                    "jsonpath": "$.p",
                    "production": {"name": "prod", "url": "http://127.0.0.1:9"},
                    "candidates": [
                        {"name": "v2", "url": "http://127.0.0.1:9"},
                        {"name": "v3", "url": "http://127.0.0.1:9"},
                    ],
                }
            ],
            "registry": reg,
        },
        environ=environ or {},
    )


# --- the pure parts ------------------------------------------------------------------------


def test_parse_takes_the_contract_and_ignores_other_types() -> None:
    ev = event()
    change = parse_verdict_event(ev)
    assert change is not None
    assert (change.route, change.candidate, change.verdict) == ("fraud", "v2", "promote")
    assert change.previous == "hold" and change.revision == "sha256:abc"
    assert change.decision["metrics"]["accuracy"]["n"] == 1200
    assert parse_verdict_event(ev | {"type": "io.shadowroute.drift.exceeded"}) is None
    assert parse_verdict_event(event(previous=None, revision=None)) is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("type"), "type must be a string"),
        (lambda e: e.update(specversion="0.3"), "specversion"),
        (lambda e: e.pop("id"), "event.id"),
        (lambda e: e.update(time="yesterday"), "RFC 3339"),
        (lambda e: e.update(time="2026-12-05T04:00:00"), "time zone"),
        (lambda e: e.update(data=[1]), "data must be a JSON object"),
        (lambda e: e["data"].update(route=""), "data.route"),
        (lambda e: e["data"].pop("candidate"), "data.candidate"),
        (lambda e: e["data"].update(verdict="ship"), "data.verdict"),
        (lambda e: e["data"].update(previous="maybe"), "data.previous"),
        (lambda e: e["data"].update(revision=7), "data.revision"),
        (lambda e: e["data"].update(decision="promote"), "data.decision"),
    ],
)
def test_parse_refuses_malformed_events_clearly(change: Any, message: str) -> None:
    ev = event()
    change(ev)
    with pytest.raises(EventError, match=message):
        parse_verdict_event(ev)


def test_tags_carry_verdict_interval_evidence_revision_and_time() -> None:
    change = parse_verdict_event(event())
    assert change is not None
    tags = verdict_tags(change, "https://sr.example.com/", "accuracy")
    assert tags == {
        "shadowroute.verdict": "promote",
        "shadowroute.interval": "accuracy 0.03123 [0.0121, 0.0504] n=1200",
        "shadowroute.evidence": "https://sr.example.com/v1/routes/fraud/candidates/v2/decision"
        "?revision=sha256%3Aabc",
        "shadowroute.revision": "sha256:abc",
        "shadowroute.time": "2026-12-05T04:00:00Z",
    }
    # the primary metric unknown to the decision: its first metric; none at all: "none"
    assert interval_text(DECISION, "mae").startswith("error_rate 0 [-0.01, 0.01]")
    assert interval_text({"metrics": {}}, "accuracy") == "none"
    nulls = {"metrics": {"accuracy": {"estimate": None, "lower": None, "upper": None, "n": 0}}}
    assert interval_text(nulls, "accuracy") == "accuracy null [null, null] n=0"
    assert evidence_url("http://h", "r", "c", None) == "http://h/v1/routes/r/candidates/c/decision"
    long = parse_verdict_event(event(revision="r" * 6000))
    assert long is not None
    assert all(len(v.encode()) <= 5000 for v in verdict_tags(long, "http://h", None).values())


# --- against the real MLflow tracking server ------------------------------------------------


@pytest.fixture
def model(mlflow_url: str) -> Registered:
    """fraud-xxxx: version 1 @champion (production), version 2 @challenger (candidate v2)."""
    return register_model(mlflow_url, 2, {"champion": 0, "challenger": 1})


@pytest.fixture
async def writer_of() -> AsyncIterator[Any]:
    clients: list[MlflowClient] = []

    def make(cfg: Config) -> VerdictWriter:
        reg = cfg.registry
        assert reg is not None
        client = MlflowClient(reg.tracking_uri, reg.token_value(), 2.0, reg.retries, 0.01)
        clients.append(client)
        return VerdictWriter(cfg, client)

    yield make
    for c in clients:
        await c.aclose()


@pytest.mark.mlflow
async def test_verdict_change_sets_tags_and_no_alias_without_promote_alias(
    mlflow_url: str, model: Registered, writer_of: Any
) -> None:
    writer = writer_of(config(mlflow_url, model.name))
    await writer.on_event(event("hold", None, when="2026-12-05T04:00:00Z"))
    mv = model_version(mlflow_url, model.name, model.versions[1])
    assert mv["tags"]["shadowroute.verdict"] == "hold"
    assert mv["tags"]["shadowroute.interval"] == "accuracy 0.03123 [0.0121, 0.0504] n=1200"
    assert mv["tags"]["shadowroute.evidence"] == (
        "https://shadowroute.example.com/v1/routes/fraud/candidates/v2/decision"
        "?revision=sha256%3Aabc"
    )
    assert mv["tags"]["shadowroute.revision"] == "sha256:abc"
    # production's version (1) is untouched
    assert model_version(mlflow_url, model.name, model.versions[0])["tags"] == {}
    # promote without promote_alias: the tag changes, no alias moves
    await writer.on_event(event("promote", "hold", when="2026-12-05T05:00:00Z"))
    mv = model_version(mlflow_url, model.name, model.versions[1])
    assert mv["tags"]["shadowroute.verdict"] == "promote"
    assert mv["tags"]["shadowroute.time"] == "2026-12-05T05:00:00Z"
    assert alias_version(mlflow_url, model.name, "champion") == model.versions[0]
    assert writer.stats.events["applied"] == 2 and writer.stats.alias_moves == 0


@pytest.mark.mlflow
async def test_promote_moves_the_configured_alias_once(
    mlflow_url: str, model: Registered, writer_of: Any
) -> None:
    writer = writer_of(config(mlflow_url, model.name, promote_alias="champion"))
    # hold: tags only, champion stays on version 1
    await writer.on_event(event("hold", None, when="2026-12-05T04:00:00Z"))
    assert alias_version(mlflow_url, model.name, "champion") == model.versions[0]
    promote = event("promote", "hold", when="2026-12-05T05:00:00Z")
    await writer.on_event(promote)
    assert alias_version(mlflow_url, model.name, "champion") == model.versions[1]
    assert alias_version(mlflow_url, model.name, "challenger") == model.versions[1]
    assert writer.stats.alias_moves == 1
    tags = model_version(mlflow_url, model.name, model.versions[1])["tags"]
    # the same event again (an at-least-once delivery): same tags, no second move, no writes
    calls = writer.requests.calls["ok"]
    await writer.on_event(copy.deepcopy(promote))
    assert model_version(mlflow_url, model.name, model.versions[1])["tags"] == tags
    assert writer.stats.alias_moves == 1 and writer.stats.events["duplicate"] == 1
    assert writer.requests.calls["ok"] == calls + 1  # the version read, nothing written
    # the same verdict under a new id (a restarted sender): tags equal, the alias already there
    await writer.on_event(event("promote", "hold", when="2026-12-05T05:00:00Z"))
    assert writer.stats.alias_moves == 1
    assert alias_version(mlflow_url, model.name, "champion") == model.versions[1]


@pytest.mark.mlflow
async def test_an_older_event_changes_nothing(
    mlflow_url: str, model: Registered, writer_of: Any
) -> None:
    writer = writer_of(config(mlflow_url, model.name, promote_alias="champion"))
    await writer.on_event(event("reject", "hold", when="2026-12-05T06:00:00Z"))
    await writer.on_event(event("promote", "hold", when="2026-12-05T05:00:00Z"))
    tags = model_version(mlflow_url, model.name, model.versions[1])["tags"]
    assert tags["shadowroute.verdict"] == "reject"
    assert alias_version(mlflow_url, model.name, "champion") == model.versions[0]
    assert writer.stats.events["stale"] == 1 and writer.stats.alias_moves == 0


@pytest.mark.mlflow
async def test_bad_events_and_unknown_models_are_logged_and_counted(
    mlflow_url: str, model: Registered, writer_of: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "shadowroute.registry")
    writer = writer_of(config(mlflow_url, model.name))
    await writer.on_event({"type": "io.shadowroute.labels.stale", "data": {}})
    await writer.on_event(event() | {"time": "soon"})
    await writer.on_event([1, 2])  # type: ignore[arg-type]
    await writer.on_event(event(candidate="v3"))  # no binding
    assert writer.stats.events["ignored"] == 1
    assert writer.stats.events["invalid"] == 2
    assert writer.stats.events["unbound"] == 1
    assert "not an RFC 3339 time" in caplog.text
    assert "fraud/v3 has no registry binding" in caplog.text
    # a registered model the registry does not have: refused (404), not retried
    unknown = writer_of(config(mlflow_url, "no-such-model"))
    await unknown.on_event(event())
    assert unknown.stats.events["failed"] == 1
    assert unknown.requests.calls["refused"] == 1 and unknown.requests.retries == 0
    assert "RESOURCE_DOES_NOT_EXIST" in caplog.text or "no-such-model" in caplog.text
    # an alias the model does not have
    register_model(mlflow_url, 1)  # (another model, no aliases)
    bare = register_model(mlflow_url, 1)
    no_alias = writer_of(config(mlflow_url, bare.name))
    await no_alias.on_event(event())
    assert no_alias.stats.events["failed"] == 1
    assert "challenger" in caplog.text


@pytest.mark.mlflow
async def test_token_is_sent_as_bearer(mlflow_url: str, model: Registered, writer_of: Any) -> None:
    """A gate in front of the real server that lets only the right bearer token through."""

    async def gate(seen: Seen) -> Reply:
        if seen.headers.get(b"authorization") != b"Bearer s3cret":
            return Reply(401, b'{"error_code": "UNAUTHENTICATED", "message": "no token"}')
        async with httpx.AsyncClient(base_url=mlflow_url) as upstream:
            r = await upstream.request(
                seen.method.decode(),
                seen.url.decode(),
                content=seen.body,
                headers={"content-type": "application/json"},
            )
        return Reply(r.status_code, r.content, [(b"content-type", b"application/json")])

    server = await ModelServer(gate).start()
    try:
        good = writer_of(config(server.url, model.name, token="env:TOK", environ={"TOK": "s3cret"}))
        await good.on_event(event("hold", None))
        assert good.stats.events["applied"] == 1
        tags = model_version(mlflow_url, model.name, model.versions[1])["tags"]
        assert tags["shadowroute.verdict"] == "hold"
        bad = writer_of(config(server.url, model.name, token="env:TOK", environ={"TOK": "x"}))
        await bad.on_event(event("hold", None))
        assert bad.stats.events["failed"] == 1 and bad.requests.calls["refused"] == 1
    finally:
        await server.stop()


# --- a registry that is down, flaky or too talkative -----------------------------------------


async def test_registry_down_bounded_retries_counted(writer_of: Any) -> None:
    from proxyutil import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    writer = writer_of(config(url, "fraud", retries=2))
    started = time.monotonic()
    await writer.on_event(event())
    assert time.monotonic() - started < 5
    assert writer.stats.events["failed"] == 1
    assert writer.requests.retries == 2 and writer.requests.calls["failed"] == 1


async def test_5xx_is_retried_then_succeeds_4xx_is_not() -> None:
    answers = [503, 502]

    def flaky(seen: Seen) -> Reply:
        if answers:
            return Reply(answers.pop(0), b"<html>busy</html>")
        return Reply(200, b'{"model_version": {"name": "m", "version": "3", "run_id": "r1"}}')

    server = await ModelServer(flaky).start()
    try:
        async with MlflowClient(server.url, retries=3, backoff_s=0.01) as client:
            mv = await client.get_model_version("m", "3")
            assert (mv.version, mv.run_id) == ("3", "r1")
            assert client.stats.retries == 2 and client.stats.calls["ok"] == 1
        answers[:] = [400]
        async with MlflowClient(server.url, retries=3, backoff_s=0.01) as client:
            with pytest.raises(RegistryError, match="400") as err:
                await client.get_model_version("m", "3")
            assert err.value.status == 400 and client.stats.retries == 0
        answers[:] = [503] * 10
        async with MlflowClient(server.url, retries=1, backoff_s=0.01) as client:
            with pytest.raises(RegistryError, match="after 2 attempts"):
                await client.get_model_version("m", "3")
            assert client.stats.calls["failed"] == 1
    finally:
        await server.stop()


async def test_an_oversize_or_non_json_answer_is_an_error() -> None:
    big = b'{"x": "' + b"a" * MAX_RESPONSE_BYTES + b'"}'
    replies = [
        Reply(200, big),
        Reply(200, b"", chunks=[b"a" * (MAX_RESPONSE_BYTES // 2)] * 3),
        Reply(200, b"<html>proxy login</html>"),
        Reply(200, b"[1]"),
        Reply(200, b'{"model_version": {"name": "m"}}'),
    ]
    server = await ModelServer(lambda seen: replies.pop(0)).start()
    try:
        async with MlflowClient(server.url, retries=0) as client:
            for message in ("over 1048576 bytes", "over 1048576 bytes", "not JSON", "not a JSON"):
                with pytest.raises(RegistryError, match=message):
                    await client.get_model_version("m", "1")
            with pytest.raises(RegistryError, match="no model_version"):
                await client.get_model_version("m", "1")
            assert client.stats.calls["oversize"] == 2
    finally:
        await server.stop()


# --- the writer's lifetime and metrics -----------------------------------------------------


@pytest.mark.mlflow
async def test_registry_writer_yields_none_without_a_section_and_exports_counters(
    mlflow_url: str, model: Registered
) -> None:
    bare = parse_config(
        {
            "routes": [
                {
                    "name": "r",
                    "jsonpath": "$.p",
                    "production": {"name": "p", "url": "http://127.0.0.1:9"},
                }
            ]
        },
        environ={},
    )
    async with registry_writer(bare) as none:
        assert none is None
    metrics = CollectorRegistry()
    async with registry_writer(config(mlflow_url, model.name), metrics) as writer:
        assert writer is not None
        await writer.on_event(event("hold", None))
        text = generate_latest(metrics).decode()
        for family in RegistryCollector.FAMILIES:
            assert family.exposed in text
        assert 'shadowroute_registry_events_total{outcome="applied"} 1.0' in text
    assert "shadowroute_registry_events_total" not in generate_latest(metrics).decode()


# --- lineage ------------------------------------------------------------------------------


@pytest.mark.mlflow
async def test_lineage_reads_the_live_version_from_the_alias(
    mlflow_url: str, model: Registered
) -> None:
    cfg = config(mlflow_url, model.name)
    assert cfg.registry is not None
    lineage = RegistryLineage(cfg.registry)
    first = lineage.lookup("fraud", "prod")
    assert first is not None and first["version"] is None and first["error"] == "not read yet"
    assert lineage.lookup("fraud", "v3") is None
    async with MlflowClient(mlflow_url) as client:
        await lineage.refresh(client)
        prod, cand = lineage.lookup("fraud", "prod"), lineage.lookup("fraud", "v2")
        assert prod is not None and cand is not None
        assert (prod["version"], prod["run_id"]) == (model.versions[0], model.runs[0])
        assert (cand["version"], cand["run_id"]) == (model.versions[1], model.runs[1])
        assert prod["alias"] == "champion" and prod["aliases"] == ["champion"]
        assert prod["url"].endswith(f"/#/models/{model.name}/versions/{model.versions[0]}")
        assert prod["error"] is None and prod["read_at"] is not None
        # the alias moves: the next read shows the new live version
        await client.set_alias(model.name, "champion", model.versions[1])
        await lineage.refresh(client)
        prod = lineage.lookup("fraud", "prod")
        assert prod is not None and prod["version"] == model.versions[1]
        assert prod["run_id"] == model.runs[1]
    # the registry gone: the last good read stays, with the error
    from proxyutil import free_port

    async with MlflowClient(f"http://127.0.0.1:{free_port()}", retries=0) as down:
        await lineage.refresh(down)
    prod = lineage.lookup("fraud", "prod")
    assert prod is not None and prod["version"] == model.versions[1] and prod["error"]
    assert lineage.reads["failed"] == 2 and lineage.reads["ok"] == 4


@pytest.mark.mlflow
async def test_lineage_api_shows_the_registry_version_and_run(
    mlflow_url: str, model: Registered, tmp_path: Any
) -> None:
    from shadowroute.runtime import embedded_stack

    raw = {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "routes": [
            {
                "name": "fraud",
                "jsonpath": "$.p",
                "production": {"name": "prod", "url": "http://127.0.0.1:9", "version": "1"},
                "candidates": [{"name": "v2", "url": "http://127.0.0.1:9"}],
            }
        ],
        "registry": {
            "tracking_uri": mlflow_url,
            "public_base_url": "http://127.0.0.1",
            "models": [
                {
                    "route": "fraud",
                    "model": "prod",
                    "registered_model": model.name,
                    "alias": "champion",
                },
                {
                    "route": "fraud",
                    "model": "v2",
                    "registered_model": model.name,
                    "version": model.versions[1],
                },
            ],
        },
    }
    async with embedded_stack(parse_config(raw, environ={})) as stack:
        api = f"http://127.0.0.1:{stack.admin_port}"
        async with httpx.AsyncClient(base_url=api) as admin:
            for _ in range(100):  # read in the background after start
                doc = (await admin.get("/v1/models/prod/lineage")).json()
                if doc["registry"]["version"] is not None:
                    break
                await asyncio.sleep(0.05)
            reg = doc["registry"]
            assert (reg["version"], reg["run_id"]) == (model.versions[0], model.runs[0])
            assert reg["registered_model"] == model.name and reg["alias"] == "champion"
            cand = (await admin.get("/v1/models/v2/lineage")).json()["registry"]
            for _ in range(100):
                if cand["version"] is not None:
                    break
                await asyncio.sleep(0.05)
                cand = (await admin.get("/v1/models/v2/lineage")).json()["registry"]
            assert (cand["version"], cand["run_id"]) == (model.versions[1], model.runs[1])
            metrics = (await admin.get("/metrics")).text
            assert 'shadowroute_registry_lineage_reads_total{outcome="ok"}' in metrics
            body = orjson.loads((await admin.get("/openapi.json")).content)
            schema = body["components"]["schemas"]["RegistryVersion"]
            assert set(schema["required"]) <= set(reg)
            lineage = body["paths"]["/v1/models/{model}/lineage"]["get"]["responses"]["200"]
            ref = lineage["content"]["application/json"]["schema"]
            assert ref == {"$ref": "#/components/schemas/Lineage"}
            registry = body["components"]["schemas"]["Lineage"]["properties"]["registry"]
            assert {"$ref": "#/components/schemas/RegistryVersion"} in registry["anyOf"]
            for name in ("v2", "prod"):
                assert_documented((await admin.get(f"/v1/models/{name}/lineage")).json(), "Lineage")


async def test_a_registry_that_never_answers_times_out_within_the_bound() -> None:
    server = await ModelServer(lambda seen: Reply(hang=True)).start()
    try:
        async with MlflowClient(server.url, timeout_s=0.2, retries=1, backoff_s=0.01) as client:
            started = time.monotonic()
            with pytest.raises(RegistryError, match=r"ReadTimeout.*after 2 attempts"):
                await client.get_model_version("m", "1")
            assert time.monotonic() - started < 2
            assert client.stats.retries == 1 and client.stats.calls["failed"] == 1
    finally:
        await server.stop()


# --- end to end: a real decision, its event, the tag, the evidence link, lineage -------------


@pytest.mark.mlflow
async def test_a_real_decision_becomes_a_tag_whose_evidence_link_answers(
    mlflow_url: str, model: Registered, tmp_path: Any
) -> None:
    """The embedded stack with real model servers: a candidate that answers 404 to every
    mirror is rejected; the stack's own event bus hands that verdict change to the registry
    writer, which writes it on the candidate's version, once; the evidence link on it answers
    the same verdict; lineage shows the tag after its next read."""
    from proxyutil import free_port, settle
    from shadowroute.runtime import embedded_stack

    json_type = [(b"content-type", b"application/json")]

    def predict(seen: Seen) -> Reply:
        k = int(orjson.loads(seen.body)["instances"][0][0])
        return Reply(body=orjson.dumps({"predictions": [k % 2]}), headers=json_type)

    prod = await ModelServer(predict).start()
    missing = await ModelServer(lambda seen: Reply(404, b'{"error": "no"}', json_type)).start()
    admin_port = free_port()
    admin_url = f"http://127.0.0.1:{admin_port}"
    raw = {
        "listen": {"port": 0},
        "admin": {"port": admin_port},
        "comparator": {"state_path": str(tmp_path / "state.sqlite")},
        "mirror": {"breaker": {"failures": 10_000}},
        "events": {"interval_s": 0.1},
        "routes": [
            {
                "name": "fraud",
                "protocol": "kserve-v1",
                "production": {"name": "prod", "url": prod.url},
                "candidates": [{"name": "v2", "url": missing.url, "revision": "sha256:v2"}],
                "policy": {"min_pairs": 10, "min_labelled": 10},
            }
        ],
        "registry": {
            "tracking_uri": mlflow_url,
            "public_base_url": admin_url,
            "refresh_s": 1,
            "models": [
                {
                    "route": "fraud",
                    "model": "v2",
                    "registered_model": model.name,
                    "alias": "challenger",
                    "promote_alias": "champion",
                }
            ],
        },
    }
    cfg = parse_config(raw, environ={})
    try:
        async with embedded_stack(cfg) as stack:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.proxy_port}") as c:
                for k in range(30):
                    r = await c.post("/v1/models/m:predict", json={"instances": [[k]]})
                    assert r.status_code == 200
            await settle(stack.dataplane)
            async with httpx.AsyncClient(base_url=admin_url) as admin:
                for _ in range(200):
                    decision = (await admin.get("/v1/routes/fraud/candidates/v2/decision")).json()
                    if decision["verdict"] == "reject":
                        break
                    await asyncio.sleep(0.05)
                assert decision["verdict"] == "reject", decision["reasons"]
                for _ in range(200):  # the bus looks every 0.1 s, the writer follows
                    tags = model_version(mlflow_url, model.name, model.versions[1])["tags"]
                    if set(TAG_KEYS) <= set(tags):  # one set-tag call per tag
                        break
                    await asyncio.sleep(0.05)
                rid = decision["revision"]["id"]
                assert tags["shadowroute.verdict"] == "reject"
                assert tags["shadowroute.revision"] == rid
                assert tags["shadowroute.interval"].startswith("accuracy ")
                link = tags["shadowroute.evidence"]
                assert link == (
                    f"{admin_url}/v1/routes/fraud/candidates/v2/decision?revision={rid}"
                )
                linked = (await admin.get(link)).json()
                assert linked["verdict"] == "reject" and "asked_revision" not in linked
                assert linked["revision"]["candidate"]["revision"] == "sha256:v2"
                assert alias_version(mlflow_url, model.name, "champion") == model.versions[0]
                for _ in range(100):  # lineage re-reads every second
                    reg = (await admin.get("/v1/models/v2/lineage")).json()["registry"]
                    if reg["tags"].get("shadowroute.verdict") == "reject":
                        break
                    await asyncio.sleep(0.1)
                assert reg["tags"]["shadowroute.verdict"] == "reject"
                assert (reg["version"], reg["run_id"]) == (model.versions[1], model.runs[1])
                metrics = (await admin.get("/metrics")).text
                assert 'shadowroute_registry_events_total{outcome="applied"} 1.0' in metrics
                assert 'shadowroute_events_total{type="io.shadowroute.verdict.changed"} 1.0' in (
                    metrics
                )
    finally:
        await prod.stop()
        await missing.stop()
