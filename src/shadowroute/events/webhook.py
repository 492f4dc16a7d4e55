"""A webhook destination: each event POSTed to a URL, signed per Standard Webhooks.

The body is the CloudEvent (``application/cloudevents+json``), or the endpoint's
``template`` rendered from it (``application/json``). Each attempt carries ``webhook-id``
(the event id: the same on every retry), a fresh ``webhook-timestamp`` and its
``webhook-signature``. A 2xx is delivered; 408, 429 and 5xx, timeouts and connection errors
are retried (a ``Retry-After`` in seconds is honoured up to ``max_backoff_s``); any other
status is refused and not retried.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from shadowroute import __version__
from shadowroute.core.config import Webhook
from shadowroute.events.cloudevents import CONTENT_TYPE, CloudEvent
from shadowroute.events.delivery import DeliveryError, Destination, RetryPolicy
from shadowroute.events.signing import signed_headers
from shadowroute.events.template import render

__all__ = ["WebhookDestination", "render_body"]

ERROR_BODY_BYTES = 200
"""How much of a refusing receiver's body is kept in ``last_error``."""


def render_body(hook: Webhook, event: CloudEvent) -> tuple[bytes, str]:
    """The body and its content type for ``event``."""
    if hook.template is None:
        return orjson.dumps(event), CONTENT_TYPE
    return orjson.dumps(render(hook.template, event)), "application/json"


def _safe_url(url: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, p.path, "", ""))


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class WebhookDestination(Destination):
    kind = "webhook"

    def __init__(self, name: str, hook: Webhook, session: aiohttp.ClientSession) -> None:
        super().__init__(
            name,
            _safe_url(hook.url),
            RetryPolicy(
                hook.max_attempts, hook.backoff_s, hook.max_backoff_s, hook.give_up_after_s
            ),
        )
        if not hook.key:
            raise ValueError(
                f"webhook {name}: its secret was not read (load the config with "
                "parse_config, which reads secrets)"
            )
        self.hook = hook
        self.session = session
        self.types = frozenset(hook.types)
        self._static = {
            "User-Agent": f"shadowroute/{__version__}",
            **hook.headers,
            **hook.secret_header_values(),
        }

    def accepts(self, event: CloudEvent) -> bool:
        return not self.types or event["type"] in self.types

    async def send(self, event: CloudEvent) -> None:
        body, ctype = render_body(self.hook, event)
        headers = {
            **self._static,
            "Content-Type": ctype,
            **signed_headers(self.hook.key, event["id"], int(time.time()), body),
        }
        try:
            async with self.session.post(
                self.hook.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.hook.timeout_s),
                allow_redirects=False,
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                text = (await resp.content.read(ERROR_BODY_BYTES)).decode("utf-8", "replace")
                detail = f"HTTP {resp.status}" + (f" {text.strip()}" if text.strip() else "")
                status = resp.status
                if status in (408, 429) or status >= 500:
                    reason = (
                        "http_429" if status == 429 else "http_5xx" if status >= 500 else "http_4xx"
                    )
                    raise DeliveryError(
                        reason, detail, retry_after=_retry_after(resp.headers.get("Retry-After"))
                    )
                reason = "http_3xx" if status < 400 else "http_4xx"
                raise DeliveryError(reason, detail, retryable=False)
        except DeliveryError:
            raise
        except TimeoutError:
            raise DeliveryError("timeout", f"no answer within {self.hook.timeout_s:g} s") from None
        except aiohttp.ClientConnectionError as exc:
            raise DeliveryError("connect", str(exc) or type(exc).__name__) from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise DeliveryError("error", str(exc) or type(exc).__name__) from None
