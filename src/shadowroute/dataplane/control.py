"""Who may steer mirroring per request: the control header (``force`` / ``skip``) is the
operator's, not the client's.

A connection from an address in ``mirror.control_from`` is trusted once, when it opens; any
other client's control header counts only with the admin token: ``force; token=<token>``
(compared without regard to case, as the data plane reads the value lower-cased).

>>> g = ControlGuard(["10.0.0.0/8"], "S3cret")
>>> g.trusts("10.1.2.3"), g.trusts("192.0.2.1")
(True, False)
>>> g.check(b"force; token=s3cret"), g.check(b"force"), g.check(b"skip; token=nope")
(b'force', None, None)
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

__all__ = ["ControlGuard"]


class ControlGuard:
    def __init__(self, control_from: Sequence[str], token: str | None) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in control_from]
        # The data plane reads the header's value lower-cased.
        self.token = token.lower().encode() if token else None

    def trusts(self, address: str | None) -> bool:
        """Whether a client at ``address`` may use the control header without the token."""
        if address is None or not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def check(self, value: bytes) -> bytes | None:
        """The control value (lower-cased) if it carries the admin token, else None."""
        action, sep, rest = value.partition(b";")
        if not sep or self.token is None:
            return None
        key, _, given = rest.strip().partition(b"=")
        if key.strip() != b"token" or not hmac.compare_digest(given.strip(), self.token):
            return None
        return action.strip()
