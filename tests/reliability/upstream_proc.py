"""Model servers with named behaviours in their own process, so that a faulty upstream's own
work does not share the event loop (or the core) with the proxy under measurement.

``python upstream_proc.py NAME...`` starts one server per name on loopback, prints one JSON
line ``{"NAME": port, ...}`` and serves until stdin closes. ``UpstreamProcess`` wraps that
for tests.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve()
HERE = SCRIPT.parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from relhelp import HalfThenAbortServer  # noqa: E402

from upstreams import ModelServer, Reply, kserve_reply  # noqa: E402

HUGE_BYTES = (16 << 20) + (1 << 20)
_HUGE_BODY = b'{"predictions": [1], "pad": "' + b"x" * HUGE_BYTES + b'"}'


def _behaviour(name: str) -> object:
    def fixed(reply: Reply) -> object:
        return lambda seen: reply

    table = {
        "prod": kserve_reply,
        "healthy": kserve_reply,
        "hang_1s": lambda seen: Reply(
            delay=1.0, body=kserve_reply(seen).body, headers=kserve_reply(seen).headers
        ),
        "hang_30s": lambda seen: Reply(delay=30.0, body=b'{"predictions": [1]}'),
        "http_5xx": fixed(Reply(status=503, body=b'{"error": "overloaded"}')),
        "invalid_json": fixed(
            Reply(body=b'{"predictions": [1,', headers=[(b"content-type", b"application/json")])
        ),
        "huge": fixed(Reply(body=_HUGE_BODY, headers=[(b"content-type", b"application/json")])),
        "trickle": fixed(Reply(chunks=[b"x"] * 600, chunk_gap=0.1)),
    }
    return table[name]


async def _main(names: list[str]) -> None:
    ports: dict[str, int] = {}
    servers: list[ModelServer | HalfThenAbortServer] = []
    for name in names:
        if name == "reset_mid":
            half = await HalfThenAbortServer().start()
            servers.append(half)
            ports[name] = int(half.url.rsplit(":", 1)[1])
        else:
            ms = await ModelServer(_behaviour(name)).start()  # type: ignore[arg-type]
            servers.append(ms)
            ports[name] = ms.port
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    for s in servers:
        await s.stop()


class UpstreamProcess:
    """Start ``upstream_proc.py`` with the given behaviours; ``urls[name]`` once started."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.urls: dict[str, str] = {}
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> UpstreamProcess:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            *self.names,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 30)
        ports = json.loads(line)
        self.urls = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
