"""The on-disk spool: order, cursor persistence, bounds, torn tails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowroute.core.config import Spool as SpoolConfig
from shadowroute.stream.spool import Position, Spool, encode_frame


@pytest.fixture
def spool() -> Iterator[Callable[..., Spool]]:
    opened: list[Spool] = []

    def make(*args: Any, **kwargs: Any) -> Spool:
        opened.append(Spool(*args, **kwargs))
        return opened[-1]

    yield make
    for sp in opened:
        sp.close()


def _recs(n: int, start: int = 0, size: int = 20) -> list[tuple[bytes, bytes]]:
    return [
        (f"id-{i}".encode(), (f"v{i}-".encode() * size)[:size]) for i in range(start, start + n)
    ]


def _drain(sp: Spool, batch: int = 7) -> list[tuple[bytes, bytes]]:
    got: list[tuple[bytes, bytes]] = []
    for _ in range(100_000):
        recs, pos = sp.read(batch)
        if not recs:
            sp.commit(pos)
            break
        got += recs
        sp.commit(pos)
    return got


@pytest.mark.parametrize("fsync", ["never", "segment", "always"])
def test_round_trip_in_order_across_segments(
    tmp_path: Path, spool: Callable[..., Spool], fsync: str
) -> None:
    sp = spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16, fsync=fsync)
    recs = _recs(5000, size=40)
    assert sp.append(recs) == 5000
    assert len(list(tmp_path.glob("*.seg"))) > 2
    assert sp and sp.pending_bytes == sum(len(encode_frame(k, v)) for k, v in recs)
    assert _drain(sp) == recs
    assert not sp and sp.pending_bytes == 0
    assert len(list(tmp_path.glob("*.seg"))) <= 1  # drained segments are deleted
    sp.close()


def test_read_does_not_consume_until_commit(tmp_path: Path, spool: Callable[..., Spool]) -> None:
    sp = spool(tmp_path)
    sp.append(_recs(10))
    first, pos = sp.read(4)
    again, pos2 = sp.read(4)
    assert first == again == _recs(4) and pos == pos2
    sp.commit(pos)
    nxt, _ = sp.read(100)
    assert nxt == _recs(6, start=4)
    sp.commit(Position(0, 0))  # a position behind the cursor is ignored
    assert sp.read(100)[0] == _recs(6, start=4)


def test_cursor_survives_restart_and_resumes(tmp_path: Path, spool: Callable[..., Spool]) -> None:
    sp = spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16)
    sp.append(_recs(3000))
    _, pos = sp.read(1234)
    sp.commit(pos)
    sp.close()  # no further commit: what was read but not committed must come back

    sp2 = spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16)
    sp2.append(_recs(10, start=3000))
    assert _drain(sp2) == _recs(3000 - 1234, start=1234) + _recs(10, start=3000)
    sp2.close()
    sp3 = spool(tmp_path)
    assert not sp3 and sp3.read(10)[0] == []


def test_torn_tail_is_truncated(tmp_path: Path, spool: Callable[..., Spool]) -> None:
    sp = spool(tmp_path)
    sp.append(_recs(50))
    sp.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    whole = seg.stat().st_size
    frame = encode_frame(b"id-torn", b"x" * 100)
    with seg.open("ab") as f:
        f.write(frame[:-7])  # crash mid-write
    sp2 = spool(tmp_path)
    assert seg.stat().st_size == whole
    assert sp2.corrupt_bytes == len(frame) - 7
    sp2.append([(b"after", b"crash")])
    assert _drain(sp2) == [*_recs(50), (b"after", b"crash")]


def test_bad_crc_in_tail_is_truncated(tmp_path: Path, spool: Callable[..., Spool]) -> None:
    sp = spool(tmp_path)
    sp.append(_recs(5))
    sp.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # flip a byte of the last record's value
    seg.write_bytes(bytes(data))
    sp2 = spool(tmp_path)
    assert _drain(sp2) == _recs(4)
    assert sp2.corrupt_bytes > 0


def test_drop_newest_when_full(tmp_path: Path, spool: Callable[..., Spool]) -> None:
    sp = spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16, when_full="drop_newest")
    frame = len(encode_frame(*_recs(1, size=1000)[0]))
    n = 2 * (1 << 20) // frame
    accepted = sp.append(_recs(n, size=1000))
    assert accepted < n
    assert sp.dropped == n - accepted
    assert sp.size_bytes <= 1 << 20
    assert _drain(sp, batch=500) == _recs(accepted, size=1000)  # the oldest are kept


def test_drop_oldest_when_full(tmp_path: Path, spool: Callable[..., Spool]) -> None:
    sp = spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16, when_full="drop_oldest")
    n = 3000
    recs = _recs(n, size=1000)
    assert sp.append(recs) == n
    assert sp.size_bytes <= 1 << 20
    assert sp.dropped > 0
    got = _drain(sp, batch=500)
    assert len(got) == n - sp.dropped
    assert got == recs[sp.dropped :]  # the newest are kept, in order


def test_drop_oldest_moves_cursor_of_partly_drained_segment(
    tmp_path: Path, spool: Callable[..., Spool]
) -> None:
    sp = spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16, when_full="drop_oldest")
    sp.append(_recs(10, size=1000))
    _, pos = sp.read(3)
    sp.commit(pos)
    sp.append(_recs(2000, start=10, size=1000))
    got = _drain(sp, batch=300)
    assert got == _recs(2010, size=1000)[-len(got) :]
    assert len(got) + 3 + sp.dropped == 2010


def test_from_config_and_subdir(tmp_path: Path) -> None:
    cfg = SpoolConfig(path=str(tmp_path), fsync="always", when_full="drop_oldest")
    with Spool.from_config(cfg, "demo.pairs") as sp:
        assert sp.path == tmp_path / "demo.pairs" and sp.fsync == "always"
        assert sp.when_full == "drop_oldest" and sp.max_bytes == cfg.max_bytes


def test_large_record_bigger_than_read_chunk(tmp_path: Path, spool: Callable[..., Spool]) -> None:
    sp = spool(tmp_path, max_bytes=8 << 20)
    big = (b"big", b"z" * (300 << 10))
    sp.append([(b"a", b"1"), big, (b"b", b"2")])
    assert _drain(sp, batch=1) == [(b"a", b"1"), big, (b"b", b"2")]
