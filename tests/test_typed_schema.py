"""TypedDict -> JSON Schema: the OpenAPI components of the read side's documents are generated
from ``shadowroute.comparator.documents``, not written twice."""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired, TypedDict

import jsonschema
import pytest

from shadowroute.api.openapi import document
from shadowroute.api.typed_schema import components, schema_of
from shadowroute.comparator import documents


class Leaf(TypedDict):
    """A leaf"""

    n: int
    x: float | None


class Doc(TypedDict):
    name: Annotated[str, "Its name"]
    kind: Literal["a", "b"]
    one: Literal[True]
    leaf: Leaf | None
    leaves: list[Leaf]
    by_name: dict[str, int]
    anything: dict[str, object]
    mixed: int | str | None
    maybe: NotRequired[bool]


def test_plain_types_literals_unions_and_containers() -> None:
    s = schema_of(Doc)
    assert s["type"] == "object"
    assert s["required"] == [
        "name",
        "kind",
        "one",
        "leaf",
        "leaves",
        "by_name",
        "anything",
        "mixed",
    ]
    p = s["properties"]
    assert p["name"] == {"type": "string", "description": "Its name"}
    assert p["kind"] == {"enum": ["a", "b"]}
    assert p["one"] == {"const": True}
    leaf = {
        "type": "object",
        "description": "A leaf",
        "required": ["n", "x"],
        "properties": {"n": {"type": "integer"}, "x": {"type": ["number", "null"]}},
    }
    assert p["leaf"] == {**leaf, "type": ["object", "null"]}
    assert p["leaves"] == {"type": "array", "items": leaf}
    assert p["by_name"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert p["anything"] == {"type": "object"}
    assert p["mixed"] == {"type": ["integer", "string", "null"]}
    assert p["maybe"] == {"type": "boolean"}


def test_named_documents_are_referenced() -> None:
    got = components([Doc, Leaf])
    assert got["Doc"]["properties"]["leaf"] == {
        "anyOf": [{"$ref": "#/components/schemas/Leaf"}, {"type": "null"}]
    }
    assert got["Doc"]["properties"]["leaves"]["items"] == {"$ref": "#/components/schemas/Leaf"}
    schema = {"$ref": "#/components/schemas/Doc", "components": {"schemas": got}}
    good = {
        "name": "x", "kind": "a", "one": True, "leaf": None, "leaves": [{"n": 1, "x": None}],
        "by_name": {"a": 1}, "anything": {"k": [1]}, "mixed": "s",
    }  # fmt: skip
    jsonschema.validate(good, schema)
    for bad in ({**good, "kind": "c"}, {**good, "leaves": [{"n": 1.5, "x": 0}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    missing = dict(good)
    del missing["mixed"]
    with pytest.raises(jsonschema.ValidationError, match="'mixed' is a required property"):
        jsonschema.validate(missing, schema)


def test_a_type_without_json_is_refused() -> None:
    with pytest.raises(TypeError, match="no JSON Schema"):
        schema_of(bytes)
    with pytest.raises(TypeError, match="keys are strings"):
        schema_of(dict[int, str])


def test_the_openapi_components_are_the_documents() -> None:
    schemas = document()["components"]["schemas"]
    generated = components(documents.COMPONENTS)
    for name, schema in generated.items():
        assert schemas[name] == schema, name
    decision = schemas["Decision"]
    assert decision["properties"]["verdict"] == {"enum": ["promote", "hold", "reject"]}
    assert "asked_revision" in decision["properties"]
    assert "asked_revision" not in decision["required"]
    assert schemas["Scores"]["properties"]["classes"] == {"$ref": "#/components/schemas/ClassViews"}
    jsonschema.Draft202012Validator.check_schema({"components": {"schemas": schemas}})
