"""The HTML scorecard: ``/`` and ``/static/{name}``, served from the package's ``static`` folder.

The page is static (HTML, CSS, JavaScript, no build step, no CDN); it reads the same JSON API as
deploy tooling (``/v1/routes`` and the per-candidate and production endpoints) and draws its
charts as inline SVG. See ``docs/scorecard.md``.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
"""Every file that may be served, with its content type: nothing else is reachable."""


def _asset(name: str) -> bytes:
    return resources.files("shadowroute").joinpath("static", name).read_bytes()


def _response(name: str) -> web.Response:
    return web.Response(
        body=_asset(name),
        content_type=ASSETS[name],
        charset="utf-8",
        headers={
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": (
                "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
            ),
        },
    )


async def index(request: web.Request) -> web.Response:
    return _response("index.html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound(text=f"no asset {name!r}")
    return _response(name)


def scorecard_routes() -> list[web.RouteDef]:
    """Routes for the control-plane app: the page at ``/`` and its assets."""
    return [web.get("/", index), web.get("/static/{name}", static)]
