"""Checks that an `openAPIV3Schema` is structural, as the API server requires of CRDs.

The rules, from Kubernetes' "Specifying a structural schema" and the API
server's CRD validation (`apiextensions-apiserver`, `validation.go`):

1. every node has a non-empty `type`: the root, each property, each
   `additionalProperties` and each `items` (except a node with
   `x-kubernetes-int-or-string: true`, which must have no type, or with
   `x-kubernetes-preserve-unknown-fields: true`);
2. inside `allOf`, `anyOf`, `oneOf` and `not`, no `type`, `description`,
   `default`, `additionalProperties` or `nullable`, and every field or item
   named there is also specified outside the junctor;
3. under the root's `metadata`, only `name` and `generateName` may be restricted;
4. no `$ref`, `definitions`, `patternProperties`, `dependencies`,
   `additionalItems`, `$schema` or `id`; `uniqueItems` is never true;
   `properties` and `additionalProperties` (other than `true`) exclude each
   other; an `array` has `items`, given as one schema; `format` is one
   Kubernetes knows; `x-kubernetes-preserve-unknown-fields` is only ever true;
   every `enum` value has the node's type.

`structural_problems` returns each broken rule with its path in the schema;
an empty list means the API server will accept the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_FORBIDDEN = (
    "$ref",
    "definitions",
    "patternProperties",
    "dependencies",
    "additionalItems",
    "$schema",
    "id",
    "const",
)
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_NOT_IN_JUNCTOR = ("type", "description", "default", "additionalProperties", "nullable")
_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})
_FORMATS = frozenset(
    {
        "bsonobjectid",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
        "byte",
        "password",
        "date",
        "duration",
        "datetime",
        "date-time",
        "int32",
        "int64",
        "float",
        "double",
    }
)
_PYTHON_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def structural_problems(schema: Mapping[str, Any]) -> list[str]:
    """Every way `schema` (a CRD version's `openAPIV3Schema`) is not structural."""
    problems: list[str] = []
    if schema.get("type") != "object":
        problems.append("$: the root must have type object")
    _check_node(schema, "$", problems, in_junctor=False)
    metadata = schema.get("properties", {}).get("metadata")
    if isinstance(metadata, Mapping):
        extra = set(metadata.get("properties", {})) - {"name", "generateName"}
        restricted = set(metadata) - {"type", "description", "properties"}
        for name in sorted(extra | restricted):
            problems.append(
                f"$.properties.metadata: only name and generateName may be restricted ({name!r} is)"
            )
    return problems


def _check_node(
    node: Mapping[str, Any], path: str, problems: list[str], *, in_junctor: bool
) -> None:
    for key in _FORBIDDEN:
        if key in node:
            problems.append(f"{path}: {key!r} is not allowed")
    if in_junctor:
        for key in _NOT_IN_JUNCTOR:
            if key in node:
                problems.append(f"{path}: {key!r} is not allowed inside allOf/anyOf/oneOf/not")
    else:
        _check_type(node, path, problems)
    _check_values(node, path, problems)
    for name, child in node.get("properties", {}).items():
        _check_node(child, f"{path}.properties.{name}", problems, in_junctor=in_junctor)
    additional = node.get("additionalProperties")
    if isinstance(additional, Mapping):
        if "properties" in node:
            problems.append(f"{path}: properties and additionalProperties exclude each other")
        _check_node(additional, f"{path}.additionalProperties", problems, in_junctor=in_junctor)
    elif additional is False and "properties" in node:
        problems.append(f"{path}: additionalProperties false is not allowed beside properties")
    items = node.get("items")
    if isinstance(items, Mapping):
        _check_node(items, f"{path}.items", problems, in_junctor=in_junctor)
    elif items is not None:
        problems.append(f"{path}: items must be one schema, not a list")
    elif node.get("type") == "array" and not in_junctor:
        problems.append(f"{path}: an array needs items")
    for junctor in _JUNCTORS:
        if junctor in node:
            _check_junctor(node, junctor, path, problems)


def _check_type(node: Mapping[str, Any], path: str, problems: list[str]) -> None:
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if preserve is not None and preserve is not True:
        problems.append(f"{path}: x-kubernetes-preserve-unknown-fields must be true if set")
    kind = node.get("type")
    if int_or_string:
        if kind is not None:
            problems.append(f"{path}: x-kubernetes-int-or-string must not have a type")
    elif kind is None:
        if preserve is not True:
            problems.append(f"{path}: no type")
    elif kind not in _TYPES:
        problems.append(f"{path}: type {kind!r} is not one of {sorted(_TYPES)}")


def _check_values(node: Mapping[str, Any], path: str, problems: list[str]) -> None:
    if node.get("uniqueItems") is True:
        problems.append(f"{path}: uniqueItems may not be true")
    fmt = node.get("format")
    if fmt is not None and fmt not in _FORMATS:
        problems.append(f"{path}: format {fmt!r} is not supported by Kubernetes")
    kind = node.get("type")
    allowed = _PYTHON_TYPES.get(kind) if isinstance(kind, str) else None
    for value in node.get("enum", ()):
        wrong_bool = isinstance(value, bool) and kind in ("integer", "number")
        if allowed is not None and (not isinstance(value, allowed) or wrong_bool):
            problems.append(f"{path}: enum value {value!r} is not of type {kind}")


def _check_junctor(node: Mapping[str, Any], junctor: str, path: str, problems: list[str]) -> None:
    branches = node[junctor] if junctor != "not" else [node[junctor]]
    for index, branch in enumerate(branches):
        where = f"{path}.{junctor}[{index}]"
        if node.get("x-kubernetes-int-or-string") is True and _is_int_or_string_pattern(branch):
            continue
        _check_node(branch, where, problems, in_junctor=True)
        for name in branch.get("properties", {}):
            if name not in node.get("properties", {}):
                problems.append(f"{where}: field {name!r} is not specified outside {junctor}")
        if "items" in branch and "items" not in node:
            problems.append(f"{where}: items are not specified outside {junctor}")


def _is_int_or_string_pattern(branch: Mapping[str, Any]) -> bool:
    # The one exception to rule 2: x-kubernetes-int-or-string's anyOf of both types.
    return dict(branch) in ({"type": "integer"}, {"type": "string"})
