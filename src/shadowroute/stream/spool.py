"""A bounded on-disk spool of (key, value) records: what a sink keeps while its broker is away.

Layout of the spool folder:

- ``<16-digit id>.seg`` — append-only segment files of frames
  ``key_len:u32 | value_len:u32 | crc32:u32 | key | value`` (little-endian; the CRC covers both
  lengths, the key and the value). A new segment starts when the current one reaches
  ``segment_bytes`` and at every open.
- ``cursor`` — where draining resumes: ``segment id:u64 | offset:u64 | crc32:u32``, replaced
  atomically (write, optional fsync, rename). ``commit`` moves it forward after the broker has
  acknowledged what ``read`` returned, and deletes fully drained segments.

``fsync``: ``never`` leaves flushing to the OS; ``segment`` fsyncs a segment when it is sealed,
the cursor on commit, and everything on close; ``always`` also fsyncs after every ``append``.
When ``max_bytes`` would be exceeded, ``drop_newest`` refuses the new records and
``drop_oldest`` deletes the oldest whole segment (drained or not); both count what they drop.
A torn tail frame (a crash mid-write) is found by its length / CRC on open and truncated away.

Pure synchronous file I/O, one owner at a time: no locking between processes.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from shadowroute.core.config import Spool as SpoolConfig

KeyValue = tuple[bytes, bytes]
FsyncPolicy = Literal["never", "segment", "always"]
WhenFull = Literal["drop_newest", "drop_oldest"]

_HEADER = struct.Struct("<III")
_CURSOR = struct.Struct("<QQI")
_SUFFIX = ".seg"
MAX_KEY = 1 << 16
MAX_VALUE = 64 << 20


@dataclass(frozen=True, order=True)
class Position:
    """A place in the spool: a segment id and a byte offset in it."""

    segment: int
    offset: int


def encode_frame(key: bytes, value: bytes) -> bytes:
    lengths = struct.pack("<II", len(key), len(value))
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(lengths)))
    return _HEADER.pack(len(key), len(value), crc) + key + value


def _parse(buf: bytes, start: int) -> tuple[KeyValue | None, int]:
    """Decode one frame at ``start``; (record, next offset), or (None, start) if there is no
    complete valid frame there."""
    end_header = start + _HEADER.size
    if end_header > len(buf):
        return None, start
    klen, vlen, crc = _HEADER.unpack_from(buf, start)
    if klen > MAX_KEY or vlen > MAX_VALUE:
        return None, start
    end = end_header + klen + vlen
    if end > len(buf):
        return None, start
    lengths = struct.pack("<II", klen, vlen)
    key = buf[end_header : end_header + klen]
    value = buf[end_header + klen : end]
    if zlib.crc32(value, zlib.crc32(key, zlib.crc32(lengths))) != crc:
        return None, start
    return (key, value), end


class SpoolError(RuntimeError):
    """The spool folder cannot be used (not writable, not a folder)."""


class Spool:
    """Bounded, segmented, crash-tolerant record spool. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        fsync: FsyncPolicy = "segment",
        when_full: WhenFull = "drop_newest",
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        # A segment is at most a quarter of the spool, so drop_oldest never drops everything.
        self.segment_bytes = max(_HEADER.size, min(segment_bytes, max_bytes // 4))
        self.fsync = fsync
        self.when_full = when_full
        self.appended = 0
        """Records accepted by ``append`` since open."""
        self.dropped = 0
        """Records lost to ``max_bytes`` (refused, or deleted with an oldest segment)."""
        self.corrupt_bytes = 0
        """Bytes discarded because they did not hold valid frames (torn tail, damage)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool folder {self.path}: {exc}") from exc
        self._sizes: dict[int, int] = {}
        self._writer: BinaryIO | None = None
        self._writer_id = 0
        self._cursor = self._load_cursor()
        self._recover()

    @classmethod
    def from_config(cls, cfg: SpoolConfig, subdir: str | None = None) -> Spool:
        path = Path(cfg.path) / subdir if subdir else Path(cfg.path)
        return cls(
            path,
            max_bytes=cfg.max_bytes,
            segment_bytes=cfg.segment_bytes,
            fsync=cfg.fsync,
            when_full=cfg.when_full,
        )

    # --- state -----------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes in live segment files (drained parts of the first one included)."""
        return sum(self._sizes.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes not yet drained (committed)."""
        return self.size_bytes - self._cursor.offset if self._sizes else 0

    def __bool__(self) -> bool:
        return self.pending_bytes > 0

    @property
    def cursor(self) -> Position:
        return self._cursor

    def _seg_path(self, seg: int) -> Path:
        return self.path / f"{seg:016d}{_SUFFIX}"

    # --- open / recovery -------------------------------------------------------------------

    def _load_cursor(self) -> Position:
        try:
            raw = (self.path / "cursor").read_bytes()
        except FileNotFoundError:
            return Position(0, 0)
        if len(raw) == _CURSOR.size:
            seg, off, crc = _CURSOR.unpack(raw)
            if zlib.crc32(raw[:16]) == crc:
                return Position(seg, off)
        # A damaged cursor: start from the oldest segment (may re-send, never loses).
        return Position(0, 0)

    def _recover(self) -> None:
        ids = sorted(
            int(p.name[: -len(_SUFFIX)])
            for p in self.path.glob(f"*{_SUFFIX}")
            if p.name[: -len(_SUFFIX)].isdigit()
        )
        for seg in ids:
            if seg < self._cursor.segment:
                self._seg_path(seg).unlink(missing_ok=True)
            else:
                self._sizes[seg] = self._seg_path(seg).stat().st_size
        if not self._sizes:
            self._cursor = Position(ids[-1] + 1 if ids else self._cursor.segment, 0)
        elif self._cursor.segment not in self._sizes:
            self._cursor = Position(min(self._sizes), 0)
        if self._sizes:
            last = max(self._sizes)
            start = self._cursor.offset if last == self._cursor.segment else 0
            self._truncate_torn_tail(last, start)
        self._writer_id = max(self._sizes, default=self._cursor.segment)
        if self._cursor.offset > self._sizes.get(self._cursor.segment, 0):
            self._cursor = Position(self._cursor.segment, self._sizes.get(self._cursor.segment, 0))

    def _truncate_torn_tail(self, seg: int, start: int) -> None:
        path = self._seg_path(seg)
        data = path.read_bytes()
        pos = min(start, len(data))
        while pos < len(data):
            rec, nxt = _parse(data, pos)
            if rec is None:
                break
            pos = nxt
        if pos < len(data):
            self.corrupt_bytes += len(data) - pos
            with path.open("r+b") as f:
                f.truncate(pos)
                f.flush()
                if self.fsync != "never":
                    os.fsync(f.fileno())
            self._sizes[seg] = pos

    # --- writing ---------------------------------------------------------------------------

    def _seal(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            if self.fsync != "never":
                os.fsync(self._writer.fileno())
            self._writer.close()
            self._writer = None

    def _open_writer(self) -> BinaryIO:
        if self._writer is None:
            self._writer_id += 1
            self._writer = self._seg_path(self._writer_id).open("ab")
            self._sizes[self._writer_id] = 0
            if not self.pending_bytes and self._cursor.segment < self._writer_id:
                self._advance_cursor_to(Position(self._writer_id, 0))
        return self._writer

    def _drop_oldest_segment(self) -> None:
        oldest = min(self._sizes)
        if oldest == self._writer_id:
            self._seal()
        start = self._cursor.offset if oldest == self._cursor.segment else 0
        data = self._seg_path(oldest).read_bytes()
        pos = start
        while True:
            rec, nxt = _parse(data, pos)
            if rec is None:
                break
            self.dropped += 1
            pos = nxt
        self._seg_path(oldest).unlink(missing_ok=True)
        del self._sizes[oldest]
        if oldest == self._cursor.segment:
            nxt_seg = min(self._sizes, default=self._writer_id + 1)
            self._advance_cursor_to(Position(nxt_seg, 0))

    def append(self, records: Sequence[KeyValue]) -> int:
        """Append records in order; return how many were accepted (the rest dropped)."""
        accepted = 0
        writer: BinaryIO | None = None
        for i, (key, value) in enumerate(records):
            frame = encode_frame(key, value)
            if len(frame) > self.max_bytes // 4:
                self.dropped += 1
                continue
            while self.size_bytes + len(frame) > self.max_bytes:
                if self.when_full == "drop_newest" or not self._sizes:
                    self.dropped += len(records) - i
                    self._finish_append(writer)
                    self.appended += accepted
                    return accepted
                self._drop_oldest_segment()
                writer = None
            if self._writer is not None and self._sizes[self._writer_id] >= self.segment_bytes:
                self._seal()
                writer = None
            writer = self._open_writer()
            writer.write(frame)
            self._sizes[self._writer_id] += len(frame)
            accepted += 1
        self._finish_append(writer)
        self.appended += accepted
        return accepted

    def _finish_append(self, writer: BinaryIO | None) -> None:
        if self._writer is not None:
            self._writer.flush()
            if self.fsync == "always":
                os.fsync(self._writer.fileno())

    # --- reading ---------------------------------------------------------------------------

    def read(
        self, max_records: int = 1000, max_bytes: int = 1 << 20, start: Position | None = None
    ) -> tuple[list[KeyValue], Position]:
        """Up to ``max_records`` records (about ``max_bytes``) from ``start`` (default: the
        committed cursor), and the position after them. Reading does not consume: ``commit``
        does."""
        pos = start or self._cursor
        out: list[KeyValue] = []
        used = 0
        while len(out) < max_records and used < max_bytes:
            size = self._sizes.get(pos.segment)
            if size is None or pos.offset >= size:
                later = [s for s in self._sizes if s > pos.segment]
                if not later:
                    break
                pos = Position(min(later), 0)
                continue
            with self._seg_path(pos.segment).open("rb") as f:
                f.seek(pos.offset)
                buf = f.read(min(size - pos.offset, max(max_bytes - used, 1 << 16)))
                off = 0
                while off < len(buf) and len(out) < max_records and used < max_bytes:
                    rec, nxt = _parse(buf, off)
                    if rec is None:
                        break
                    out.append(rec)
                    used += nxt - off
                    off = nxt
                if off == 0:
                    # No whole frame in what was read: one larger frame, or damage.
                    rec, off = self._read_one(f, pos, size)
                    if rec is None:
                        self._discard_rest(pos)
                        continue
                    out.append(rec)
                    used += off
            pos = Position(pos.segment, pos.offset + off)
        return out, pos

    def _read_one(self, f: BinaryIO, pos: Position, size: int) -> tuple[KeyValue | None, int]:
        f.seek(pos.offset)
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return None, 0
        klen, vlen, _ = _HEADER.unpack(header)
        length = _HEADER.size + klen + vlen
        if klen > MAX_KEY or vlen > MAX_VALUE or pos.offset + length > size:
            return None, 0
        rec, nxt = _parse(header + f.read(length - _HEADER.size), 0)
        return rec, nxt

    def _discard_rest(self, pos: Position) -> None:
        """The segment holds no valid frame at ``pos``: skip the rest of it (counted)."""
        self.corrupt_bytes += self._sizes[pos.segment] - pos.offset
        if pos.segment == self._writer_id:
            self._seal()
        self._sizes[pos.segment] = pos.offset

    def commit(self, pos: Position) -> None:
        """Mark everything before ``pos`` as delivered: persist the cursor, delete drained
        segments. Positions behind the cursor (e.g. their segment was dropped) are ignored."""
        if pos <= self._cursor:
            return
        self._advance_cursor_to(pos)

    def _advance_cursor_to(self, pos: Position) -> None:
        self._cursor = pos
        raw = struct.pack("<QQ", pos.segment, pos.offset)
        tmp = self.path / "cursor.tmp"
        with tmp.open("wb") as f:
            f.write(raw + struct.pack("<I", zlib.crc32(raw)))
            f.flush()
            if self.fsync != "never":
                os.fsync(f.fileno())
        os.replace(tmp, self.path / "cursor")
        for seg in [s for s in self._sizes if s < pos.segment]:
            if seg == self._writer_id:
                self._seal()
            self._seg_path(seg).unlink(missing_ok=True)
            del self._sizes[seg]

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the open segment (fsync unless the policy is ``never``)."""
        self._seal()
        if self.fsync != "never":
            with contextlib.suppress(OSError):
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
