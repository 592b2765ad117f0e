"""Generating structural schemas from pydantic models, and checking the structural rules."""

from __future__ import annotations

import enum
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from trellis.api.duration import Duration
from trellis.kube.crd_schema import DURATION_PATTERN, SchemaConversionError, structural_schema
from trellis.kube.structural import structural_problems


class Color(enum.StrEnum):
    RED = "RED"
    BLUE = "BLUE"


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    """An inner message."""

    count: int = Field(default=0, ge=0, le=100)


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["Sample"] = "Sample"
    inner: Inner | None = None
    inners: list[Inner] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    port: int | str = 80
    big: int = 0
    ratio: float = Field(default=0.5, gt=0)
    color: Color = Color.RED
    timeout: Duration | None = None


class Node(BaseModel):
    children: list[Node] = Field(default_factory=list)


class Either(BaseModel):
    value: int | list[str]


def test_sample_model_becomes_structural() -> None:
    schema = structural_schema(Sample)
    assert structural_problems(schema) == []
    properties = schema["properties"]
    assert schema["required"] == ["name"]
    assert "additionalProperties" not in schema
    assert properties["kind"] == {"enum": ["Sample"], "type": "string"}
    assert properties["inner"]["nullable"] is True
    assert properties["inner"]["type"] == "object"
    assert properties["inner"]["properties"]["count"]["format"] == "int32"
    assert properties["inners"]["items"]["properties"]["count"]["maximum"] == 100
    assert properties["labels"] == {"additionalProperties": {"type": "string"}, "type": "object"}
    assert properties["port"] == {"x-kubernetes-int-or-string": True}
    assert properties["big"] == {"type": "integer", "format": "int64"}
    assert properties["ratio"] == {
        "exclusiveMinimum": True,
        "minimum": 0,
        "type": "number",
        "format": "double",
    }
    assert properties["color"]["enum"] == ["RED", "BLUE"]
    assert properties["timeout"] == {
        "type": "string",
        "pattern": DURATION_PATTERN,
        "nullable": True,
    }


def test_a_field_alone_can_be_converted() -> None:
    assert structural_schema(Sample, "inner")["properties"]["count"]["minimum"] == 0


def test_recursive_models_and_other_unions_are_refused() -> None:
    with pytest.raises(SchemaConversionError, match="refers to itself"):
        structural_schema(Node)
    with pytest.raises(SchemaConversionError, match="no structural form"):
        structural_schema(Either)


def test_duration_pattern_is_go_syntax() -> None:
    import re  # noqa: PLC0415

    for good in ("0", "10s", "1.5h", "1h30m", "100ms", ".5s", "3\u00b5s", "2us"):
        assert re.fullmatch(DURATION_PATTERN, good), good
    for bad in ("", "10", "-1s", "1 s", "1d", "s", "1.5"):
        assert not re.fullmatch(DURATION_PATTERN, bad), bad


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"properties": {}}, "$: the root must have type object"),
        (_object(a={"description": "untyped"}), "$.properties.a: no type"),
        (_object(a={"type": "array"}), "$.properties.a: an array needs items"),
        (_object(a={"$ref": "#/definitions/x"}), "$.properties.a: '$ref' is not allowed"),
        (
            _object(a={"type": "object", "properties": {}, "additionalProperties": False}),
            "additionalProperties false is not allowed beside properties",
        ),
        (
            _object(
                a={
                    "type": "object",
                    "properties": {"b": {"type": "string"}},
                    "additionalProperties": {"type": "string"},
                }
            ),
            "properties and additionalProperties exclude each other",
        ),
        (
            _object(a={"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
            "uniqueItems may not be true",
        ),
        (_object(a={"type": "string", "format": "color"}), "format 'color' is not supported"),
        (_object(a={"type": "integer", "enum": ["x"]}), "enum value 'x' is not of type integer"),
        (
            _object(a={"type": "string", "anyOf": [{"type": "string"}, {"type": "null"}]}),
            "'type' is not allowed inside allOf/anyOf/oneOf/not",
        ),
        (
            _object(a={"type": "object", "oneOf": [{"properties": {"b": {}}}]}),
            "field 'b' is not specified outside oneOf",
        ),
        (
            _object(a={"type": "string", "x-kubernetes-int-or-string": True}),
            "x-kubernetes-int-or-string must not have a type",
        ),
        (
            _object(a={"type": "object", "x-kubernetes-preserve-unknown-fields": False}),
            "x-kubernetes-preserve-unknown-fields must be true if set",
        ),
        (
            _object(metadata={"type": "object", "properties": {"labels": {"type": "object"}}}),
            "only name and generateName may be restricted ('labels' is)",
        ),
        (_object(a={"type": "map"}), "type 'map' is not one of"),
    ],
)
def test_structural_rules_are_enforced(schema: dict[str, Any], problem: str) -> None:
    found = structural_problems(schema)
    assert any(problem in line for line in found), found


def test_the_allowed_exceptions_pass() -> None:
    schema = _object(
        port={
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        },
        anything={"x-kubernetes-preserve-unknown-fields": True},
        oneof={
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
        },
        metadata={"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}},
    )
    assert structural_problems(schema) == []
