"""Standard Webhooks signatures (https://www.standardwebhooks.com/, symmetric ``v1``).

The secret is ``whsec_`` followed by the base64 of 24 to 64 random bytes; the key is those
bytes. A message is signed as HMAC-SHA256 over ``{webhook-id}.{webhook-timestamp}.{body}``
and sent in three headers: ``webhook-id`` (the event id: the same on every retry, the
receiver's idempotency key), ``webhook-timestamp`` (integer seconds since the epoch, of this
attempt) and ``webhook-signature`` (``v1,<base64 of the MAC>``).

>>> sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
...      1614265330, b'{"test": 2432232314}')
'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from shadowroute.core.config import webhook_key

__all__ = ["SECRET_PREFIX", "decode_secret", "sign", "signed_headers"]

SECRET_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (24 to 64 bytes); ``ValueError`` saying what is
    wrong (the same check ``config check`` makes)."""
    return webhook_key(secret)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one message."""
    return sign_key(decode_secret(secret), msg_id, timestamp, body)


def sign_key(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_key(key, msg_id, timestamp, body),
    }
