"""The OpenAPI 3.1 document served at ``/openapi.json``.

The read side's documents (decision, scores, production, history, lineage) are generated from
their TypedDicts in ``shadowroute.comparator.documents``; tests validate real responses against
them. A test checks that every route the app serves is described here and the other way round.
"""

from __future__ import annotations

from typing import Any

from shadowroute import __version__
from shadowroute.api.documents import (
    CandidateMirror,
    ConfiguredRoutes,
    MirrorChange,
    ModelRevision,
)
from shadowroute.api.typed_schema import components
from shadowroute.comparator import documents

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
_ROUTE_CAND = [
    {"name": "route", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "candidate", "in": "path", "required": True, "schema": {"type": "string"}},
]
_NOT_FOUND = _json(_ERROR, "Unknown route, candidate or model")
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


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


_EVENT_DESTINATION = {
    "type": "object",
    "required": ["name", "kind", "target", "queued", "delivered", "failed", "last_error"],
    "properties": {
        "name": {"type": "string", "description": "kafka, or the webhook's name"},
        "kind": {"enum": ["kafka", "webhook"]},
        "target": {"type": "string", "description": "The topic, or the URL without its query"},
        "queued": {"type": "integer"},
        "queue_size": {"type": "integer"},
        "delivered": {"type": "integer"},
        "attempts": {"type": "integer"},
        "failed": {"type": "integer", "description": "Events given up"},
        "failed_by_reason": {
            "type": "object",
            "description": "queue_full, rejected, attempts_exhausted, expired, shutdown",
            "additionalProperties": {"type": "integer"},
        },
        "retries_by_reason": {
            "type": "object",
            "description": "Failed attempts: http_5xx, http_429, http_4xx, http_3xx, timeout, "
            "connect, kafka, error",
            "additionalProperties": {"type": "integer"},
        },
        "last_error": {"type": ["string", "null"]},
        "last_error_at": {"type": ["string", "null"], "format": "date-time"},
        "last_delivered_at": {"type": ["string", "null"], "format": "date-time"},
        "last_event_id": {"type": ["string", "null"]},
    },
}
_EVENT_DELIVERIES = {
    "get": {
        "summary": "Event delivery per destination (Kafka, each webhook): counts, last error",
        "description": "Served by the processes that emit events (docs/events.md).",
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["emitted", "subscriber_failures", "destinations"],
                    "properties": {
                        "emitted": {
                            "type": "object",
                            "description": "Events emitted by CloudEvents type",
                            "additionalProperties": {"type": "integer"},
                        },
                        "subscriber_failures": {"type": "integer"},
                        "destinations": {"type": "array", "items": _EVENT_DESTINATION},
                    },
                },
                "Deliveries",
            )
        },
    }
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
                "responses": {"200": _json(_ref("ConfiguredRoutes"), "The configured routes")},
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
                "responses": {"200": _json(_ref("History"), "History"), "404": _NOT_FOUND},
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
                "responses": {"200": _json(_ref("Lineage"), "Lineage"), "404": _NOT_FOUND},
            }
        },
        "/v1/events/deliveries": _EVENT_DELIVERIES,
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
    paths.update(_control_paths())
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
                **components(documents.COMPONENTS),
                **components([ModelRevision, CandidateMirror, MirrorChange, ConfiguredRoutes]),
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
            },
        },
    }


# --- live mirroring control (api/control.py) ---------------------------------------------------


def _control_paths() -> dict[str, Any]:
    written = {
        "200": _json(_ref("CandidateMirror"), "The settings now"),
        "400": _json(_ERROR, "Bad body"),
        "401": _json(_ERROR, "Missing or wrong bearer token"),
        "404": _NOT_FOUND,
        "503": _json(_ERROR, "The state file could not be written; nothing changed"),
    }
    return {
        "/v1/routes/{route}/candidates/{candidate}/mirror": {
            "get": {
                "summary": "A candidate's live mirroring: on/off, fraction, and their changes",
                "parameters": _ROUTE_CAND,
                "responses": {"200": _json(_ref("CandidateMirror"), "Settings"), "404": _NOT_FOUND},
            },
            "put": {
                "summary": "Set a candidate's on/off and fraction (what is left out stays): "
                "every worker within a second, kept across restarts",
                "security": _BEARER,
                "parameters": _ROUTE_CAND,
                "requestBody": _json(
                    {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": False,
                        "properties": {
                            "enabled": {"type": "boolean"},
                            "fraction": {"type": "number", "minimum": 0, "maximum": 1},
                        },
                    },
                    "The new settings",
                ),
                "responses": written,
            },
            "delete": {
                "summary": "Back to the config's settings for the candidate",
                "security": _BEARER,
                "parameters": _ROUTE_CAND,
                "responses": {k: v for k, v in written.items() if k != "400"},
            },
        },
        "/v1/mirroring/changes": {
            "get": {
                "summary": "The change log of mirroring settings (API and reloads), oldest first",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "changes": {"type": "array", "items": _ref("MirrorChange")}
                            },
                        },
                        "Changes",
                    )
                },
            }
        },
    }


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
                    "200": _json(_ref("GateAnswer"), ok),
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
                "200": _json(_ref("GateAnswer"), "The gate passes"),
                "412": _json(
                    _ref("GateAnswer"), "The gate does not pass (hold, or the other verdict)"
                ),
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
            {
                "412": _json(
                    _ref("GateAnswer"), "Hold or reject, or evidence about another revision"
                )
            },
        ),
        "/v1/gates/flagger/{route}/{candidate}/{hook}": flagger,
    }
