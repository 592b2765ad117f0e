"""Reading resources from YAML or JSON text, files, directories and stdin.

Like `kubectl apply -f`: multi-document YAML, JSON objects, `kind: List` with
`items`, directories (their `.yaml`, `.yml` and `.json` files, sorted, not
recursive) and `-` for stdin. Every problem of a batch is collected and raised
together as one `ResourceError`; a batch with any problem yields nothing.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from trellis.api.meta import DEFAULT_NAMESPACE
from trellis.api.networking import (
    DestinationRule,
    NetworkingResource,
    ServiceEntry,
    VirtualService,
    WorkloadEntry,
)
from trellis.api.problem import Problem, ResourceError, problems_from
from trellis.api.security import AuthorizationPolicy, PeerAuthentication
from trellis.api.telemetry import Telemetry

ResourceType = (
    type[ServiceEntry]
    | type[WorkloadEntry]
    | type[VirtualService]
    | type[DestinationRule]
    | type[PeerAuthentication]
    | type[AuthorizationPolicy]
    | type[Telemetry]
)

RESOURCE_TYPES: Mapping[str, ResourceType] = MappingProxyType(
    {
        "ServiceEntry": ServiceEntry,
        "WorkloadEntry": WorkloadEntry,
        "VirtualService": VirtualService,
        "DestinationRule": DestinationRule,
        "PeerAuthentication": PeerAuthentication,
        "AuthorizationPolicy": AuthorizationPolicy,
        "Telemetry": Telemetry,
    }
)
"""kind -> model class, for every kind Trellis implements."""

LATER_KINDS = frozenset(
    {"Gateway", "Sidecar", "RequestAuthentication"}
    | {"EnvoyFilter", "WorkloadGroup", "ProxyConfig", "WasmPlugin"}
)
"""Istio kinds Trellis does not implement (yet): rejected with a clear message."""

MAX_SOURCE_BYTES = 16 * 1024 * 1024
_MAX_ALIASES = 100
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, bounds aliases and keeps timestamps as text.

    Duplicate keys are errors in Kubernetes (a silent last-one-wins would hide
    config); dates stay strings as they do in Kubernetes' YAML-to-JSON step.
    """

    yaml_constructors = {
        **yaml.SafeLoader.yaml_constructors,
        "tag:yaml.org,2002:timestamp": yaml.SafeLoader.construct_yaml_str,
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > _MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {_MAX_ALIASES} YAML aliases", self.get_mark()
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _documents(text: str) -> Iterator[tuple[int, Any]]:
    """(1-based document number, parsed document) for each document in `text`."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            pass  # maybe YAML flow style; let the YAML parser say what is wrong
        else:
            yield 1, value
            return
    loader = _StrictLoader(text)
    try:
        number = 0
        while loader.check_node():
            number += 1
            yield number, loader.construct_document(loader.get_node())
    finally:
        loader.dispose()


def _syntax_problem(exc: yaml.YAMLError, source: str) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    reason = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{reason} ({context})" if context else reason
    return Problem(source=source, message=f"{where}invalid YAML: {detail}")


def _header(document: Mapping[str, Any], template: Problem) -> Problem:
    """`template` with the kind, namespace and name the raw document claims."""
    meta = document.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    kind = document.get("kind")
    name = meta.get("name")
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    return Problem(
        source=template.source,
        message=template.message,
        document=template.document,
        item=template.item,
        kind=kind if isinstance(kind, str) else "",
        namespace=namespace if isinstance(namespace, str) else str(namespace),
        name=name if isinstance(name, str) else "",
    )


def _problem(template: Problem, message: str, path: str = "") -> Problem:
    return dataclasses.replace(template, message=message, path=path)


def _parse(document: Any, template: Problem) -> NetworkingResource | list[Problem]:
    if not isinstance(document, Mapping):
        found = type(document).__name__
        return [_problem(template, f"expected a mapping with apiVersion and kind, got {found}")]
    here = _header(document, template)
    kind = document.get("kind")
    if kind is None:
        return [_problem(here, "required field is missing", "kind")]
    cls = RESOURCE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        if kind in LATER_KINDS:
            return [_problem(here, f"kind {kind} is not supported by Trellis yet", "kind")]
        supported = ", ".join(sorted(RESOURCE_TYPES))
        return [_problem(here, f"unknown kind {kind!r} (supported: {supported})", "kind")]
    try:
        return cls.model_validate(document)
    except ValidationError as exc:
        return problems_from(exc, here)


def parse_resource(
    document: Mapping[str, Any], source: str = "<input>", index: int = 1
) -> NetworkingResource:
    """Validate one document (already parsed from YAML/JSON) into a resource.

    Raises `ResourceError` listing every problem, each naming `source`, the
    document number `index`, the resource's kind/name and the field path.
    """
    result = _parse(document, Problem(source=source, message="", document=index))
    if isinstance(result, list):
        raise ResourceError(result)
    return result


def _is_list(document: Any) -> bool:
    return (
        isinstance(document, Mapping)
        and isinstance(document.get("kind"), str)
        and document["kind"].endswith("List")
        and document["kind"] not in RESOURCE_TYPES
        and "items" in document
    )


def _load(text: str, source: str, problems: list[Problem]) -> list[NetworkingResource]:
    resources: list[NetworkingResource] = []
    try:
        for number, document in _documents(text):
            if document is None:
                continue
            base = Problem(source=source, message="", document=number)
            if isinstance(document, list) or _is_list(document):
                items = document if isinstance(document, list) else document["items"]
                if not isinstance(items, list):
                    problems.append(_problem(base, "must be a list", "items"))
                    continue
                entries = [
                    (item, Problem(source=source, message="", document=number, item=position))
                    for position, item in enumerate(items, start=1)
                ]
            else:
                entries = [(document, base)]
            for item, template in entries:
                result = _parse(item, template)
                if isinstance(result, list):
                    problems.extend(result)
                else:
                    resources.append(result)
    except yaml.YAMLError as exc:
        problems.append(_syntax_problem(exc, source))
    return resources


def _check_duplicates(resources: Sequence[NetworkingResource], problems: list[Problem]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for resource in resources:
        if resource.key in seen:
            kind, namespace, name = resource.key
            problems.append(
                Problem(
                    source="(batch)",
                    message=f"{kind} {namespace}/{name} is defined more than once in this batch",
                )
            )
        seen.add(resource.key)


def load_documents(text: str, source: str) -> list[NetworkingResource]:
    """Parse YAML (multi-document) or JSON text into resources, or raise `ResourceError`.

    `source` names the text in messages (a file name, `<stdin>`).
    """
    problems: list[Problem] = []
    resources = _load(text, source, problems)
    _check_duplicates(resources, problems)
    if problems:
        raise ResourceError(problems)
    return resources


def _read(path: Path, problems: list[Problem]) -> str | None:
    try:
        size = path.stat().st_size
        if size > MAX_SOURCE_BYTES:
            problems.append(
                Problem(source=str(path), message=f"file is larger than {MAX_SOURCE_BYTES} bytes")
            )
            return None
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem(source=str(path), message=f"not UTF-8 text: {exc.reason}"))
    except OSError as exc:
        problems.append(Problem(source=str(path), message=exc.strerror or str(exc)))
    return None


def _expand(paths: Sequence[str | Path], problems: list[Problem]) -> list[str | Path]:
    expanded: list[str | Path] = []
    for entry in paths:
        if str(entry) == "-":
            expanded.append("-")
            continue
        path = Path(entry)
        if path.is_dir():
            files = sorted(
                child
                for child in path.iterdir()
                if child.is_file() and child.suffix in _CONFIG_SUFFIXES
            )
            if not files:
                problems.append(Problem(source=str(path), message="no .yaml, .yml or .json files"))
            expanded.extend(files)
        else:
            expanded.append(path)
    return expanded


def load_paths(
    paths: Sequence[str | Path], *, stdin: TextIO | None = None
) -> list[NetworkingResource]:
    """Load resources from files, directories and `-` (stdin), or raise `ResourceError`.

    All problems of all sources are collected before raising.
    """
    problems: list[Problem] = []
    resources: list[NetworkingResource] = []
    for entry in _expand(paths, problems):
        if entry == "-":
            stream = stdin if stdin is not None else sys.stdin
            text: str | None = stream.read(MAX_SOURCE_BYTES + 1)
            source = "<stdin>"
            if text is not None and len(text) > MAX_SOURCE_BYTES:
                problems.append(Problem(source=source, message="input is too large"))
                continue
        else:
            source = str(entry)
            text = _read(Path(entry), problems)
        if text is not None:
            resources.extend(_load(text, source, problems))
    _check_duplicates(resources, problems)
    if problems:
        raise ResourceError(problems)
    return resources
