"""The durable config store: records, errors and the `ConfigStore` interface.

The store keeps mesh config as validated, JSON-able documents; it does not know
the config models. Every change gets the next value of one store-wide counter,
the resourceVersion (like Kubernetes), so watchers can resume where they left
off. Implementations: `MemoryConfigStore` (reference, tests) and
`SqliteConfigStore` (local platform); the Kubernetes platform implements the
same protocol with CRDs.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol, Self

from trellis.api.meta import ResourceKey
from trellis.errors import TrellisError

EMPTY_MAP: Mapping[str, str] = MappingProxyType({})


def _empty_map() -> Mapping[str, str]:
    return EMPTY_MAP


def canonical_json(value: object) -> str:
    """The one text form of a JSON value: sorted keys, no spaces, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


class StoreError(TrellisError):
    """The store could not do what was asked (I/O failure, store closed, bad version)."""


class ConflictError(StoreError):
    """An optimistic-concurrency precondition failed; nothing was stored.

    `expected` is the resourceVersion the write carried; `actual` the stored one
    (None when the resource does not exist).
    """

    def __init__(
        self, kind: str, namespace: str, name: str, expected: str, actual: str | None
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.expected = expected
        self.actual = actual
        wanted = "it not to exist yet" if expected == "0" else f"resourceVersion {expected}"
        found = "it does not exist" if actual is None else f"the stored one is {actual}"
        super().__init__(
            f"{kind} {namespace}/{name}: conflict: the write expected {wanted}, but {found}; "
            "get the current version and retry"
        )


class WatchExpiredError(StoreError):
    """A watch cannot continue without a gap (like HTTP 410 Gone): re-list, then watch again."""


class WatchEventType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


class ApplyOutcome(StrEnum):
    """What an apply did to one resource (kubectl's words)."""

    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class StoredResource:
    """One stored resource. Immutable: `spec` decodes a fresh copy on every access."""

    api_version: str
    kind: str
    namespace: str
    name: str
    spec_json: str
    resource_version: str
    generation: int
    uid: str
    created_at: str
    updated_at: str
    labels: Mapping[str, str] = field(default_factory=_empty_map)
    annotations: Mapping[str, str] = field(default_factory=_empty_map)

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = json.loads(self.spec_json)
        return spec

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def to_document(self) -> dict[str, Any]:
        """The resource as a Kubernetes-style object (apiVersion, kind, metadata, spec)."""
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "resourceVersion": self.resource_version,
            "generation": self.generation,
            "creationTimestamp": self.created_at,
        }
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": metadata,
            "spec": self.spec,
        }


@dataclass(frozen=True, slots=True)
class ResourceWrite:
    """A create-or-update of one resource.

    `expected_version`: None (or "") writes unconditionally; "0" requires that
    the resource does not exist yet; any other value must equal the stored
    resourceVersion.
    """

    api_version: str
    kind: str
    namespace: str
    name: str
    spec: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=_empty_map)
    annotations: Mapping[str, str] = field(default_factory=_empty_map)
    expected_version: str | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    resource: StoredResource
    outcome: ApplyOutcome


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change. `resource_version` equals `resource.resource_version`.

    For DELETED, `resource` is the last stored state carrying the version of
    the deletion.
    """

    type: WatchEventType
    resource: StoredResource
    resource_version: str


@dataclass(frozen=True, slots=True)
class ResourceList:
    """A consistent listing: `items` as of `resource_version` (watch from it to follow on)."""

    items: tuple[StoredResource, ...]
    resource_version: str

    @classmethod
    def of(
        cls,
        resources: Mapping[ResourceKey, StoredResource],
        version: int,
        kind: str | None = None,
        namespace: str | None = None,
    ) -> ResourceList:
        """The listing of an in-memory map (key order), filtered by `kind` and `namespace`."""
        items = tuple(
            resources[key]
            for key in sorted(resources)
            if (kind is None or key[0] == kind) and (namespace is None or key[1] == namespace)
        )
        return cls(items=items, resource_version=str(version))


class WatchStream(Protocol):
    """Events in resourceVersion order; ends when closed or when the store closes.

    Raises WatchExpiredError when it cannot continue without a gap.
    """

    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...

    async def __anext__(self) -> WatchEvent: ...

    async def aclose(self) -> None: ...


class ConfigStore(Protocol):
    """Durable, versioned config with optimistic concurrency and watch."""

    async def get(self, kind: str, namespace: str, name: str) -> StoredResource | None:
        """The stored resource, or None."""
        ...

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[StoredResource]:
        """Resources ordered by (kind, namespace, name), optionally filtered."""
        ...

    async def list_with_version(
        self, kind: str | None = None, namespace: str | None = None
    ) -> ResourceList:
        """Like `list`, plus the store version the listing is consistent with."""
        ...

    async def apply(self, items: Sequence[ResourceWrite]) -> builtins.list[ApplyResult]:
        """Create or update all items in one transaction, or none of them.

        Raises ConflictError (a stale expected_version) or ConfigError (an
        invalid write: empty name, duplicate in the batch, spec not JSON); then
        nothing is stored. Returns once the change is durable. An item whose
        content equals the stored one is "unchanged" and keeps its version.
        """
        ...

    async def delete(
        self, kind: str, namespace: str, name: str, expected_version: str | None = None
    ) -> StoredResource | None:
        """Remove a resource; returns it (with the deletion's version), or None if absent."""
        ...

    def watch(self, since: str | None = None) -> WatchStream:
        """Changes after `since` (default: from now), then live changes, in order."""
        ...

    async def current_version(self) -> str:
        """The resourceVersion of the latest change ("0" for an empty new store)."""
        ...

    async def close(self) -> None:
        """Finish pending writes, end all watches, release the store."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
