"""The API of live mirroring control, per candidate:

- ``GET /v1/routes/{route}/candidates/{candidate}/mirror`` — its settings now;
- ``PUT`` same — ``{"enabled"?: bool, "fraction"?: 0..1}`` (what is left out stays), admin
  token required; applied to every worker within a second, kept across restarts;
- ``DELETE`` same — back to the config's settings, admin token required;
- ``GET /v1/mirroring/changes`` — the change log (API changes, reloads), oldest first.
"""

from __future__ import annotations

from typing import Protocol

import orjson
from aiohttp import web

from shadowroute.api import documents as doc
from shadowroute.api.app import check_token, error, json_response
from shadowroute.core.mirror_control import CandidateMirror, Change, ControlError, MirrorSettings

__all__ = ["Control", "control_routes", "mirror_body"]


class Control(Protocol):
    @property
    def settings(self) -> MirrorSettings: ...

    async def set_candidate(
        self, route: str, candidate: str, value: CandidateMirror | None
    ) -> Change: ...


def mirror_change(c: Change) -> doc.MirrorChange:
    return {
        "at_ms": c.at_ms,
        "route": c.route,
        "candidate": c.candidate,
        "before": c.before,
        "after": c.after,
        "source": "reload" if c.source == "reload" else "api",
    }


def mirror_body(settings: MirrorSettings, route: str, candidate: str) -> doc.CandidateMirror:
    now = settings.get(route, candidate)
    configured = settings.configured(route, candidate)
    return {
        "route": route,
        "candidate": candidate,
        "enabled": now.enabled,
        "fraction": now.fraction,
        "effective_fraction": now.effective,
        "source": "api" if settings.source(route, candidate) == "api" else "config",
        "config": {"enabled": configured.enabled, "fraction": configured.fraction},
        "mirroring": settings.mirroring,
        "changes": [mirror_change(c) for c in settings.history(route, candidate)],
    }


def control_routes(control: Control) -> list[web.RouteDef]:
    async def get_mirror(request: web.Request) -> web.Response:
        route, cand = request.match_info["route"], request.match_info["candidate"]
        try:
            return json_response(mirror_body(control.settings, route, cand))
        except ControlError as exc:
            return error(exc.status, exc.message)

    async def change(request: web.Request, reset: bool) -> web.Response:
        denied = check_token(request)
        if denied is not None:
            return denied
        route, cand = request.match_info["route"], request.match_info["candidate"]
        try:
            value: CandidateMirror | None = None
            if not reset:
                try:
                    body = orjson.loads(await request.read())
                except orjson.JSONDecodeError:
                    raise ControlError(
                        400, 'body must be JSON: {"enabled"?: true|false, "fraction"?: 0..1}'
                    ) from None
                value = control.settings.update(route, cand, body)
            else:
                control.settings.check(route, cand)
            await control.set_candidate(route, cand, value)
        except ControlError as exc:
            return error(exc.status, exc.message)
        except OSError as exc:
            return error(503, f"the setting could not be kept ({exc}); nothing changed")
        return json_response(mirror_body(control.settings, route, cand))

    async def put_mirror(request: web.Request) -> web.Response:
        return await change(request, reset=False)

    async def delete_mirror(request: web.Request) -> web.Response:
        return await change(request, reset=True)

    async def changes(request: web.Request) -> web.Response:
        return json_response({"changes": [mirror_change(c) for c in control.settings.changes]})

    path = "/v1/routes/{route}/candidates/{candidate}/mirror"
    return [
        web.get(path, get_mirror),
        web.put(path, put_mirror),
        web.delete(path, delete_mirror),
        web.get("/v1/mirroring/changes", changes),
    ]
