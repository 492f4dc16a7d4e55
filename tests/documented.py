"""Real read-side documents checked against the OpenAPI components generated from their
TypedDicts (``shadowroute.comparator.documents``)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import jsonschema
import orjson

from shadowroute.api.openapi import document


@cache
def _components() -> dict[str, Any]:
    components: dict[str, Any] = document()["components"]
    return components


def assert_documented(doc: Mapping[str, Any], name: str) -> None:
    """``doc`` (as the API serialises it) is valid against ``components.schemas[name]``."""
    body = orjson.loads(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
    schema = {"$ref": f"#/components/schemas/{name}", "components": _components()}
    jsonschema.validate(body, schema)
