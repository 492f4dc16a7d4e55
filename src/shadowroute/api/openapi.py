"""The OpenAPI 3.1 document served at ``/openapi.json``.

A test checks that every route the app serves is described here and the other way round, and
that the documented decision shape is what the API returns.
"""

from __future__ import annotations

from typing import Any

from shadowroute import __version__

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ROUTE_CAND = [
    {"name": "route", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "candidate", "in": "path", "required": True, "schema": {"type": "string"}},
]
_NOT_FOUND = _json(_ERROR, "Unknown route, candidate or model")
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

_METRIC = {
    "type": "object",
    "required": ["estimate", "lower", "upper", "n", "threshold", "status"],
    "properties": {
        "estimate": {"type": ["number", "null"]},
        "lower": {"type": ["number", "null"], "description": "Anytime-valid lower bound"},
        "upper": {"type": ["number", "null"], "description": "Anytime-valid upper bound"},
        "n": {"type": "integer"},
        "threshold": {"type": ["number", "null"]},
        "status": {"enum": ["pass", "fail", "inconclusive"]},
        "needed": {
            "type": "object",
            "description": (
                "Only when inconclusive: an ESTIMATE of the further observations needed before "
                "the interval excludes the threshold, if the effect and variance stay as now"
            ),
            "required": ["more", "total", "unit", "estimate"],
            "properties": {
                "more": {"type": ["integer", "null"], "description": "null: cannot estimate"},
                "total": {"type": ["integer", "null"]},
                "unit": {"enum": ["pairs", "labelled pairs"]},
                "estimate": {"const": True},
                "why": {"type": "string", "description": "Why it cannot be estimated"},
            },
        },
        "errors": {
            "type": "object",
            "description": (
                "error_rate only, when it does not pass: the candidate's most frequent error "
                "reason, its count over the pairs, and a plain-words hint"
            ),
            "required": ["reason", "count", "of"],
            "properties": {
                "reason": {"type": "string", "description": "e.g. http_4xx, timeout, connect"},
                "count": {"type": "integer"},
                "of": {"type": "integer"},
                "hint": {"type": ["string", "null"]},
            },
        },
    },
}

_LABELS_WAITING = {
    "type": "object",
    "description": "Labels kept waiting for their pair (they matched no request seen so far)",
    "required": ["waiting", "waiting_without_route", "max_waiting_per_route"],
    "properties": {
        "waiting": {"type": "integer", "description": "Labels of this route"},
        "waiting_without_route": {
            "type": "integer",
            "description": "Labels sent without a route (any route's pair may join them)",
        },
        "max_waiting_per_route": {"type": "integer"},
    },
}

_NUM = {"type": ["number", "null"]}
_FIGURES = {
    "type": "object",
    "required": ["true_positives", "predicted", "precision", "recall", "f1"],
    "properties": {
        "true_positives": {"type": "integer"},
        "predicted": {"type": "integer", "description": "Instances the model gave this class"},
        "precision": _NUM,
        "recall": _NUM,
        "f1": _NUM,
    },
}
_MATRIX = {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
_CLASS_VIEWS = {
    "type": "object",
    "description": (
        "Classification routes: per-class figures of production and the candidate on the same "
        "labelled pairs (docs/comparator.md \"Per-class views\")"
    ),
    "required": [
        "classes", "max_classes", "declared", "untracked", "other", "no_prediction",
        "per_class", "macro", "confusion", "interval",
    ],
    "properties": {
        "classes": {"type": "array", "items": {"type": "string"}},
        "max_classes": {"type": "integer"},
        "declared": {"type": "boolean", "description": "The tracked classes are routes[].classes"},
        "untracked": {
            "type": "integer",
            "description": "Labelled instances with a class beyond the tracked ones (in other)",
        },
        "other": {"type": "string", "description": "The name of the other bucket"},
        "no_prediction": {
            "type": "string",
            "description": "The candidate's column for instances it gave no prediction for",
        },
        "per_class": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["class", "support", "production", "candidate", "recall_diff"],
                "properties": {
                    "class": {"type": "string"},
                    "support": {"type": "integer", "description": "Labelled instances"},
                    "production": _FIGURES,
                    "candidate": _FIGURES,
                    "recall_diff": {
                        "type": "object",
                        "description": (
                            "Candidate minus production recall on the same labelled requests, "
                            "with an anytime-valid interval (all classes' hold together)"
                        ),
                        "required": ["estimate", "lower", "upper", "n"],
                        "properties": {
                            "estimate": _NUM,
                            "lower": {"type": "number"},
                            "upper": {"type": "number"},
                            "n": {"type": "integer"},
                            "candidate_only_right": {"type": "integer"},
                            "production_only_right": {"type": "integer"},
                        },
                    },
                },
            },
        },
        "macro": {"type": "object"},
        "confusion": {
            "type": "object",
            "required": ["labels", "columns", "production", "candidate"],
            "properties": {
                "rows": {"const": "label"},
                "labels": {"type": "array", "items": {"type": "string"}},
                "columns": {"type": "array", "items": {"type": "string"}},
                "production": _MATRIX,
                "candidate": _MATRIX,
            },
        },
        "interval": {
            "type": "object",
            "required": ["alpha", "alpha_per_class", "note"],
            "properties": {
                "alpha": {"type": "number"},
                "alpha_per_class": {"type": "number"},
                "note": {"type": "string"},
            },
        },
    },
}  # fmt: skip
_DRIFT_AUTO = {
    "type": "object",
    "description": "Automatic drift (drift.auto): the fields found and what was counted, not "
    "tracked",
    "required": ["enabled", "max_fields", "fields", "untracked_values", "untracked_examples"],
    "properties": {
        "enabled": {"type": "boolean"},
        "max_fields": {"type": "integer"},
        "fields": {"type": "array", "items": {"type": "string"}},
        "untracked_values": {"type": "integer"},
        "untracked_examples": {"type": "array", "items": {"type": "string"}},
        "too_deep_values": {"type": "integer"},
        "fields_left_out_of_merge": {"type": "integer"},
    },
}

_DECISION = {
    "type": "object",
    "required": [
        "route",
        "candidate",
        "verdict",
        "reasons",
        "metrics",
        "pairs",
        "labelled",
        "as_of",
        "revision",
    ],
    "properties": {
        "route": {"type": "string"},
        "candidate": {"type": "string"},
        "verdict": {"enum": ["promote", "hold", "reject"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "metrics": {"type": "object", "additionalProperties": _ref("MetricEvidence")},
        "pairs": {"type": "integer"},
        "labelled": {"type": "integer"},
        "as_of": {"type": ["integer", "string", "null"], "description": "When it was computed"},
        "revision": {
            "description": (
                "The revision the evidence is about (null before any pair, or for evidence "
                "recorded before revisions were tracked)"
            ),
            "anyOf": [{"type": "null"}, {"$ref": "#/components/schemas/EvidenceRevision"}],
        },
        "asked_revision": {
            "type": "string",
            "description": "Only when ?revision= named another revision: what was asked (the "
            "verdict is then hold, and the reason says which revision the evidence is for)",
        },
        "noise": {
            "type": "boolean",
            "description": "True for a noise candidate (production against itself): always hold",
        },
        "noise_floor": {
            "type": ["object", "null"],
            "description": (
                "The route's noise candidate, to read this candidate's figures against: "
                "disagreement and the paired differences of the decision's metrics"
            ),
            "properties": {
                "candidate": {"type": "string"},
                "pairs": {"type": "integer"},
                "labelled": {"type": "integer"},
                "disagreement": {"type": ["number", "null"]},
                "metrics": {"type": "object"},
                "note": {"type": "string"},
            },
        },
        "labels_waiting": {
            "type": "integer",
            "description": "Labels of this route waiting for their pair (see production)",
        },
        "integrity": {
            "type": "object",
            "description": "Evidence the comparator refused to take at face value (all routes)",
            "properties": {
                "duplicate_pairs": {"type": "integer"},
                "duplicate_ids": {"type": "integer"},
                "duplicate_labels": {"type": "integer"},
                "conflicting_labels": {"type": "integer"},
            },
        },
    },
}

_IDENTITY = {
    "type": ["object", "null"],
    "properties": {
        "url": {"type": ["string", "null"]},
        "version": {"type": ["string", "null"]},
        "revision": {"type": ["string", "null"]},
    },
}

_EVIDENCE_REVISION = {
    "type": "object",
    "required": ["id", "candidate", "production"],
    "properties": {
        "id": {
            "type": "string",
            "description": "12 hex digits naming (candidate identity, production identity)",
        },
        "candidate": _IDENTITY,
        "production": _IDENTITY,
    },
}

_MODEL_REVISION = {
    "type": "object",
    "required": ["route", "model", "role", "url", "version", "revision", "source"],
    "properties": {
        "route": {"type": "string"},
        "model": {"type": "string"},
        "role": {"enum": ["production", "candidate"]},
        "url": {"type": "string"},
        "version": {"type": ["string", "null"]},
        "revision": {"type": ["string", "null"]},
        "source": {"enum": ["config", "api"], "description": "Where the revision comes from"},
    },
}


def _revision_path(params: list[dict[str, Any]], who: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": f"The {who}'s live revision identity (url, version, revision)",
            "parameters": params,
            "responses": {
                "200": _json(_ref("ModelRevision"), "The live revision"),
                "404": _json(_ERROR, "Unknown route or candidate, or no data plane here"),
            },
        },
        "put": {
            "summary": f"Set the {who}'s revision at run time (e.g. an image digest)",
            "description": (
                "Records built from now on carry it; the comparator starts fresh evidence for "
                "the new revision (the old stays in the history and never counts for it). "
                "{\"revision\": null} goes back to the config's. Lasts for the process's life: "
                "set `revision` in the config (or SHADOWROUTE_ROUTE_<ROUTE>_<MODEL>_REVISION) "
                "for restarts."
            ),
            "security": _BEARER,
            "parameters": params,
            "requestBody": _json(
                {
                    "type": "object",
                    "required": ["revision"],
                    "properties": {
                        "revision": {"type": ["string", "null"], "minLength": 1, "maxLength": 256}
                    },
                },
                "The new revision",
            ),
            "responses": {
                "200": _json(_ref("ModelRevision"), "The live revision now"),
                "400": _json(_ERROR, "Bad body"),
                "401": _json(_ERROR, "Missing or wrong bearer token"),
                "404": _json(_ERROR, "Unknown route or candidate, or no data plane here"),
            },
        },
    }


_LABEL_RESULT = {
    "type": "object",
    "required": ["accepted", "rejected"],
    "properties": {
        "accepted": {"type": "integer", "description": "New labels kept"},
        "rejected": {"type": "integer"},
        "duplicates": {"type": "integer", "description": "Same value as the label kept"},
        "conflicts": {"type": "integer", "description": "Another value than the label kept"},
        "committed": {
            "type": "boolean",
            "description": "false: handed to Kafka; the comparator judges them later",
        },
        "matched": {
            "type": ["integer", "null"],
            "description": (
                "Accepted labels that matched a request seen so far (embedded comparator); "
                "null with Kafka, where the comparator matches them later"
            ),
        },
        "waiting": {
            "type": ["integer", "null"],
            "description": (
                "Accepted labels kept waiting for their pair until label_ttl_s ends "
                "(embedded); null with Kafka: see labels.waiting of GET "
                "/v1/routes/{route}/production and shadowroute_labels_waiting"
            ),
        },
        "waiting_ids": {
            "type": "array",
            "items": {"type": "string"},
            "description": "A few ids of the labels kept waiting",
        },
        "hint": {
            "type": "string",
            "description": "When none matched: label by the x-request-id the proxy returned",
        },
        "note": {"type": "string", "description": "With Kafka: what the answer cannot say"},
        "labels": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "status": {"enum": ["duplicate", "conflict", "refused"]},
                    "reason": {"type": "string"},
                },
            },
        },
        "error": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"line": {"type": "integer"}, "reason": {"type": "string"}},
            },
        },
    },
}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {"summary": "Liveness", "responses": {"200": {"description": "Alive"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness (off while starting and draining)",
                "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Text exposition format"}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
        },
        "/v1/routes": {
            "get": {
                "summary": "Routes with their production model and candidates",
                "responses": {"200": _json(_ref("Routes"), "The configured routes")},
            }
        },
        "/v1/mirroring": {
            "get": {
                "summary": "Whether mirroring is on",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"enabled": {"type": "boolean"}}}, "State"
                    ),
                    "404": _json(_ERROR, "This process has no data plane"),
                },
            },
            "put": {
                "summary": "Switch mirroring on or off without a restart",
                "security": _BEARER,
                "requestBody": _json(
                    {
                        "type": "object",
                        "required": ["enabled"],
                        "properties": {"enabled": {"type": "boolean"}},
                    },
                    "The new state",
                ),
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"enabled": {"type": "boolean"}}},
                        "New state",
                    ),
                    "400": _json(_ERROR, "Bad body"),
                    "401": _json(_ERROR, "Missing or wrong bearer token"),
                    "404": _json(_ERROR, "This process has no data plane"),
                },
            },
        },
        "/v1/labels": {
            "post": {
                "summary": "Ground truth intake: a JSON array, JSON lines or CSV of label records",
                "description": (
                    "Good records are accepted and written even when others are bad: 202 when "
                    "all were good, 400 naming each bad line (1-based) or label refused by the "
                    "rules (by id) otherwise, 429 when only the backlog was full. Duplicates "
                    "and conflicts with the first label are named in `labels`. Schema: "
                    "src/shadowroute/schemas/label.v1.json."
                ),
                "security": _BEARER,
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"type": "array", "items": _ref("Label")}},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}},
                    }
                },
                "responses": {
                    "202": _json(_LABEL_RESULT, "All records accepted"),
                    "400": _json(
                        _LABEL_RESULT, "Some or all records bad; the good ones were accepted"
                    ),
                    "401": _json(_ERROR, "Missing or wrong bearer token"),
                    "413": _json(_ERROR, "Body too large"),
                    "415": _json(_ERROR, "Not one of the label content types"),
                    "429": _json(
                        _LABEL_RESULT, "Labels refused: the route's waiting backlog is full"
                    ),
                    "503": _json(_ERROR, "Not committed; nothing of the batch was kept"),
                },
            }
        },
        "/v1/routes/{route}/candidates/{candidate}/decision": {
            "get": {
                "summary": "The verdict with its reasons and evidence",
                "parameters": [
                    *_ROUTE_CAND,
                    {
                        "name": "revision",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": (
                            "The candidate revision the caller expects (its revision, its "
                            "version when it has none, or the revision id): when the evidence "
                            "is about another one, the verdict is hold and the reason says so"
                        ),
                    },
                ],
                "responses": {"200": _json(_ref("Decision"), "The decision"), "404": _NOT_FOUND},
            }
        },
        "/v1/routes/{route}/candidates/{candidate}/scores": {
            "get": {
                "summary": "All scores, cumulative and per window (candidate minus production, "
                "positive = candidate better)",
                "parameters": _ROUTE_CAND,
                "responses": {"200": _json(_ref("Scores"), "Scores"), "404": _NOT_FOUND},
            }
        },
        "/v1/routes/{route}/candidates/{candidate}/history": {
            "get": {
                "summary": "Verdict changes with the evidence that caused them, and revision "
                "changes (event revision_change: the evidence restarts; previous: the old "
                "revision's last verdict)",
                "parameters": _ROUTE_CAND,
                "responses": {"200": _json({"type": "object"}, "History"), "404": _NOT_FOUND},
            }
        },
        "/v1/routes/{route}/production": {
            "get": {
                "summary": "Production quality over time, drift and label freshness",
                "parameters": [_ROUTE_CAND[0]],
                "responses": {
                    "200": _json(_ref("Production"), "Production health"),
                    "404": _NOT_FOUND,
                },
            }
        },
        "/v1/routes/{route}/candidates/{candidate}/revision": _revision_path(
            _ROUTE_CAND, "candidate"
        ),
        "/v1/routes/{route}/production/revision": _revision_path(
            [_ROUTE_CAND[0]], "production model"
        ),
        "/v1/models/{model}/lineage": {
            "get": {
                "summary": "Declared lineage, live quality, drift, age and verdicts of a model",
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": _json({"type": "object"}, "Lineage"), "404": _NOT_FOUND},
            }
        },
        "/": {
            "get": {
                "summary": "The scorecard page (HTML)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
        "/static/{name}": {
            "get": {
                "summary": "The scorecard's assets",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "Asset"},
                    "404": {"description": "No such asset"},
                },
            }
        },
    }
    paths.update(gate_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shadowroute",
            "version": __version__,
            "description": (
                "Verdicts, scores and ground truth intake for shadow-deployed models. Every "
                "path answers 421 for an unknown Host (admin.allowed_hosts), 403 for a write "
                "from a foreign Origin, and, with admin.read_token, 401 for a read without it "
                "(but /healthz, /readyz, /metrics)."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Decision": _DECISION,
                "EvidenceRevision": _EVIDENCE_REVISION,
                "ModelRevision": _MODEL_REVISION,
                "MetricEvidence": _METRIC,
                "LabelsWaiting": _LABELS_WAITING,
                "ClassViews": _CLASS_VIEWS,
                "DriftAuto": _DRIFT_AUTO,
                "Scores": {
                    "type": "object",
                    "required": ["route", "candidate", "task", "pairs", "labelled"],
                    "properties": {
                        "route": {"type": "string"},
                        "candidate": {"type": "string"},
                        "task": {"type": "string"},
                        "pairs": {"type": "integer"},
                        "labelled": {"type": "integer"},
                        "classes": _ref("ClassViews"),
                        "similarity": {
                            "type": "object",
                            "description": "Text routes: mean difflib similarity of the two "
                            "answers (1 = identical)",
                            "properties": {"n": {"type": "integer"}, "mean": _NUM},
                        },
                    },
                },
                "Production": {
                    "type": "object",
                    "required": ["route", "model", "task"],
                    "properties": {
                        "route": {"type": "string"},
                        "model": {"type": "string"},
                        "task": {"type": "string"},
                        "metric": {"type": "string"},
                        "drift": {"type": "object"},
                        "drift_auto": _ref("DriftAuto"),
                        "labels": _ref("LabelsWaiting"),
                    },
                },
                "Label": {
                    "type": "object",
                    "required": ["id", "label"],
                    "properties": {
                        "v": {"const": 1},
                        "id": {"type": "string"},
                        "label": {},
                        "ts": {"type": "integer"},
                        "route": {"type": "string"},
                    },
                },
                "Routes": {
                    "type": "object",
                    "required": ["routes"],
                    "properties": {
                        "routes": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "production", "candidates"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "production": {"type": "object"},
                                    "candidates": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                        }
                    },
                },
            },
        },
    }


_GATE = {
    "type": "object",
    "required": [
        "gate", "outcome", "pass", "verdict", "revision", "revision_matches", "reasons",
        "decision",
    ],
    "properties": {
        "gate": {"type": "string", "description": "argo, spinnaker, check or flagger-<hook>"},
        "route": {"type": "string"},
        "candidate": {"type": "string"},
        "outcome": {
            "enum": ["pass", "fail", "hold"],
            "description": "What the verdict means for this gate (rollback: pass on reject)",
        },
        "pass": {"type": "boolean", "description": "Does the gate let the tool go on"},
        "verdict": {
            "enum": ["promote", "hold", "reject"],
            "description": "The verdict for the asked revision: hold when the evidence is "
            "about another one (Argo jsonPath {$.verdict}, Spinnaker statusJsonPath $.verdict)",
        },
        "revision": {"type": "string", "description": "The revision asked about"},
        "revision_matches": {"type": "boolean"},
        "evidence_revision": {
            "type": ["string", "null"],
            "description": "The revision id the evidence is about",
        },
        "reasons": {"type": "array", "items": {"type": "string"}},
        "decision": _ref("Decision"),
        "flagger": {
            "type": "object",
            "description": "Flagger gates: name, namespace, phase and checksum of the call",
        },
    },
}  # fmt: skip
_GATE_REVISION = {
    "name": "revision",
    "in": "query",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    "description": "The candidate revision deployed (an image digest, a checksum, the version "
    "or the revision id): evidence about another revision never passes",
}


def gate_paths() -> dict[str, Any]:
    """The deploy gates ``/v1/gates/…`` (docs/deploy.md, "Deploy gates")."""
    bad = _json(_ERROR, "No revision, or an unusable one")

    def get(tool: str, ok: str, no: dict[str, Any]) -> dict[str, Any]:
        return {
            "get": {
                "summary": tool,
                "parameters": [*_ROUTE_CAND, _GATE_REVISION],
                "responses": {
                    "200": _json(_GATE, ok),
                    **no,
                    "400": bad,
                    "404": _NOT_FOUND,
                },
            }
        }

    every = "Every verdict: the tool reads $.verdict (promote, hold, reject)"
    flagger = {
        "post": {
            "summary": "Flagger webhook gate: pre-rollout and confirm-promotion pass on promote, "
            "rollout fails only on reject, rollback passes (Flagger rolls back) on reject; the "
            "revision asked is metadata.revision, else the checksum",
            "parameters": [
                *_ROUTE_CAND,
                {
                    "name": "hook",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": ["confirm-promotion", "pre-rollout", "rollout", "rollback"]},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["name", "namespace", "phase"],
                            "properties": {
                                "name": {"type": "string"},
                                "namespace": {"type": "string"},
                                "phase": {"type": "string"},
                                "checksum": {"type": "string"},
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(_GATE, "The gate passes"),
                "412": _json(_GATE, "The gate does not pass (hold, or the other verdict)"),
                "400": _json(_ERROR, "Malformed payload, or no revision in it"),
                "404": _json(_ERROR, "Unknown route, candidate or hook"),
                "413": _json(_ERROR, "Payload over 64 KiB"),
            },
        }
    }
    return {
        "/v1/gates/argo/{route}/{candidate}": get(
            "Argo Rollouts / Kargo web metric gate (200 for every verdict: a non-2xx is an "
            "Argo Error)",
            every,
            {},
        ),
        "/v1/gates/spinnaker/{route}/{candidate}": get(
            "Spinnaker webhook stage gate (200 for every verdict)", every, {}
        ),
        "/v1/gates/check/{route}/{candidate}": get(
            "Status-code gate for CI: 200 on promote, 412 otherwise",
            "Promote for the asked revision",
            {"412": _json(_GATE, "Hold or reject, or evidence about another revision")},
        ),
        "/v1/gates/flagger/{route}/{candidate}/{hook}": flagger,
    }
