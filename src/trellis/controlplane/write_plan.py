"""Pure decisions shared by the store implementations: validate writes, plan a batch.

No I/O here: a store looks up the current records, asks `plan_batch` or
`plan_delete` what to do, and then commits the returned events in one
transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import MappingProxyType

from trellis.api.meta import ResourceKey
from trellis.controlplane.store import (
    ApplyOutcome,
    ApplyResult,
    ConflictError,
    ResourceWrite,
    StoredResource,
    WatchEvent,
    WatchEventType,
    canonical_json,
)
from trellis.errors import ConfigError

Lookup = Callable[[ResourceKey], StoredResource | None]


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A write checked and brought into canonical form."""

    key: ResourceKey
    api_version: str
    spec_json: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    expected: str | None


@dataclass(frozen=True, slots=True)
class BatchPlan:
    results: list[ApplyResult]
    events: list[WatchEvent]
    last_version: int


def rfc3339(timestamp: float) -> str:
    """Kubernetes-style timestamp: UTC, whole seconds."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    return str(uuid.uuid4())


def parse_version(text: str, what: str) -> int:
    """A resourceVersion as an int; ConfigError naming `what` if it is not one."""
    if not text.isascii() or not text.isdigit():
        raise ConfigError(f"not a resourceVersion (a non-negative integer): {text!r}", path=what)
    return int(text)


def _string_map(value: Mapping[str, str], source: str, path: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError("must be a mapping of strings", source=source, path=path)
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ConfigError(
                f"keys and values must be strings, got {key!r}: {item!r}", source=source, path=path
            )
    return MappingProxyType(dict(sorted(value.items())))


def prepare_writes(items: Sequence[ResourceWrite]) -> list[PreparedWrite]:
    """Check each write; ConfigError names the resource and field of the first bad one."""
    prepared: list[PreparedWrite] = []
    seen: dict[ResourceKey, int] = {}
    for index, item in enumerate(items):
        source = f"item {index} ({item.describe()})"
        for path, value in (
            ("apiVersion", item.api_version),
            ("kind", item.kind),
            ("metadata.namespace", item.namespace),
            ("metadata.name", item.name),
        ):
            if not isinstance(value, str) or not value:
                raise ConfigError("must be a non-empty string", source=source, path=path)
        key = (item.kind, item.namespace, item.name)
        if key in seen:
            raise ConfigError(
                f"the same resource appears twice in one apply (also item {seen[key]})",
                source=source,
            )
        seen[key] = index
        if not isinstance(item.spec, Mapping):
            raise ConfigError("must be a mapping", source=source, path="spec")
        try:
            spec_json = canonical_json(item.spec)
        except (TypeError, ValueError) as error:
            raise ConfigError(
                f"not JSON-serialisable: {error}", source=source, path="spec"
            ) from None
        expected = item.expected_version or None
        if expected is not None:
            parse_version(expected, f"{source}: metadata.resourceVersion")
        prepared.append(
            PreparedWrite(
                key=key,
                api_version=item.api_version,
                spec_json=spec_json,
                labels=_string_map(item.labels, source, "metadata.labels"),
                annotations=_string_map(item.annotations, source, "metadata.annotations"),
                expected=expected,
            )
        )
    return prepared


def check_expected(key: ResourceKey, expected: str | None, current: StoredResource | None) -> None:
    """Raise ConflictError unless the precondition `expected` holds for `current`."""
    if expected is None:
        return
    actual = None if current is None else current.resource_version
    if expected == "0" and current is None:
        return
    if actual != expected:
        raise ConflictError(*key, expected=expected, actual=actual)


def plan_batch(
    writes: Sequence[PreparedWrite],
    lookup: Lookup,
    last_version: int,
    now: str,
    make_uid: Callable[[], str] = new_uid,
) -> BatchPlan:
    """Decide every write against the current state; raise before anything is decided wrong.

    Each changed resource gets the next version in item order; an unchanged
    one keeps its record and produces no event.
    """
    currents = [lookup(write.key) for write in writes]
    for write, current in zip(writes, currents, strict=True):
        check_expected(write.key, write.expected, current)
    results: list[ApplyResult] = []
    events: list[WatchEvent] = []
    version = last_version
    for write, current in zip(writes, currents, strict=True):
        if current is not None and _same_content(write, current):
            results.append(ApplyResult(current, ApplyOutcome.UNCHANGED))
            continue
        version += 1
        kind, namespace, name = write.key
        if current is None:
            generation, uid, created, event_type = 1, make_uid(), now, WatchEventType.ADDED
        else:
            generation = current.generation + (current.spec_json != write.spec_json)
            uid, created, event_type = current.uid, current.created_at, WatchEventType.MODIFIED
        record = StoredResource(
            api_version=write.api_version,
            kind=kind,
            namespace=namespace,
            name=name,
            spec_json=write.spec_json,
            resource_version=str(version),
            generation=generation,
            uid=uid,
            created_at=created,
            updated_at=now,
            labels=write.labels,
            annotations=write.annotations,
        )
        outcome = ApplyOutcome.CREATED if current is None else ApplyOutcome.CONFIGURED
        results.append(ApplyResult(record, outcome))
        events.append(WatchEvent(event_type, record, record.resource_version))
    return BatchPlan(results=results, events=events, last_version=version)


def plan_delete(current: StoredResource, expected: str | None, last_version: int) -> WatchEvent:
    """The DELETED event for `current`, or ConflictError if `expected` does not hold."""
    expected = expected or None
    if expected is not None:
        parse_version(expected, f"{current.describe()}: expected resourceVersion")
    check_expected(current.key, expected, current)
    version = str(last_version + 1)
    record = replace(current, resource_version=version)
    return WatchEvent(WatchEventType.DELETED, record, version)


def _same_content(write: PreparedWrite, current: StoredResource) -> bool:
    return (
        write.api_version == current.api_version
        and write.spec_json == current.spec_json
        and dict(write.labels) == dict(current.labels)
        and dict(write.annotations) == dict(current.annotations)
    )
