"""The murmur2 partitioner matches the Java client (published values and aiokafka's port)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as oracle_murmur2

from shadowroute.stream.murmur2 import (
    SCALAR_MAX_KEYS,
    murmur2,
    murmur2_batch,
    murmur2_unsigned,
    partition_for,
    partition_list,
    partitions_for,
)

# Utils.murmur2 values from Kafka's UtilsTest (Java, signed ints).
JAVA_VALUES = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _signed(u: int) -> int:
    return u - (1 << 32) if u >= 1 << 31 else u


@pytest.mark.parametrize(("key", "expected"), sorted(JAVA_VALUES.items()))
def test_published_java_values(key: bytes, expected: int) -> None:
    assert _signed(oracle_murmur2(key)) == expected  # the oracle agrees with Java
    assert murmur2(key) == expected
    assert int(murmur2_batch([key]).view(np.int32)[0]) == expected


def _random_keys(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [os.urandom(rng.randrange(0, 70)) for _ in range(n)]


def test_scalar_matches_oracle_on_random_keys() -> None:
    for key in _random_keys(2000, 1):
        assert murmur2(key) == _signed(oracle_murmur2(key)), key


def test_batch_matches_scalar_mixed_lengths() -> None:
    keys = [*_random_keys(3000, 2), b"", b"a", b"ab", b"abc", b"abcd"]
    got = murmur2_batch(keys)
    assert got.dtype == np.uint32
    assert [int(x) for x in got] == [oracle_murmur2(k) for k in keys]


def test_batch_uniform_length_ids() -> None:
    keys = [os.urandom(16).hex().encode() for _ in range(5000)]
    assert [int(x) for x in murmur2_batch(keys)] == [oracle_murmur2(k) for k in keys]


@pytest.mark.parametrize("num_partitions", [1, 2, 3, 6, 7, 64, 1000])
def test_partitions_match_default_partitioner(num_partitions: int) -> None:
    keys = _random_keys(1500, num_partitions)
    parts = list(range(num_partitions))
    expected = [DefaultPartitioner()(k, parts, parts) for k in keys]
    assert partitions_for(keys, num_partitions).tolist() == expected
    assert [partition_for(k, num_partitions) for k in keys] == expected


def test_empty_batch_and_bad_partition_count() -> None:
    assert partitions_for([], 3).shape == (0,)
    with pytest.raises(ValueError):
        partitions_for([b"x"], 0)
    with pytest.raises(ValueError):
        partition_for(b"x", 0)


def test_unsigned_scalar_matches_oracle_including_long_keys() -> None:
    keys = [*_random_keys(500, 3), os.urandom(300), os.urandom(1027), b""]
    for key in keys:
        assert murmur2_unsigned(key) == oracle_murmur2(key), key


@pytest.mark.parametrize("n", [0, 1, 2, SCALAR_MAX_KEYS, SCALAR_MAX_KEYS + 1, 200])
@pytest.mark.parametrize("num_partitions", [1, 6, 1000])
def test_partition_list_small_and_large_batches(n: int, num_partitions: int) -> None:
    """The scalar path (small batches) and the numpy path give the default partitioner's."""
    keys = [*(os.urandom(16).hex().encode() for _ in range(n // 2)), *_random_keys(n - n // 2, n)]
    parts = list(range(num_partitions))
    expected = [DefaultPartitioner()(k, parts, parts) for k in keys]
    got = partition_list(keys, num_partitions)
    assert got == expected
    assert all(type(p) is int for p in got)


def test_partition_list_bad_partition_count() -> None:
    with pytest.raises(ValueError):
        partition_list([b"x"], 0)
    with pytest.raises(ValueError):
        partition_list([b"x"] * (SCALAR_MAX_KEYS + 1), 0)
