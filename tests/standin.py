"""An aiohttp app on a free loopback port, the base of the tests' OpenAI-compatible stand-ins
(``openai_upstreams``, ``judge_upstreams``)."""

from __future__ import annotations

from typing import Self

from aiohttp import web


class StandIn:
    """``start()`` serves ``routes()`` on 127.0.0.1 (a free port), ``url`` says where,
    ``stop()`` closes it."""

    port = 0
    _runner: web.AppRunner | None = None

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
