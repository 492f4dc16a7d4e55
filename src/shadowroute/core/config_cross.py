"""Checks of a config document that span its sections.

They read the raw document (after environment overrides), not the validated model, so they run
and report even when other parts of the document do not validate: with the model's own checks
(``core.config``) every problem comes out of one pass. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

__all__ = ["address_of", "cross_problems", "protocol_problem"]


def protocol_problem(given: bool) -> tuple[tuple[int | str, ...], str]:
    """Where and what to report for a route with protocol ``jsonpath`` and no ``jsonpath``:
    about ``protocol`` when the user left it out (the default is not theirs to fix), about
    ``jsonpath`` when they chose ``protocol: jsonpath``."""
    if given:
        return ("jsonpath",), (
            "protocol 'jsonpath' needs 'jsonpath', where the prediction lives in the model "
            "server's answer (e.g. '$.prediction')"
        )
    return ("protocol",), (
        "missing: say which protocol the model server speaks: openinference (Open Inference "
        "Protocol v2: MLServer, Triton, KServe v2), kserve-v1, tfserving, openai, or jsonpath "
        "together with jsonpath: '$.prediction'"
    )


def _port_of(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= 65535 else None


def address_of(
    raw: Mapping[str, Any], section: str, model: type[BaseModel]
) -> tuple[str, int] | None:
    """``(host, port)`` of the listen or admin section as written (or defaulted); None when it
    does not validate (that is reported elsewhere) or the port is 0 (any free port)."""
    node = raw.get(section, {})
    if node is None:
        node = {}
    if not isinstance(node, Mapping):
        return None
    host = node.get("host", model.model_fields["host"].default)
    port = _port_of(node.get("port", model.model_fields["port"].default))
    if not isinstance(host, str) or port is None:
        return None
    return host, port


def _host_key(host: str) -> str:
    """A host as compared for overlaps: ``*`` for any address, loopback names made one."""
    h = host.strip("[]").lower()
    if h in ("", "localhost"):
        return "127.0.0.1" if h else "*"
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return h
    if ip.is_unspecified:
        return "*"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return "127.0.0.1" if ip == ipaddress.ip_address("::1") else str(ip)


def _overlap(a: str, b: str) -> bool:
    """Whether servers bound to hosts ``a`` and ``b`` would share an address."""
    ka, kb = _host_key(a), _host_key(b)
    return ka == kb or "*" in (ka, kb)


def _reaches(url_host: str, bound: str) -> bool:
    """Whether a connection to ``url_host`` reaches a server bound to ``bound`` (for names
    other than loopback, only when they are the same name)."""
    ku, kb = _host_key(url_host), _host_key(bound)
    if ku == "*":  # connecting to 0.0.0.0 reaches this machine
        ku = "127.0.0.1"
    if ku == kb:
        return True
    return kb == "*" and (ku == "127.0.0.1" or ku.startswith("127."))


def _url_address(url: object) -> tuple[str, int] | None:
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _route_models(route: Mapping[str, Any]) -> list[tuple[tuple[int | str, ...], object]]:
    """``(loc, url)`` of a raw route's production and candidates."""
    out: list[tuple[tuple[int | str, ...], object]] = []
    prod = route.get("production")
    if isinstance(prod, Mapping):
        out.append((("production", "url"), prod.get("url")))
    cands = route.get("candidates")
    for j, cand in enumerate(cands if isinstance(cands, list) else []):
        if isinstance(cand, Mapping):
            out.append((("candidates", j, "url"), cand.get("url")))
    return out


def cross_problems(raw: Mapping[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    """Problems that span sections, found on the raw document: a route that leaves out its
    protocol, the listen and admin planes on one port, a model URL that points back at the
    proxy (a loop) or at its admin plane. Pure: no I/O.

    >>> raw = {"listen": {"port": 8080}, "admin": {"port": 8080}, "routes": [
    ...     {"name": "r", "production": {"name": "p", "url": "http://localhost:8080"}}]}
    >>> [".".join(map(str, loc)) for loc, _ in cross_problems(raw)]
    ['routes.0.protocol', 'admin.port', 'routes.0.production.url']
    """
    from shadowroute.core.config import Admin, Listen

    out: list[tuple[tuple[int | str, ...], str]] = []
    routes = raw.get("routes")
    routes = routes if isinstance(routes, list) else []
    for i, route in enumerate(routes):
        if isinstance(route, Mapping) and "protocol" not in route and not route.get("jsonpath"):
            loc, message = protocol_problem(False)
            out.append((("routes", i, *loc), message))
    listen = address_of(raw, "listen", Listen)
    admin = address_of(raw, "admin", Admin)
    if listen and admin and listen[1] == admin[1] and _overlap(listen[0], admin[0]):
        out.append(
            (
                ("admin", "port"),
                f"the same port as listen.port ({listen[1]}) on an overlapping address: the "
                "proxy and the admin plane need a port each; change one of them",
            )
        )
    for i, route in enumerate(routes):
        if not isinstance(route, Mapping):
            continue
        for loc, url in _route_models(route):
            target = _url_address(url)
            if target is None:
                continue
            if listen and target[1] == listen[1] and _reaches(target[0], listen[0]):
                out.append(
                    (
                        ("routes", i, *loc),
                        f"points at this proxy's own listen address ({listen[0]}:{listen[1]}): "
                        "every request would come back to the proxy, in a loop; use the "
                        "model server's address",
                    )
                )
            elif admin and target[1] == admin[1] and _reaches(target[0], admin[0]):
                out.append(
                    (
                        ("routes", i, *loc),
                        f"points at this router's admin plane ({admin[0]}:{admin[1]}), not at a "
                        "model server; use the model server's address",
                    )
                )
    return out
