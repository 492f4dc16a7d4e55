"""A small async client for the model registry endpoints of MLflow's REST API 2.0.

Only what shadowroute needs: read a model version (by number or by alias), set a model
version tag, read a registered model's aliases, set and delete an alias. Each call has a
timeout; a call that gets no answer, a 429 or a 5xx is tried again up to ``retries`` times with
a doubling backoff; a 4xx is not (the registry said no: ``RegistryError`` carries MLflow's
``error_code`` and message). Answers are read up to ``MAX_RESPONSE_BYTES``.

Paths and payloads as MLflow's ``ModelRegistryService`` defines them: reads are GET with query
parameters, writes are JSON bodies (DELETE too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from shadowroute.registry.stats import RequestStats

log = logging.getLogger("shadowroute.registry")

__all__ = ["MAX_RESPONSE_BYTES", "MlflowClient", "ModelVersion", "RegistryError"]

API = "/api/2.0/mlflow"
MAX_RESPONSE_BYTES = 1 << 20
"""The most of one answer read; a longer one is an error (``oversize``)."""
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class RegistryError(Exception):
    """A registry call that failed: the registry's refusal (``status`` 4xx with MLflow's
    ``error_code``) or no usable answer after the retries (``status`` None or 5xx)."""

    def __init__(self, message: str, status: int | None = None, error_code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


@dataclass(frozen=True)
class ModelVersion:
    """The fields of an MLflow ``ModelVersion`` that shadowroute reads."""

    name: str
    version: str
    run_id: str
    source: str
    status: str
    aliases: tuple[str, ...]
    tags: Mapping[str, str]

    @classmethod
    def of(cls, doc: Any) -> ModelVersion:
        if not isinstance(doc, dict) or not isinstance(doc.get("version"), str):
            raise RegistryError(f"the registry's answer has no model_version: {_short(doc)}")
        tags: list[Any] = doc["tags"] if isinstance(doc.get("tags"), list) else []
        aliases: list[Any] = doc["aliases"] if isinstance(doc.get("aliases"), list) else []
        return cls(
            name=str(doc.get("name", "")),
            version=doc["version"],
            run_id=str(doc.get("run_id") or ""),
            source=str(doc.get("source") or ""),
            status=str(doc.get("status") or ""),
            aliases=tuple(str(a) for a in aliases),
            tags={
                str(t["key"]): str(t.get("value", ""))
                for t in tags
                if isinstance(t, dict) and "key" in t
            },
        )


def _short(doc: Any, limit: int = 200) -> str:
    text = doc if isinstance(doc, str) else repr(doc)
    return text if len(text) <= limit else text[:limit] + "…"


class MlflowClient:
    """One connection pool to one tracking server; ``aclose()`` (or ``async with``) ends it."""

    def __init__(
        self,
        tracking_uri: str,
        token: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        stats: RequestStats | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "shadowroute"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base = tracking_uri.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base + API,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
        )
        self.retries = retries
        self.backoff_s = backoff_s
        self.stats = stats or RequestStats()

    async def __aenter__(self) -> MlflowClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- the endpoints ------------------------------------------------------------------

    async def get_model_version(self, name: str, version: str) -> ModelVersion:
        doc = await self._call("GET", "/model-versions/get", {"name": name, "version": version})
        return ModelVersion.of(doc.get("model_version"))

    async def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        doc = await self._call("GET", "/registered-models/alias", {"name": name, "alias": alias})
        return ModelVersion.of(doc.get("model_version"))

    async def get_aliases(self, name: str) -> dict[str, str]:
        """A registered model's aliases: {alias: version}."""
        doc = await self._call("GET", "/registered-models/get", {"name": name})
        model = doc.get("registered_model")
        items = model.get("aliases") if isinstance(model, dict) else None
        return {
            str(a["alias"]): str(a.get("version", ""))
            for a in items or []
            if isinstance(a, dict) and "alias" in a
        }

    async def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        body = {"name": name, "version": version, "key": key, "value": value}
        await self._call("POST", "/model-versions/set-tag", body)

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        body = {"name": name, "alias": alias, "version": version}
        await self._call("POST", "/registered-models/alias", body)

    async def delete_alias(self, name: str, alias: str) -> None:
        await self._call("DELETE", "/registered-models/alias", {"name": name, "alias": alias})

    # --- one call, with its retries -----------------------------------------------------

    async def _call(self, method: str, path: str, payload: Mapping[str, str]) -> dict[str, Any]:
        what = f"{method} {self.base}{API}{path}"
        attempt = 0
        while True:
            status: int | None = None
            try:
                code_got, body = await self._send(method, path, payload)
            except httpx.TransportError as exc:
                problem = f"{what}: {type(exc).__name__}: {exc or 'no answer'}"
            except _Oversize:
                self.stats.calls["oversize"] += 1
                raise RegistryError(
                    f"{what}: the answer is over {MAX_RESPONSE_BYTES} bytes"
                ) from None
            else:
                status = code_got
                if status < 300:
                    self.stats.calls["ok"] += 1
                    return _json_object(body, what)
                code, message = _mlflow_error(body)
                problem = f"{what}: {status} {code or ''} {message}".rstrip()
                if status not in RETRY_STATUS:
                    self.stats.calls["refused"] += 1
                    raise RegistryError(problem, status, code)
            if attempt >= self.retries:
                self.stats.calls["failed"] += 1
                raise RegistryError(f"{problem} (after {attempt + 1} attempts)", status)
            delay = self.backoff_s * (2**attempt)
            attempt += 1
            self.stats.retries += 1
            log.warning(
                "registry: %s; retry %d of %d in %.1fs", problem, attempt, self.retries, delay
            )
            await asyncio.sleep(delay)

    async def _send(self, method: str, path: str, payload: Mapping[str, str]) -> tuple[int, bytes]:
        if method == "GET":
            request = self._http.build_request(method, path, params=dict(payload))
        else:
            request = self._http.build_request(method, path, content=orjson.dumps(payload))
            request.headers["Content-Type"] = "application/json"
        response = await self._http.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise _Oversize
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise _Oversize
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)
        finally:
            await response.aclose()


class _Oversize(Exception):
    pass


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        raise RegistryError(
            f"{what}: the answer is not JSON: {_short(body.decode(errors='replace'))}"
        ) from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what}: the answer is not a JSON object: {_short(doc)}")
    return doc


def _mlflow_error(body: bytes) -> tuple[str, str]:
    """MLflow's ``error_code`` and ``message`` of a refusal (or the start of the body)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", _short(body.decode(errors="replace").strip())
    if isinstance(doc, dict):
        return str(doc.get("error_code") or ""), _short(str(doc.get("message") or doc), 500)
    return "", _short(doc)
