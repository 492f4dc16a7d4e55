"""Body templates: an event turned into a JSON body another system already accepts (a GitHub
``repository_dispatch``, a pipeline run request), with no code run.

A template is any JSON value. Strings in it may hold placeholders ``{{ path }}``, where
``path`` is a dotted path into the event document (``type``, ``id``, ``subject``,
``data.route``, ``data.decision.verdict``; ``event`` is the whole event). A string that is
exactly one placeholder is replaced by the value itself (an object stays an object, a number
a number); a placeholder inside longer text is replaced by the value's text (JSON for objects
and lists). A path that leads nowhere gives ``null`` (its text: empty). Keys are not
templated. The placeholders are checked when the config is read (``core.config.Webhook``).

>>> ev = {"type": "io.shadowroute.verdict.changed", "data": {"route": "r", "n": 3}}
>>> render({"event_type": "shadowroute-{{ data.route }}", "client_payload": "{{ data }}"}, ev)
{'event_type': 'shadowroute-r', 'client_payload': {'route': 'r', 'n': 3}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["PLACEHOLDER", "render"]

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def _lookup(event: Mapping[str, Any], path: str) -> Any:
    if path == "event":
        return event
    node: Any = event
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def render(template: Any, event: Mapping[str, Any]) -> Any:
    """The template with its placeholders replaced from ``event``."""
    if isinstance(template, str):
        whole = PLACEHOLDER.fullmatch(template)
        if whole is not None:
            return _lookup(event, whole.group(1))
        return PLACEHOLDER.sub(lambda m: _text(_lookup(event, m.group(1))), template)
    if isinstance(template, Mapping):
        return {k: render(v, event) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, event) for v in template]
    return template
