"""A real webhook receiver for the events tests: an aiohttp server on loopback that verifies
each delivery's Standard Webhooks signature itself (from the specification, not with
shadowroute's signer) and records what it got."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: float = 300) -> bool:
    """Standard Webhooks verification: the key is the base64 after ``whsec_``; the signed
    content ``{webhook-id}.{webhook-timestamp}.{body}``; ``webhook-signature`` holds one or
    more space-separated ``v1,<base64>``; the timestamp must be recent."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > tolerance_s:
        return False
    content = msg_id.encode() + b"." + ts.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    for sig in headers["webhook-signature"].split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    valid: bool

    @property
    def doc(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    secret: str
    status: Callable[[int], int] = lambda attempt: 200
    """The status to answer the n-th request (1, 2, ...) with."""
    got: list[Delivery] = field(default_factory=list)
    accepted: dict[str, Delivery] = field(default_factory=dict)
    """Deliveries answered 2xx, by ``webhook-id`` (the idempotency key: a repeat is one)."""
    _runner: web.AppRunner | None = None
    port: int = 0

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        d = Delivery(headers, body, verify(self.secret, headers, body))
        self.got.append(d)
        if not d.valid:
            return web.Response(status=401)
        status = self.status(len(self.got))
        if 200 <= status < 300:
            self.accepted.setdefault(headers["webhook-id"], d)
        return web.Response(status=status, text="busy" if status >= 500 else "")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def of_type(self, kind: str) -> list[Delivery]:
        return [d for d in self.got if d.valid and d.doc.get("type") == kind]
