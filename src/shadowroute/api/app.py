"""The control plane on aiohttp: health, metrics, the versioned API and the scorecard.

It reads the rest of the system through the narrow ``ControlContext`` below and nothing else.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from shadowroute.api.admin_guard import AdminGuard, GuardCollector
from shadowroute.api.documents import ConfiguredRoutes, ModelRevision, RouteCandidate
from shadowroute.core.config import Candidate, Config, Model
from shadowroute.core.records import MAX_REVISION
from shadowroute.core.revision import LiveRevisions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ControlContext:
    config: Config
    registry: CollectorRegistry
    ready: Callable[[], bool]
    get_mirroring: Callable[[], bool] | None = None
    set_mirroring: Callable[[bool], None] | None = None
    revisions: LiveRevisions | None = None
    """Each model's live revision (a process with a data plane)."""
    set_revision: Callable[[str, str, str | None], None] | None = None
    """Sets a model's revision in ``revisions`` and the data plane(s)."""
    fractions: Callable[[], Mapping[tuple[str, str], float]] | None = None
    """Each candidate's live mirror fraction, 0 while off (a process with live control)."""
    extra_routes: list[web.RouteDef] = field(default_factory=list)
    cleanup_ctx: list[Callable[[web.Application], AsyncIterator[None]]] = field(
        default_factory=list
    )
    """Background work that runs while the admin app runs (aiohttp ``cleanup_ctx``)."""


CONTEXT = web.AppKey("context", ControlContext)
GUARD = web.AppKey("guard", AdminGuard)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
    )


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status=status)


def check_token(request: web.Request) -> web.Response | None:
    """None when the request may write; otherwise the 401 to send."""
    token = request.app[CONTEXT].config.admin.token
    if token is None:
        return None
    got = request.headers.get("Authorization", "")
    expected = "Bearer " + token.get_secret_value()
    if hmac.compare_digest(got.encode(), expected.encode()):
        return None
    return web.Response(
        body=orjson.dumps({"error": "missing or wrong bearer token"}),
        status=401,
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="shadowroute"'},
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ok = request.app[CONTEXT].ready()
    return json_response({"ready": ok}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[CONTEXT].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def routes(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    live_fractions = ctx.fractions() if ctx.fractions is not None else None

    def live(route: str, model: Model) -> str | None:
        if ctx.revisions is None:
            return model.revision
        return ctx.revisions.get(route, model.name)

    def candidate(route: str, c: Candidate) -> RouteCandidate:
        out: RouteCandidate = {
            "name": c.name,
            "version": c.version,
            "revision": live(route, c),
            "fraction": c.fraction,
        }
        if live_fractions is not None:
            out["effective_fraction"] = live_fractions.get((route, c.name), 0.0)
        return out

    doc: ConfiguredRoutes = {
        "routes": [
            {
                "name": r.name,
                "path_prefix": r.path_prefix,
                "protocol": r.protocol,
                "task": r.task,
                "production": {
                    "name": r.production.name,
                    "version": r.production.version,
                    "revision": live(r.name, r.production),
                },
                "candidates": [candidate(r.name, c) for c in r.candidates],
            }
            for r in ctx.config.routes
        ]
    }
    return json_response(doc)


async def get_mirroring(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if ctx.get_mirroring is None:
        return error(404, "this process has no data plane")
    return json_response({"enabled": ctx.get_mirroring()})


async def put_mirroring(request: web.Request) -> web.Response:
    denied = check_token(request)
    if denied is not None:
        return denied
    ctx = request.app[CONTEXT]
    if ctx.set_mirroring is None or ctx.get_mirroring is None:
        return error(404, "this process has no data plane")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error(400, 'body must be JSON: {"enabled": true|false}')
    if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
        return error(400, 'body must be {"enabled": true|false}')
    ctx.set_mirroring(body["enabled"])
    return json_response({"enabled": ctx.get_mirroring()})


Role = Literal["production", "candidate"]


def _model_of(request: web.Request) -> tuple[str, str, Role] | web.Response:
    """(route, model, role) named by the path, or the 404 to send."""
    cfg = request.app[CONTEXT].config
    route = cfg.route(request.match_info["route"])
    if route is None:
        return error(404, f"unknown route {request.match_info['route']!r}")
    cand = request.match_info.get("candidate")
    if cand is None:
        return route.name, route.production.name, "production"
    if all(c.name != cand for c in route.candidates):
        return error(404, f"route {route.name!r} has no candidate {cand!r}")
    return route.name, cand, "candidate"


def _revision_body(live: LiveRevisions, route: str, model: str, role: Role) -> ModelRevision:
    url, version, revision = live.identity(route, model)
    assert url is not None  # a configured model always has its url
    return {
        "route": route,
        "model": model,
        "role": role,
        "url": url,
        "version": version,
        "revision": revision,
        "source": "api" if live.source(route, model) == "api" else "config",
    }


async def get_revision(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    found = _model_of(request)
    if isinstance(found, web.Response):
        return found
    if ctx.revisions is None:
        return error(404, "this process has no data plane")
    return json_response(_revision_body(ctx.revisions, *found))


async def put_revision(request: web.Request) -> web.Response:
    """Set a model's revision: records from now on carry it, and the comparator keeps the
    evidence of each revision apart. ``{"revision": null}`` goes back to the config's."""
    denied = check_token(request)
    if denied is not None:
        return denied
    ctx = request.app[CONTEXT]
    found = _model_of(request)
    if isinstance(found, web.Response):
        return found
    if ctx.revisions is None or ctx.set_revision is None:
        return error(404, "this process has no data plane")
    shape = f'body must be {{"revision": "<1-{MAX_REVISION} characters>" | null}}'
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error(400, shape)
    revision = body.get("revision", ...) if isinstance(body, dict) else ...
    if revision is not None and (
        not isinstance(revision, str) or not 1 <= len(revision) <= MAX_REVISION
    ):
        return error(400, shape)
    route, model, role = found
    ctx.set_revision(route, model, revision)
    return json_response(_revision_body(ctx.revisions, route, model, role))


async def openapi(request: web.Request) -> web.Response:
    from shadowroute.api.openapi import document

    return json_response(document())


def create_app(ctx: ControlContext) -> web.Application:
    guard = AdminGuard.of(ctx.config.admin)
    with contextlib.suppress(ValueError):  # an app made twice from one context: counted once
        ctx.registry.register(GuardCollector(guard))
    app = web.Application(client_max_size=64 << 20, middlewares=[guard.middleware()])
    app[CONTEXT] = ctx
    app[GUARD] = guard
    app.cleanup_ctx.extend(ctx.cleanup_ctx)
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/openapi.json", openapi),
            web.get("/v1/routes", routes),
            web.get("/v1/mirroring", get_mirroring),
            web.put("/v1/mirroring", put_mirroring),
            web.get("/v1/routes/{route}/production/revision", get_revision),
            web.put("/v1/routes/{route}/production/revision", put_revision),
            web.get("/v1/routes/{route}/candidates/{candidate}/revision", get_revision),
            web.put("/v1/routes/{route}/candidates/{candidate}/revision", put_revision),
            *ctx.extra_routes,
        ]
    )
    return app
