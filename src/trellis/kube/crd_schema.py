"""Kubernetes structural schemas generated from the config models.

A CustomResourceDefinition's `openAPIV3Schema` must be *structural*: every
node has a type, there are no `$ref`s, and unions are limited. Pydantic's JSON
Schema for a model is none of that (shared `$defs`, `anyOf` with `null` for
optional fields, `const`, draft 2020 `exclusiveMinimum`), so `structural_schema`
rewrites it node by node:

- `$ref` -> the referenced definition, inlined (a recursive model is an error);
- `anyOf: [X, {type: null}]` -> X with `nullable: true`;
- `anyOf: [integer, string]` -> `x-kubernetes-int-or-string: true`;
- `const: V` -> `enum: [V]`;
- `additionalProperties: false` beside `properties` -> dropped (Kubernetes prunes
  or, with kubectl's default strict field validation, rejects unknown fields);
- integers get `format: int32` or `int64` from their bounds, numbers `double`;
- `title` and `default` are dropped: defaults are the control plane's to apply,
  and an API server that filled them in would rewrite what users stored.

Durations (`trellis.api.duration.Duration`) are numbers inside the models but
Go duration strings on the wire; they become strings with a pattern. Any JSON
Schema keyword this module does not know is an error rather than silently lost.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, BeforeValidator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from trellis.api.duration import Duration
from trellis.errors import TrellisError

DURATION_PATTERN = "^(0|(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)$"
"""Go's duration syntax as Istio's CRDs accept it ("10s", "1.5h", "1h30m", "100ms").

Means the same to RE2 (the API server's engine), ECMA 262 and Python's `re`.
"""

_INT32 = (-(2**31), 2**31 - 1)
_KEPT = frozenset(
    {
        "description",
        "enum",
        "maximum",
        "minimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "maxProperties",
        "minProperties",
        "required",
        "format",
    }
)
_DROPPED = frozenset({"title", "default", "examples"})
_FORMATS = frozenset({"int32", "int64", "float", "double", "byte", "date", "date-time"})


class SchemaConversionError(TrellisError):
    """A model's JSON Schema uses a construct a structural schema cannot express."""


def _duration_validator() -> Callable[..., Any]:
    for marker in typing.get_args(Duration)[1:]:
        if isinstance(marker, BeforeValidator):
            return marker.func
    raise SchemaConversionError("trellis.api.duration.Duration has no before-validator")


class _WireSchema(GenerateJsonSchema):
    """Pydantic's generator, with durations described as the strings users write."""

    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        if schema["function"]["function"] is _duration_validator():
            return {"type": "string", "pattern": DURATION_PATTERN}
        return super().function_before_schema(schema)


def model_wire_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema as users write it: camelCase keys, durations as strings."""
    return model.model_json_schema(by_alias=True, mode="validation", schema_generator=_WireSchema)


def structural_schema(model: type[BaseModel], field: str | None = None) -> dict[str, Any]:
    """The structural schema of `model`, or of its field `field` (by alias, e.g. "spec")."""
    schema = model_wire_schema(model)
    definitions = schema.pop("$defs", {})
    node = schema if field is None else schema["properties"][field]
    return _convert(node, definitions, (), field or model.__name__)


def _convert(
    node: Mapping[str, Any], definitions: Mapping[str, Any], seen: tuple[str, ...], where: str
) -> dict[str, Any]:
    if "$ref" in node:
        name = str(node["$ref"]).removeprefix("#/$defs/")
        if name in seen:
            raise SchemaConversionError(f"{where}: {name} refers to itself; cannot inline")
        inlined = _convert(definitions[name], definitions, (*seen, name), where)
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return {**inlined, **_convert_keywords(siblings, definitions, seen, where)}
    if "anyOf" in node:
        return _convert_union(node, definitions, seen, where)
    if "type" not in node and "const" not in node:
        raise SchemaConversionError(f"{where}: a schema without a type: {dict(node)}")
    return _convert_keywords(node, definitions, seen, where)


def _convert_union(
    node: Mapping[str, Any], definitions: Mapping[str, Any], seen: tuple[str, ...], where: str
) -> dict[str, Any]:
    options = [option for option in node["anyOf"] if option != {"type": "null"}]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    nullable = len(options) < len(node["anyOf"])
    types = sorted(str(option.get("type")) for option in options)
    if len(options) == 1:
        converted = {**_convert(options[0], definitions, seen, where)}
    elif types == ["integer", "string"] and all(len(option) == 1 for option in options):
        converted = {"x-kubernetes-int-or-string": True}
    else:
        raise SchemaConversionError(f"{where}: a union of {types} has no structural form")
    converted.update(_convert_keywords(rest, definitions, seen, where))
    if nullable:
        converted["nullable"] = True
    return converted


def _convert_keywords(
    node: Mapping[str, Any], definitions: Mapping[str, Any], seen: tuple[str, ...], where: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "type":
            out["type"] = value
        elif key == "const":
            out["enum"] = [value]
            out.setdefault("type", _json_type(value, where))
        elif key == "properties":
            out["properties"] = {
                name: _convert(child, definitions, seen, f"{where}.{name}")
                for name, child in value.items()
            }
        elif key == "additionalProperties":
            if isinstance(value, Mapping):
                out["additionalProperties"] = _convert(value, definitions, seen, f"{where}[*]")
            elif value is True or "properties" not in node:
                out["additionalProperties"] = value
        elif key == "items":
            out["items"] = _convert(value, definitions, seen, f"{where}[]")
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key in _KEPT:
            out[key] = value
        else:
            raise SchemaConversionError(f"{where}: JSON Schema keyword {key!r} is not handled")
    return _with_format(out, where)


def _with_format(node: dict[str, Any], where: str) -> dict[str, Any]:
    if "format" in node and node["format"] not in _FORMATS:
        raise SchemaConversionError(f"{where}: format {node['format']!r} is not Kubernetes'")
    if node.get("type") == "integer" and "format" not in node:
        low, high = node.get("minimum", _INT32[0] - 1), node.get("maximum", _INT32[1] + 1)
        node["format"] = "int32" if _INT32[0] <= low and high <= _INT32[1] else "int64"
    elif node.get("type") == "number" and "format" not in node:
        node["format"] = "double"
    return node


def _json_type(value: object, where: str) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    raise SchemaConversionError(f"{where}: constant {value!r} has no simple type")
