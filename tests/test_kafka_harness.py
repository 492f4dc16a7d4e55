"""The broker harness's own logic (no broker started here)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

from kafka_harness import kb


def test_cluster_ids_never_start_with_a_dash() -> None:
    # 0xF8 encodes to "-" first in URL-safe base64: the storage tool took it for an option.
    dash = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=b"\x00" + bytes(15))
    assert base64.urlsafe_b64encode(dash.bytes).decode().startswith("-")
    draws: Iterator[uuid.UUID] = iter([dash, dash, plain])
    cluster_id = kb.new_cluster_id(lambda: next(draws))
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22
    assert not any(kb.new_cluster_id().startswith("-") for _ in range(2000))
