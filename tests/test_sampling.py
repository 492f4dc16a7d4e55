"""Mirror sampling is a contract across workers, replicas and versions: the point a request id
maps to must never change, or a rolling upgrade would mirror a different set of requests."""

from __future__ import annotations

import pytest

from shadowroute.core.sampling import is_sampled, sample_point


@pytest.mark.parametrize(
    ("request_id", "point"),
    [
        (b"req-1", 0.016713432581392337),
        (b"3f1c9b6e-2a4d-4e8b-9c7f-1a2b3c4d5e6f", 0.2960291912871345),
        (b"a", 0.25379361057584854),
    ],
)
def test_points_are_pinned(request_id: bytes, point: float) -> None:
    assert sample_point(request_id) == point


def test_fractions_nest() -> None:
    ids = [b"req-%d" % i for i in range(2000)]
    at_20 = {r for r in ids if is_sampled(r, 0.2)}
    at_50 = {r for r in ids if is_sampled(r, 0.5)}
    assert at_20 <= at_50
    assert all(is_sampled(r, 1.0) for r in ids)
    assert not any(is_sampled(r, 0.0) for r in ids)
