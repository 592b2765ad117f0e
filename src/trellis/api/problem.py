"""Validation problems that name where they are, and the error that carries them.

A problem reads like `shop.yaml: document 2 (VirtualService default/payment):
spec.http[0].route[1].weight: must be >= 0`. A batch (one `apply`) collects all
its problems into one `ResourceError`, so the user sees every mistake at once
and nothing is stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from trellis.errors import ConfigError, TrellisError


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one resource (or one document that is not a resource)."""

    source: str
    """File name, `<stdin>`, or whatever the caller named the text."""
    message: str
    document: int | None = None
    """1-based position of the YAML document in the source (counting empty ones)."""
    item: int | None = None
    """1-based position in a `List`'s `items`."""
    kind: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    """Field path, like `spec.http[0].route[1].weight`."""

    def __str__(self) -> str:
        where = self.source
        if self.document is not None:
            where += f": document {self.document}"
            if self.item is not None:
                where += f" item {self.item}"
        if self.kind or self.name:
            kind = f"{self.kind} " if self.kind else ""
            where += f" ({kind}{self.namespace}/{self.name or '<no name>'})"
        parts = [where, self.path, self.message]
        return ": ".join(part for part in parts if part)


class ResourceError(ConfigError):
    """Resources were rejected; `problems` lists every reason, each naming its place."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("ResourceError needs at least one problem")
        self.problems = tuple(problems)
        first = self.problems[0]
        self.path = first.path
        self.source = first.source
        TrellisError.__init__(self, "\n".join(str(problem) for problem in self.problems))


def format_loc(loc: Iterable[int | str]) -> str:
    """`('spec', 'http', 0, 'route')` -> `spec.http[0].route`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


_SIMPLE_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}

_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


def describe(error: ErrorDetails) -> tuple[str, str]:
    """A pydantic error as (field path, message) in Trellis' words."""
    loc = list(error["loc"])
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    kind = error["type"]
    if loc and loc[-1] == "[key]":
        loc.pop()
    if kind == "unsupported_field":
        return format_loc([*loc, str(ctx["field"])]), error["msg"]
    if kind in _SIMPLE_MESSAGES:
        return format_loc(loc), _SIMPLE_MESSAGES[kind]
    if kind in _BOUNDS:
        key, symbol = _BOUNDS[kind]
        return format_loc(loc), f"must be {symbol} {ctx[key]}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return format_loc(loc), str(ctx["error"])
    return format_loc(loc), error["msg"]


def problems_from(exc: ValidationError, template: Problem) -> list[Problem]:
    """One `Problem` per pydantic error, placed like `template` (source, document, kind...)."""
    found: list[Problem] = []
    for error in exc.errors(include_url=False):
        path, message = describe(error)
        found.append(dataclasses.replace(template, message=message, path=path))
    return found
