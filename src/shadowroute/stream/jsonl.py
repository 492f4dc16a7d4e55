"""A rotating JSON-lines file sink: one record per line, files rotated by size."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from shadowroute.stream.sink import KeyValue


class JsonlSink:
    """Appends record values to ``<dir>/pairs.jsonl``; at ``max_bytes`` the file becomes
    ``pairs.1.jsonl`` (older ones shift up) and at most ``keep`` rotated files are kept."""

    def __init__(
        self, directory: str | Path, *, max_bytes: int, keep: int, name: str = "pairs"
    ) -> None:
        self.dir = Path(directory)
        self.name = name
        self.max_bytes = max_bytes
        self.keep = keep
        self._fh: BinaryIO | None = None
        self._size = 0

    @property
    def path(self) -> Path:
        return self.dir / f"{self.name}.jsonl"

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        self._fh = open(self.path, "ab")  # noqa: SIM115 - held open for the sink's lifetime
        self._size = self._fh.tell()

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.close()
        for i in range(self.keep - 1, 0, -1):
            src = self.dir / f"{self.name}.{i}.jsonl"
            if src.exists():
                os.replace(src, self.dir / f"{self.name}.{i + 1}.jsonl")
        os.replace(self.path, self.dir / f"{self.name}.1.jsonl")
        self._open()

    def _write(self, batch: Sequence[KeyValue]) -> None:
        assert self._fh is not None
        data = b"".join(v + b"\n" for _, v in batch)
        self._fh.write(data)
        self._fh.flush()
        self._size += len(data)
        if self._size >= self.max_bytes:
            self._rotate()

    async def write(self, batch: Sequence[KeyValue]) -> None:
        await asyncio.to_thread(self._write, batch)

    async def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
