"""Deploy gates without a server: the pure mapping (decision, asked revision, gate kind) →
(status, body), read the way each tool reads it, and the deploy/gates manifests.

The tools are emulated from their documented semantics (docs/deploy.md, "Deploy gates"); the
live tests in test_gates_live.py drive a running stack with the same emulations. No JSONPath
library is a dependency, so ``json_path`` implements the subset the manifests use: ``$`` then
``.name`` and ``[index]`` steps, optionally in Kubernetes' ``{…}`` braces (Argo).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowroute.comparator.gates import (
    FLAGGER_HOOKS,
    GATE_KINDS,
    MAX_REVISION_LEN,
    GateInputError,
    check_revision,
    flagger_request,
    gate,
)

ROOT = Path(__file__).resolve().parents[1]
GATES = ROOT / "deploy" / "gates"
KUBE_VERSION = "1.34.0"
IN_CLUSTER_API = "http://shadowroute-comparator.ml.svc:9090"
Doc = dict[str, Any]
ARG = re.compile(r"\{\{\s*args\.([\w-]+)\s*\}\}")

# --- a JSONPath subset and the tools' documented readings ------------------------------------

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


def json_path(doc: Any, path: str) -> Any:
    """The value at ``path`` (``$.a.b[0]``, or ``{$.a.b}`` as Argo writes it); KeyError when
    the path does not resolve."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1].strip()
    assert path.startswith("$"), path
    rest, value = path[1:], doc
    while rest:
        m = _STEP.match(rest)
        assert m is not None, f"unsupported JSONPath step in {path!r}"
        if m.group(1) is not None:
            if not isinstance(value, Mapping) or m.group(1) not in value:
                raise KeyError(path)
            value = value[m.group(1)]
        else:
            i = int(m.group(2))
            if not isinstance(value, list) or i >= len(value):
                raise KeyError(path)
            value = value[i]
        rest = rest[m.end() :]
    return value


_CONDITION = re.compile(r"""^result\s*==\s*(["'])(.*)\1$""")


def argo_condition(expr: str, result: Any) -> bool:
    """An Argo condition of the form the template uses: ``result == "x"``."""
    m = _CONDITION.match(expr.strip())
    assert m is not None, f"condition outside the emulated subset: {expr!r}"
    return bool(result == m.group(2))


def argo_measurement(metric: Doc, status: int, body: bytes) -> str:
    """One measurement of a ``web`` metric: a non-2xx answer or a body the jsonPath does not
    resolve is an Error; else failureCondition → Failed, successCondition → Successful,
    neither → Inconclusive."""
    if not 200 <= status < 300:
        return "Error"
    try:
        result = json_path(json.loads(body), metric["provider"]["web"]["jsonPath"])
    except (ValueError, KeyError):
        return "Error"
    if "failureCondition" in metric and argo_condition(metric["failureCondition"], result):
        return "Failed"
    if "successCondition" in metric and argo_condition(metric["successCondition"], result):
        return "Successful"
    return "Inconclusive"


def argo_run(metric: Doc, measure: Callable[[], str | None]) -> tuple[str, list[str]]:
    """The metric's phase after measuring until it completes (Argo Rollouts' assessment:
    failures over failureLimit → Failed; inconclusive over inconclusiveLimit → Inconclusive;
    consecutive errors over consecutiveErrorLimit → Error; consecutiveSuccessLimit reached →
    Successful; without ``count`` and ``interval`` one measurement; with ``interval`` and no
    ``count`` no end but those). ``measure`` returns None when it has no measurement yet: the
    run is then still ``Running``."""
    count = metric.get("count", None if "interval" in metric else 1)
    failure_limit = int(metric.get("failureLimit", 0))
    inconclusive_limit = int(metric.get("inconclusiveLimit", 0))
    error_limit = int(metric.get("consecutiveErrorLimit", 4))
    success_limit = int(metric.get("consecutiveSuccessLimit", 0))
    seen: list[str] = []
    failed = inconclusive = errors = successes = 0
    while True:
        m = measure()
        if m is None:
            return "Running", seen
        seen.append(m)
        failed += m == "Failed"
        inconclusive += m == "Inconclusive"
        errors = errors + 1 if m == "Error" else 0
        successes = successes + 1 if m == "Successful" else 0
        if failure_limit >= 0 and failed > failure_limit:
            return "Failed", seen
        if inconclusive > inconclusive_limit:
            return "Inconclusive", seen
        if errors > error_limit:
            return "Error", seen
        if success_limit > 0 and successes >= success_limit:
            return "Successful", seen
        if count is not None and len([x for x in seen if x != "Error"]) >= int(count):
            if success_limit > 0 and failure_limit >= 0:
                return "Inconclusive", seen
            return ("Failed" if success_limit > 0 else "Successful"), seen


def flagger_passes(status: int) -> bool:
    """Flagger: a webhook call succeeds only with 200, 201 or 202."""
    return 200 <= status <= 202


def spinnaker_status(stage: Doc, status: int, body: bytes) -> str:
    """A monitored webhook stage's reading of one poll: 5xx and 429 are retried (RUNNING),
    other non-2xx end it TERMINAL; else the value at statusJsonPath against the stage's
    success, canceled and terminal statuses (comma-separated), anything else RUNNING."""
    if status >= 500 or status == 429:
        return "RUNNING"
    if not 200 <= status < 300:
        return "TERMINAL"
    value = str(json_path(json.loads(body), stage["statusJsonPath"])).upper()

    def listed(key: str) -> bool:
        return value in {s.strip().upper() for s in stage.get(key, "").split(",") if s.strip()}

    if listed("successStatuses"):
        return "SUCCEEDED"
    if listed("canceledStatuses"):
        return "CANCELED"
    if listed("terminalStatuses"):
        return "TERMINAL"
    return "RUNNING"


# --- the manifests ----------------------------------------------------------------------------


def load_yaml(name: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all((GATES / name).read_text()) if d]


def argo_metric(api: str, route: str, cand: str, revision: str) -> Doc:
    """The ClusterAnalysisTemplate's metric with its args resolved as Argo does."""
    [tpl] = load_yaml("argo-clusteranalysistemplate.yaml")
    args = {a["name"]: a.get("value") for a in tpl["spec"]["args"]}
    args.update(api=api, route=route, candidate=cand, revision=revision)
    [metric] = copy.deepcopy(tpl["spec"]["metrics"])
    web = metric["provider"]["web"]
    web["url"] = ARG.sub(lambda m: str(args[m.group(1)]), web["url"])
    return dict(metric)


def flagger_webhooks(api: str) -> dict[str, Doc]:
    """The Canary's webhooks by type, URLs pointed at ``api``."""
    [canary] = [d for d in load_yaml("flagger-canary.yaml") if d["kind"] == "Canary"]
    out = {}
    for hook in canary["spec"]["analysis"]["webhooks"]:
        hook = copy.deepcopy(hook)
        hook["url"] = hook["url"].replace(IN_CLUSTER_API, api)
        out[hook["type"]] = hook
    return out


def flagger_payload(hook: Doc, checksum: str, revision: str | None) -> Doc:
    """What Flagger POSTs to a webhook; ``revision`` replaces the manifest's
    metadata.revision (the pipeline templates it per image), None drops it."""
    [canary] = [d for d in load_yaml("flagger-canary.yaml") if d["kind"] == "Canary"]
    meta = dict(hook.get("metadata") or {})
    meta.pop("revision", None)
    if revision is not None:
        meta["revision"] = revision
    return {
        "name": canary["metadata"]["name"],
        "namespace": canary["metadata"]["namespace"],
        "phase": "Progressing",
        "checksum": checksum,
        "metadata": meta,
    }


def spinnaker_stage(api: str, revision: str) -> Doc:
    stage: Doc = json.loads((GATES / "spinnaker-stage.json").read_text())
    stage["url"] = (
        stage["url"].replace(IN_CLUSTER_API, api).replace("${parameters['revision']}", revision)
    )
    return stage


# --- the pure mapping -------------------------------------------------------------------------


def decision(verdict: str, revision: str | None = "sha256:b", pairs: int = 500) -> Doc:
    rev = None
    if revision is not None:
        rev = {
            "id": "3f9a1c2b4d5e",
            "candidate": {"url": "http://c:8080", "version": "8", "revision": revision},
            "production": {"url": "http://p:8080", "version": "7", "revision": None},
        }
    return {
        "route": "fraud",
        "candidate": "fraud-v8",
        "verdict": verdict,
        "reasons": [f"the reason for {verdict}"],
        "metrics": {},
        "pairs": pairs,
        "labelled": pairs,
        "as_of": 1,
        "revision": rev,
    }


EXPECTED = {
    # kind: {verdict: (status, pass)} for evidence about the asked revision
    "argo": {"promote": (200, True), "hold": (200, False), "reject": (200, False)},
    "spinnaker": {"promote": (200, True), "hold": (200, False), "reject": (200, False)},
    "check": {"promote": (200, True), "hold": (412, False), "reject": (412, False)},
    "flagger-confirm-promotion": {
        "promote": (200, True), "hold": (412, False), "reject": (412, False)},
    "flagger-pre-rollout": {"promote": (200, True), "hold": (412, False), "reject": (412, False)},
    "flagger-rollout": {"promote": (200, True), "hold": (200, True), "reject": (412, False)},
    "flagger-rollback": {"promote": (412, False), "hold": (412, False), "reject": (200, True)},
}  # fmt: skip


@pytest.mark.parametrize("kind", GATE_KINDS)
@pytest.mark.parametrize("verdict", ["promote", "hold", "reject"])
def test_each_gate_answers_each_verdict_as_its_tool_reads_it(kind: str, verdict: str) -> None:
    status, body = gate(decision(verdict), "sha256:b", kind)
    assert (status, body["pass"]) == EXPECTED[kind][verdict]
    assert status in (200, 412)  # never a 5xx, never a 204
    assert body["verdict"] == verdict and body["revision_matches"] is True
    assert body["gate"] == kind and body["revision"] == "sha256:b"
    assert body["evidence_revision"] == "3f9a1c2b4d5e"
    assert body["decision"]["verdict"] == verdict
    assert body["reasons"][0].startswith(f"gate {kind}: verdict {verdict}")
    assert body["reasons"][1:] == [f"the reason for {verdict}"]
    outcome = {"promote": "pass", "hold": "hold", "reject": "fail"}[verdict]
    if kind == "flagger-rollback":
        outcome = "pass" if verdict == "reject" else "hold"
    elif kind == "flagger-rollout" and verdict == "hold":
        outcome = "pass"
    assert body["outcome"] == outcome


@pytest.mark.parametrize("kind", GATE_KINDS)
@pytest.mark.parametrize("verdict", ["promote", "hold", "reject"])
def test_evidence_about_another_revision_never_passes_a_decision_gate(
    kind: str, verdict: str
) -> None:
    """Asked about sha256:a while the evidence is about sha256:b: the verdict for sha256:a is
    hold whatever b's is; no gate promotes, and rollback does not roll back on b's reject."""
    status, body = gate(decision(verdict), "sha256:a", kind)
    assert body["verdict"] == "hold" and body["revision_matches"] is False
    assert body["decision"]["asked_revision"] == "sha256:a"
    assert "evidence is for revision 3f9a1c2b4d5e" in body["reasons"][1]
    assert (status, body["pass"]) == EXPECTED[kind]["hold"]
    if kind != "flagger-rollout":  # that hook only stops a canary; hold never stops one
        assert body["pass"] is False


def test_the_revision_id_version_and_old_state_are_read_as_the_decision_endpoint_does() -> None:
    d = decision("promote")
    assert gate(d, "3f9a1c2b4d5e", "check")[0] == 200  # the revision id
    assert gate(d, "8", "check")[0] == 412  # the version, while the candidate has a revision
    no_rev = decision("promote", revision=None)
    assert gate(no_rev, "x", "check")[1]["reasons"][1].startswith("asked about revision 'x'")
    assert gate(decision("hold", revision=None, pairs=0), "x", "argo")[1]["verdict"] == "hold"


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(GateInputError, match="unknown gate 'nope'"):
        gate(decision("promote"), "r", "nope")
    for bad in (None, "", "   "):
        with pytest.raises(GateInputError, match="needs the revision deployed"):
            check_revision(bad)
    for bad in ("x" * (MAX_REVISION_LEN + 1), "a\nb", "a\x7fb"):
        with pytest.raises(GateInputError, match="printable"):
            check_revision(bad)
    assert check_revision("x" * MAX_REVISION_LEN) == "x" * MAX_REVISION_LEN
    good = {"name": "fraud", "namespace": "ml", "phase": "Progressing", "checksum": "7c9f"}
    assert flagger_request(good)["revision"] == "7c9f"
    assert flagger_request({**good, "metadata": {"revision": "sha256:b"}})["revision"] == (
        "sha256:b"
    )
    bads: list[tuple[Any, str]] = [
        ([good], "expected a JSON object"),
        ("x", "expected a JSON object"),
        ({**good, "name": ""}, "'name' must be a non-empty string"),
        ({k: v for k, v in good.items() if k != "namespace"}, "'namespace'"),
        ({**good, "phase": 3}, "'phase'"),
        ({**good, "checksum": 5}, "'checksum'"),
        ({**good, "metadata": []}, "'metadata' must be an object of strings"),
        ({**good, "metadata": {"revision": 1}}, "'metadata' must be an object of strings"),
        ({**good, "checksum": ""}, "needs the revision deployed"),
        ({**good, "checksum": None}, "needs the revision deployed"),
        ({**good, "name": "n" * 2000}, "longer than"),
    ]
    for doc, msg in bads:
        with pytest.raises(GateInputError, match=re.escape(msg)):
            flagger_request(doc)
    assert set(FLAGGER_HOOKS) >= {"confirm-promotion", "pre-rollout", "rollback"}


# --- the tool emulations against the pure mapping and the manifests -------------------------


@pytest.mark.parametrize(
    ("verdict", "asked", "phase"),
    [
        ("promote", "sha256:b", "Successful"),
        ("reject", "sha256:b", "Failed"),
        ("hold", "sha256:b", "Inconclusive"),
        ("promote", "sha256:a", "Inconclusive"),  # evidence about another revision
        ("reject", "sha256:a", "Inconclusive"),
    ],
)
def test_argo_reads_the_template_as_documented(verdict: str, asked: str, phase: str) -> None:
    metric = argo_metric("http://sr", "fraud", "fraud-v8", asked)
    assert metric["provider"]["web"]["url"] == (
        f"http://sr/v1/gates/argo/fraud/fraud-v8?revision={asked}"
    )

    def measure() -> str:
        status, body = gate(decision(verdict), asked, "argo")
        return argo_measurement(metric, status, json.dumps(body).encode())

    got, seen = argo_run(metric, measure)
    assert got == phase
    if phase == "Inconclusive":  # a hold is measured again until count, never Error
        assert seen == ["Inconclusive"] * (int(metric["inconclusiveLimit"]) + 1)
    else:
        assert len(seen) == 1


def test_argo_counts_a_non_2xx_as_error_not_failed() -> None:
    """Why the Argo gate answers 200 on reject: a 412 would be an Error, retried up to
    consecutiveErrorLimit, and the run would end Error, not Failed."""
    metric = argo_metric("http://sr", "fraud", "fraud-v8", "sha256:b")
    assert argo_measurement(metric, 412, b'{"verdict": "reject"}') == "Error"
    assert argo_run(metric, lambda: "Error") == ("Error", ["Error"] * 5)
    assert argo_run(metric, lambda: None) == ("Running", [])  # nothing measured yet


@pytest.mark.parametrize(
    ("verdict", "asked", "state"),
    [
        ("promote", "sha256:b", "SUCCEEDED"),
        ("reject", "sha256:b", "TERMINAL"),
        ("hold", "sha256:b", "RUNNING"),
        ("promote", "sha256:a", "RUNNING"),
    ],
)
def test_spinnaker_reads_the_stage_as_documented(verdict: str, asked: str, state: str) -> None:
    stage = spinnaker_stage("http://sr", asked)
    assert stage["type"] == "webhook" and stage["waitForCompletion"] is True
    assert stage["statusUrlResolution"] == "getMethod" and stage["method"] == "GET"
    assert stage["url"] == f"http://sr/v1/gates/spinnaker/fraud/fraud-v8?revision={asked}"
    status, body = gate(decision(verdict), asked, "spinnaker")
    assert spinnaker_status(stage, status, json.dumps(body).encode()) == state
    assert json_path(body, stage["progressJsonPath"]).startswith("gate spinnaker:")


def test_json_path_subset() -> None:
    doc = {"a": {"b": [1, {"c": "x"}]}}
    assert json_path(doc, "{$.a.b[1].c}") == "x" and json_path(doc, "$.a.b[0]") == 1
    assert json_path(doc, "$") == doc
    with pytest.raises(KeyError):
        json_path(doc, "$.a.z")


# --- the manifests themselves -----------------------------------------------------------------


@pytest.fixture(scope="module")
def kvalidate() -> Any:
    try:
        return importlib.import_module("kubernetes_validate")
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("kubernetes-validate is required in CI")
        pytest.skip("kubernetes-validate not available (pip install kubernetes-validate)")


def test_argo_manifests_fit_together(kvalidate: Any) -> None:
    [tpl] = load_yaml("argo-clusteranalysistemplate.yaml")
    assert (tpl["apiVersion"], tpl["kind"]) == ("argoproj.io/v1alpha1", "ClusterAnalysisTemplate")
    [metric] = tpl["spec"]["metrics"]
    assert metric["consecutiveSuccessLimit"] == 1 and metric["failureLimit"] == 0
    assert "count" not in metric and metric["inconclusiveLimit"] >= 1  # ends only on a verdict
    assert metric["provider"]["web"].get("method", "GET") == "GET"
    required = {a["name"] for a in tpl["spec"]["args"] if "value" not in a}
    assert required == {"route", "candidate", "revision"}
    used = set(ARG.findall(metric["provider"]["web"]["url"]))
    assert used == {a["name"] for a in tpl["spec"]["args"]}

    [rollout] = load_yaml("argo-rollout.yaml")
    assert (rollout["apiVersion"], rollout["kind"]) == ("argoproj.io/v1alpha1", "Rollout")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    [analysis] = [s["analysis"] for s in steps if "analysis" in s]
    [ref] = analysis["templates"]
    assert ref == {"templateName": tpl["metadata"]["name"], "clusterScope": True}
    assert {a["name"] for a in analysis["args"]} == required
    args = {a["name"]: a["value"] for a in analysis["args"]}
    image = rollout["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith("@" + args["revision"])  # the gate is about the image deployed
    # the Rollout's pod template, checked strictly as a Deployment's
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": rollout["metadata"]["name"], "namespace": "ml"},
        "spec": {k: rollout["spec"][k] for k in ("replicas", "selector", "template")},
    }
    kvalidate.validate(deployment, KUBE_VERSION, strict=True)


def test_flagger_manifest_fits_together(kvalidate: Any) -> None:
    docs = load_yaml("flagger-canary.yaml")
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [canary] = [d for d in docs if d["kind"] == "Canary"]
    kvalidate.validate(deployment, KUBE_VERSION, strict=True)
    assert canary["apiVersion"] == "flagger.app/v1beta1"
    assert canary["spec"]["targetRef"]["name"] == deployment["metadata"]["name"]
    hooks = flagger_webhooks("http://sr")
    assert set(hooks) == {"pre-rollout", "confirm-promotion", "rollback"}
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    for kind, hook in hooks.items():
        assert hook["url"] == f"http://sr/v1/gates/flagger/fraud/fraud-v8/{kind}"
        assert image.endswith("@" + hook["metadata"]["revision"])


def test_github_actions_step_runs_the_decision_cli() -> None:
    [wf] = load_yaml("github-actions-gate.yaml")
    [step] = wf["jobs"]["gate"]["steps"]
    run = step["run"]
    for part in ("decision fraud fraud-v8", "--revision", "--wait", "--timeout", "--api"):
        assert part in run
    assert wf["jobs"]["deploy"]["needs"] == "gate"


def test_openapi_describes_every_gate_route() -> None:
    from aiohttp import web

    from shadowroute.api.gates import GateCounts, gate_routes
    from shadowroute.api.openapi import document

    app = web.Application()
    app.router.add_routes(gate_routes(None, GateCounts()))  # type: ignore[arg-type]
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    paths = document()["paths"]
    assert served == {(m, p) for p in paths if p.startswith("/v1/gates/") for m in paths[p]}
    for path, item in paths.items():
        if path.startswith("/v1/gates/"):
            for op in item.values():
                codes = set(op["responses"])
                assert not any(c.startswith("5") or c == "204" for c in codes), path
                assert {"200", "400", "404"} <= codes
    flagger = paths["/v1/gates/flagger/{route}/{candidate}/{hook}"]["post"]
    assert set(flagger["parameters"][2]["schema"]["enum"]) == set(FLAGGER_HOOKS)


def test_docs_show_the_shipped_manifests_verbatim() -> None:
    deploy_md = (ROOT / "docs" / "deploy.md").read_text()
    shipped = sorted(p.name for p in GATES.iterdir())
    assert shipped == [
        "argo-clusteranalysistemplate.yaml",
        "argo-rollout.yaml",
        "flagger-canary.yaml",
        "github-actions-gate.yaml",
        "spinnaker-stage.json",
    ]
    for name in shipped:
        assert (GATES / name).read_text() in deploy_md, f"docs/deploy.md lacks {name} as shipped"
    api_md = (ROOT / "docs" / "api.md").read_text()
    for path in (
        "/v1/gates/argo/",
        "/v1/gates/spinnaker/",
        "/v1/gates/check/",
        "/v1/gates/flagger/",
    ):
        assert path in api_md
    assert "shadowroute_gate_requests_total" in api_md


# --- the chart's ClusterAnalysisTemplate ------------------------------------------------------


@pytest.fixture(scope="module")
def helm_bin() -> str:
    from test_deploy_helm import helm_path, missing_tool

    path = helm_path()
    if path is None:
        missing_tool("helm (scripts/install-helm)")
    assert path is not None
    return path


def _render_gate(helm_bin: str, scenario: str, *extra: str) -> Any:
    from test_deploy_helm import CHART, template

    res = template(helm_bin, "-f", str(CHART / "ci" / scenario), "--set", "gates.argo.enabled=true",
                   *extra)  # fmt: skip
    return res


@pytest.mark.parametrize(
    ("scenario", "api"),
    [
        ("gateway-values.yaml", "http://sr-shadowroute-router.ml.svc:9090"),
        ("kafka-tls-values.yaml", "http://sr-shadowroute-comparator.ml.svc:9090"),
    ],
)
def test_the_chart_renders_the_shipped_template_for_its_api(
    helm_bin: str, scenario: str, api: str
) -> None:
    res = _render_gate(helm_bin, scenario)
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    [tpl] = [d for d in docs if d["kind"] == "ClusterAnalysisTemplate"]
    [shipped] = load_yaml("argo-clusteranalysistemplate.yaml")
    assert tpl["metadata"]["name"] == "sr-shadowroute-verdict"
    assert tpl["spec"]["metrics"] == shipped["spec"]["metrics"]
    args = {a["name"]: a.get("value") for a in tpl["spec"]["args"]}
    assert args == {"route": None, "candidate": None, "revision": None, "api": api}
    # the service the template calls exists in the release, on that port
    host, port = api.removeprefix("http://").split(".")[0], int(api.rsplit(":", 1)[1])
    [svc] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == host]
    assert port in [p["port"] for p in svc["spec"]["ports"]]
    # off by default (the kafka-tls scenario turns it on, so lint and the checks of every
    # scenario cover it)
    from test_deploy_helm import _render

    on = "ClusterAnalysisTemplate" in _render(helm_bin, scenario)
    assert on == (scenario == "kafka-tls-values.yaml")


def test_the_chart_needs_an_api_for_the_template_in_sidecar_mode(helm_bin: str) -> None:
    res = _render_gate(helm_bin, "sidecar-values.yaml")
    assert res.returncode != 0 and "set gates.argo.api" in res.stderr
    sets = ("gates.argo.api=http://x:9090", "gates.argo.inconclusiveLimit=30",
            "gates.argo.interval=30s")  # fmt: skip
    res = _render_gate(helm_bin, "sidecar-values.yaml", *(a for s in sets for a in ("--set", s)))
    assert res.returncode == 0, res.stderr
    [tpl] = [
        d for d in yaml.safe_load_all(res.stdout) if d and d["kind"] == "ClusterAnalysisTemplate"
    ]
    [metric] = tpl["spec"]["metrics"]
    assert (metric["inconclusiveLimit"], metric["interval"]) == (30, "30s")
    assert "count" not in metric
    assert tpl["spec"]["args"][-1] == {"name": "api", "value": "http://x:9090"}
    res = _render_gate(helm_bin, "gateway-values.yaml", "--set", "gates.argo.inconclusiveLimit=-1")
    assert res.returncode != 0 and "inconclusiveLimit" in res.stderr
