"""A demo model server speaking Open Inference Protocol v2 over HTTP (aiohttp).

``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2/models/{name}``,
``GET /v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer``. Every demo server serves
the same model name (as revisions of one inference service do) with its own version, so the
proxy can forward the same path to production and candidates.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from shadowroute.demo.models import TrainedModel
from shadowroute.demo.oip import BadRequest, infer_response, parse_inputs

MODEL = web.AppKey("model", TrainedModel)
SERVED_NAME = web.AppKey("served_name", str)
N_FEATURES = web.AppKey("n_features", int)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _known(request: web.Request) -> bool:
    return request.match_info["name"] == request.app[SERVED_NAME]


async def _live(request: web.Request) -> web.Response:
    return _json({"live": True})


async def _ready(request: web.Request) -> web.Response:
    return _json({"ready": True})


async def _model_ready(request: web.Request) -> web.Response:
    if not _known(request):
        return _json({"error": f"model {request.match_info['name']!r} not found"}, 404)
    return _json({"name": request.app[SERVED_NAME], "ready": True})


async def _metadata(request: web.Request) -> web.Response:
    if not _known(request):
        return _json({"error": f"model {request.match_info['name']!r} not found"}, 404)
    app = request.app
    return _json(
        {
            "name": app[SERVED_NAME],
            "versions": [app[MODEL].spec.version],
            "platform": "sklearn",
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, app[N_FEATURES]]}],
            "outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}],
        }
    )


async def _infer(request: web.Request) -> web.Response:
    app = request.app
    if not _known(request):
        return _json({"error": f"model {request.match_info['name']!r} not found"}, 404)
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json({"error": "body is not JSON"}, 422)
    try:
        rows = parse_inputs(doc, app[N_FEATURES])
    except BadRequest as exc:
        return _json({"error": str(exc)}, 400)
    model = app[MODEL]
    req_id = doc.get("id") if isinstance(doc.get("id"), str) else None
    body = infer_response(app[SERVED_NAME], model.spec.version, req_id, model.predict_proba(rows))
    return _json(body)


def model_app(model: TrainedModel, served_name: str, n_features: int) -> web.Application:
    app = web.Application()
    app[MODEL] = model
    app[SERVED_NAME] = served_name
    app[N_FEATURES] = n_features
    app.add_routes(
        [
            web.get("/v2/health/live", _live),
            web.get("/v2/health/ready", _ready),
            web.get("/v2/models/{name}", _metadata),
            web.get("/v2/models/{name}/ready", _model_ready),
            web.post("/v2/models/{name}/infer", _infer),
        ]
    )
    return app


@contextlib.asynccontextmanager
async def serve_model(
    model: TrainedModel, served_name: str, n_features: int, host: str = "127.0.0.1"
) -> AsyncIterator[int]:
    """Run a model server on a free port; yields the port."""
    async with serve_app(model_app(model, served_name, n_features), host) as port:
        yield port


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Run a demo stand-in ``app`` on a free port; yields the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
