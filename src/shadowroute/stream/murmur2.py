"""Kafka's default key partitioner: ``toPositive(murmur2(key)) % numPartitions``.

The same function as the Java client's ``Utils.murmur2`` (seed 0x9747b28c), so a record keyed
by a request id lands on the partition any Kafka client with the default partitioner would pick.
``murmur2`` is the scalar form; ``murmur2_batch`` hashes many keys at once with numpy, grouping
keys by length so each group is one 2-D array of little-endian 32-bit words. numpy has a fixed
cost of some tens of µs per call, so ``partition_list`` hashes batches of up to
``SCALAR_MAX_KEYS`` keys one by one and larger ones with numpy.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

SEED = 0x9747B28C
M = 0x5BD1E995
_MASK = 0xFFFFFFFF
SCALAR_MAX_KEYS = 8
"""Batches up to this many keys are hashed without numpy (cheaper below about 10 keys)."""


_WORD_FORMATS = tuple(f"<{n}I" for n in range(65))
"""struct formats for keys of up to 256 bytes (``struct`` keeps the compiled forms)."""


def murmur2_unsigned(data: bytes) -> int:
    """The Java client's murmur2 of ``data`` as an unsigned 32-bit int."""
    length = len(data)
    h = SEED ^ length
    n4 = length & ~3
    words = n4 >> 2
    fmt = _WORD_FORMATS[words] if words < len(_WORD_FORMATS) else f"<{words}I"
    for k in struct.unpack_from(fmt, data):
        k = (k * M) & _MASK
        k ^= k >> 24
        # (h*M mod 2^32) ^ (k*M mod 2^32) == (h*M ^ k*M) mod 2^32
        h = ((h * M) ^ (k * M)) & _MASK
    extra = length & 3
    if extra:
        if extra >= 3:
            h ^= data[n4 + 2] << 16
        if extra >= 2:
            h ^= data[n4 + 1] << 8
        h ^= data[n4]
        h = (h * M) & _MASK
    h ^= h >> 13
    h = (h * M) & _MASK
    h ^= h >> 15
    return h


def murmur2(data: bytes) -> int:
    """The Java client's murmur2 of ``data`` as a signed 32-bit int (as Java returns it)."""
    h = murmur2_unsigned(data)
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, num_partitions: int) -> int:
    """The default partitioner's choice for one key."""
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    return (murmur2_unsigned(key) & 0x7FFFFFFF) % num_partitions


def _hash_group(keys: Sequence[bytes], length: int) -> npt.NDArray[np.uint32]:
    """murmur2 (unsigned) of equal-length keys, vectorised over the keys."""
    n = len(keys)
    m = np.uint32(M)
    h = np.full(n, (SEED ^ length) & _MASK, dtype=np.uint32)
    if length == 0:
        raw = np.zeros((n, 0), dtype=np.uint8)
    else:
        raw = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(n, length)
    n4 = length & ~3
    if n4:
        # The per-word mixing of k is independent of h: do it for all words at once, then
        # fold the words into h in order (one column at a time).
        k = np.ascontiguousarray(raw[:, :n4]).view("<u4").astype(np.uint32)
        k *= m
        k ^= k >> np.uint32(24)
        k *= m
        for j in range(n4 // 4):
            h *= m
            h ^= k[:, j]
    extra = length & 3
    if extra >= 3:
        h ^= raw[:, n4 + 2].astype(np.uint32) << np.uint32(16)
    if extra >= 2:
        h ^= raw[:, n4 + 1].astype(np.uint32) << np.uint32(8)
    if extra >= 1:
        h ^= raw[:, n4].astype(np.uint32)
        h *= m
    h ^= h >> np.uint32(13)
    h *= m
    h ^= h >> np.uint32(15)
    return h


def murmur2_batch(keys: Sequence[bytes]) -> npt.NDArray[np.uint32]:
    """murmur2 of every key, as unsigned 32-bit values (``.view(np.int32)`` gives Java's)."""
    out = np.empty(len(keys), dtype=np.uint32)
    if not keys:
        return out
    first = len(keys[0])
    if all(len(k) == first for k in keys):
        out[:] = _hash_group(keys, first)
        return out
    groups: defaultdict[int, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[len(k)].append(i)
    for length, idx in groups.items():
        out[np.asarray(idx, dtype=np.intp)] = _hash_group([keys[i] for i in idx], length)
    return out


def partitions_for(keys: Sequence[bytes], num_partitions: int) -> npt.NDArray[np.int64]:
    """The default partitioner's choice for each key, as an int64 array."""
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    h = murmur2_batch(keys) & np.uint32(0x7FFFFFFF)
    return (h % np.uint32(num_partitions)).astype(np.int64)


def partition_list(keys: Sequence[bytes], num_partitions: int) -> list[int]:
    """``partitions_for`` as a list, without numpy for small batches (same values)."""
    if len(keys) > SCALAR_MAX_KEYS:
        return partitions_for(keys, num_partitions).tolist()  # type: ignore[no-any-return]
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    return [(murmur2_unsigned(k) & 0x7FFFFFFF) % num_partitions for k in keys]
