"""`KubeConfigStore`: the ConfigStore of the Kubernetes platform, over the Istio CRDs.

Reads come from a cache that one `Informer` per kind keeps (list, then watch);
watches are served from that cache's change log through a `ChangeFeed`, so the
REST API and the translation see the same stream as with SQLite. Versions are
the API server's resourceVersions (etcd revisions: one counter for the whole
cluster), so they increase but have gaps.

Writes go to the API server with its own preconditions: an update carries the
expected `metadata.resourceVersion`, a create-only write is a POST, a delete
carries `preconditions.resourceVersion`; the server's 409 becomes
ConflictError. A write returns once the server has it (etcd: durable) and this
store's watch has delivered it, so a read after a write sees it.

Differences from SQLite that Kubernetes imposes:
- a batch is not one transaction (the API has none): every precondition is
  checked against the cache first, the writes are made in order, and when one
  fails the earlier ones are undone (best effort: another writer may have
  changed them since);
- events of different kinds come over different watches; one that arrives
  after a later-versioned one ends every watch of this store with
  WatchExpiredError, and the watchers re-list;
- `updated_at` is kept in the `trellis.io/updated-at` annotation (Kubernetes
  has no such field); `created_at` is `metadata.creationTimestamp`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Self

import httpx
from lightkube import ApiError, AsyncClient

from trellis.controlplane.api_kinds import KINDS, KindInfo
from trellis.controlplane.changefeed import ChangeFeed
from trellis.controlplane.kube_client import (
    ApiResource,
    Backoff,
    Informer,
    JsonObject,
    KubeApiError,
    api_error,
    object_version,
)
from trellis.controlplane.store import (
    ApplyOutcome,
    ApplyResult,
    ConflictError,
    ResourceList,
    ResourceWrite,
    StoredResource,
    StoreError,
    WatchEvent,
    WatchEventType,
    WatchExpiredError,
    WatchStream,
    canonical_json,
)
from trellis.controlplane.write_plan import (
    PreparedWrite,
    ResourceKey,
    check_expected,
    parse_version,
    prepare_writes,
    rfc3339,
)

log = logging.getLogger("trellis.controlplane.kube")

UPDATED_AT_ANNOTATION = "trellis.io/updated-at"
DEFAULT_CHANGE_LOG_LIMIT = 10_000
DEFAULT_WATCH_QUEUE_LIMIT = 10_000
_RETRIES = 5


@dataclass(frozen=True, slots=True)
class CrdKind:
    """A kind the store keeps, and the API resource it lives in."""

    kind: str
    resource: ApiResource

    @classmethod
    def of(cls, info: KindInfo) -> CrdKind:
        return cls(
            info.kind, ApiResource(info.group, info.preferred_version, info.kind, info.plural)
        )


def stored_resource(obj: Mapping[str, Any]) -> StoredResource:
    """A CRD object from the API server as a store record."""
    meta = obj.get("metadata") or {}
    annotations = dict(meta.get("annotations") or {})
    updated = annotations.pop(UPDATED_AT_ANNOTATION, None)
    created = str(meta.get("creationTimestamp") or "")
    return StoredResource(
        api_version=str(obj.get("apiVersion", "")),
        kind=str(obj.get("kind", "")),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        spec_json=canonical_json(obj.get("spec") or {}),
        resource_version=str(meta.get("resourceVersion") or "0"),
        generation=int(meta.get("generation") or 1),
        uid=str(meta.get("uid") or ""),
        created_at=created,
        updated_at=str(updated or created),
        labels=MappingProxyType(dict(sorted((meta.get("labels") or {}).items()))),
        annotations=MappingProxyType(dict(sorted(annotations.items()))),
    )


class _KindFollower:
    """The InformerHandler of one kind: hands its listings and events to the store."""

    def __init__(self, store: KubeConfigStore, kind: str) -> None:
        self._store = store
        self._kind = kind

    async def replaced(self, items: list[JsonObject], version: int) -> None:
        self._store._replace(self._kind, items, version)

    async def changed(self, event_type: str, obj: JsonObject) -> None:
        self._store._change(self._kind, event_type, obj)

    async def progressed(self, version: int) -> None:
        self._store._progress()


class KubeConfigStore:
    """Mesh config in the API server's CRDs, cached and watched."""

    def __init__(
        self,
        client: AsyncClient,
        kinds: Iterable[CrdKind] | None = None,
        *,
        change_log_limit: int = DEFAULT_CHANGE_LOG_LIMIT,
        watch_queue_limit: int = DEFAULT_WATCH_QUEUE_LIMIT,
        clock: Callable[[], float] = time.time,
        write_timeout: float = 10.0,
        backoff: Backoff | None = None,
        own_client: bool = False,
    ) -> None:
        if change_log_limit < 1:
            raise ValueError(f"change log limit must be at least 1, got {change_log_limit}")
        self._client = client
        self._own_client = own_client  # close() closes the client too
        self._kinds = {k.kind: k for k in (kinds or map(CrdKind.of, KINDS))}
        self._clock = clock
        self._write_timeout = write_timeout
        self._cache: dict[ResourceKey, StoredResource] = {}
        self._log: deque[WatchEvent] = deque(maxlen=change_log_limit)
        self._floor = 0  # the log holds every change after this version
        self._feed = ChangeFeed(0, watch_queue_limit, self._fetch_backlog, contiguous=False)
        self._seen = 0  # the highest version the watches delivered (published or held)
        self._held: builtins.list[WatchEvent] | None = (
            None  # a batch's events, published at its end
        )
        self._advanced = asyncio.Event()  # set (and replaced) whenever the cache moves on
        self._lock = asyncio.Lock()
        self._closed = False
        self.informers = [
            Informer(client, kind.resource, _KindFollower(self, kind.kind), backoff=backoff)
            for kind in self._kinds.values()
        ]
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls, client: AsyncClient, *, sync_timeout: float = 30.0, **options: Any
    ) -> KubeConfigStore:
        """Start following every kind; return once each has been listed."""
        store = cls(client, **options)
        store._tasks = [
            asyncio.create_task(informer.run(), name=f"crd informer {informer.resource.plural}")
            for informer in store.informers
        ]
        try:
            async with asyncio.timeout(sync_timeout):
                for informer in store.informers:
                    await informer.listed.wait()
        except TimeoutError:
            await store.close()
            raise StoreError(
                f"the Kubernetes API did not list the Trellis CRDs within {sync_timeout:.0f}s "
                "(are the CRDs installed and the API server reachable?)"
            ) from None
        return store

    # -- reads --

    async def get(self, kind: str, namespace: str, name: str) -> StoredResource | None:
        self._check_open()
        return self._cache.get((kind, namespace, name))

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[StoredResource]:
        return builtins.list((await self.list_with_version(kind, namespace)).items)

    async def list_with_version(
        self, kind: str | None = None, namespace: str | None = None
    ) -> ResourceList:
        self._check_open()
        items = tuple(
            self._cache[key]
            for key in sorted(self._cache)
            if (kind is None or key[0] == kind) and (namespace is None or key[1] == namespace)
        )
        return ResourceList(items=items, resource_version=str(self._feed.last_version))

    def watch(self, since: str | None = None) -> WatchStream:
        after = None if since is None else parse_version(since, "watch: resourceVersion")
        return self._feed.subscribe(after)

    async def current_version(self) -> str:
        self._check_open()
        return str(self._feed.last_version)

    # -- writes --

    async def apply(self, items: Sequence[ResourceWrite]) -> builtins.list[ApplyResult]:
        self._check_open()
        prepared = [self._normalized(write) for write in prepare_writes(items)]
        async with self._lock:
            currents = [self._cache.get(write.key) for write in prepared]
            for write, current in zip(prepared, currents, strict=True):
                check_expected(write.key, write.expected, current)
            now = rfc3339(self._clock())
            results: builtins.list[ApplyResult] = []
            done: builtins.list[tuple[StoredResource | None, StoredResource]] = []
            # Watchers get the batch's events together, as from one transaction.
            self._held = []
            try:
                for write, current in zip(prepared, currents, strict=True):
                    if current is not None and _same_content(write, current):
                        results.append(ApplyResult(current, ApplyOutcome.UNCHANGED))
                        continue
                    written = await self._write(write, current, now)
                    done.append((current, written))
                    await self._await_version(int(written.resource_version))
                    outcome = ApplyOutcome.CREATED if current is None else ApplyOutcome.CONFIGURED
                    results.append(ApplyResult(written, outcome))
            except (ConflictError, StoreError):
                await self._undo(done)
                raise
            finally:
                self._flush()
            return results

    async def delete(
        self, kind: str, namespace: str, name: str, expected_version: str | None = None
    ) -> StoredResource | None:
        self._check_open()
        expected = expected_version or None
        if expected is not None:
            parse_version(expected, f"{kind} {namespace}/{name}: expected resourceVersion")
        async with self._lock:
            current = self._cache.get((kind, namespace, name))
            if current is None:
                return None
            check_expected(current.key, expected, current)
            try:
                obj = await self._delete_object(kind, namespace, name, expected)
            except KubeApiError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 409 and expected is not None:
                    raise await self._conflict(kind, namespace, name, expected) from None
                raise StoreError(f"{kind} {namespace}/{name}: {exc}") from None
            deleted = stored_resource(obj)
            await self._await_version(int(deleted.resource_version))
            return deleted

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._feed.close()
        if self._own_client:
            await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the API server --

    def _normalized(self, write: PreparedWrite) -> PreparedWrite:
        """The write in the kind's preferred version (the server stores one form)."""
        kind = self._crd(write.key[0])
        return PreparedWrite(
            key=write.key,
            api_version=kind.resource.api_version,
            spec_json=write.spec_json,
            labels=write.labels,
            annotations=write.annotations,
            expected=write.expected,
        )

    def _crd(self, kind: str) -> CrdKind:
        found = self._kinds.get(kind)
        if found is None:
            raise StoreError(f"kind {kind!r} has no CRD this store follows")
        return found

    def _document(self, write: PreparedWrite, version: str | None, now: str) -> JsonObject:
        kind, namespace, name = write.key
        metadata: JsonObject = {
            "name": name,
            "namespace": namespace,
            "annotations": {**write.annotations, UPDATED_AT_ANNOTATION: now},
        }
        if write.labels:
            metadata["labels"] = dict(write.labels)
        if version is not None:
            metadata["resourceVersion"] = version
        return {
            "apiVersion": write.api_version,
            "kind": kind,
            "metadata": metadata,
            "spec": json.loads(write.spec_json),
        }

    async def _write(
        self, write: PreparedWrite, current: StoredResource | None, now: str
    ) -> StoredResource:
        """Create or update one object with the write's precondition; ConflictError on 409."""
        kind, namespace, name = write.key
        version = write.expected if write.expected not in (None, "0") else None
        exists = current is not None
        for _attempt in range(_RETRIES):
            try:
                if not exists:
                    obj = await self._send(
                        "post", kind, namespace, None, self._document(write, None, now)
                    )
                else:
                    base = version or (current.resource_version if current else None)
                    doc = self._document(write, base, now)
                    obj = await self._send("put", kind, namespace, name, doc)
                return stored_resource(obj)
            except KubeApiError as exc:
                if exc.code == 409 and write.expected is not None:
                    raise await self._conflict(kind, namespace, name, write.expected) from None
                if exc.code not in (404, 409):
                    raise StoreError(f"{kind} {namespace}/{name}: {exc}") from None
                # An unconditional write raced another writer: look again and retry.
                fresh = await self._fetch(kind, namespace, name)
                exists = fresh is not None
                current = stored_resource(fresh) if fresh is not None else None
        raise StoreError(
            f"{kind} {namespace}/{name}: still racing other writers after {_RETRIES} tries"
        )

    async def _conflict(self, kind: str, namespace: str, name: str, expected: str) -> ConflictError:
        fresh = await self._fetch(kind, namespace, name)
        actual = None if fresh is None else str(fresh["metadata"].get("resourceVersion"))
        return ConflictError(kind, namespace, name, expected=expected, actual=actual)

    async def _fetch(self, kind: str, namespace: str, name: str) -> JsonObject | None:
        try:
            return await self._send("get", kind, namespace, name, None)
        except KubeApiError as exc:
            if exc.code == 404:
                return None
            raise StoreError(f"{kind} {namespace}/{name}: {exc}") from None

    async def _send(
        self, method: str, kind: str, namespace: str, name: str | None, body: JsonObject | None
    ) -> JsonObject:
        """One request for one object of a CRD; the answer's JSON, or KubeApiError."""
        resource = self._crd(kind).resource.lightkube()
        generic = self._client._client
        obj = None if body is None else resource.from_dict(body)
        request = generic.prepare_request(
            method, res=resource, obj=obj, name=name, namespace=namespace
        )
        return await self._exchange(generic, request)

    async def _delete_object(
        self, kind: str, namespace: str, name: str, expected: str | None
    ) -> JsonObject:
        resource = self._crd(kind).resource.lightkube()
        generic = self._client._client
        request = generic.prepare_request("delete", res=resource, name=name, namespace=namespace)
        options: JsonObject = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if expected is not None:
            options["preconditions"] = {"resourceVersion": expected}
        request.data = options
        return await self._exchange(generic, request)

    async def _exchange(self, generic: Any, request: Any) -> JsonObject:
        try:
            response = await asyncio.wait_for(
                generic.send(generic.build_adapter_request(request)), self._write_timeout
            )
            generic.raise_for_status(response)
        except ApiError as exc:
            raise api_error(exc) from None
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            raise StoreError(f"the Kubernetes API did not answer: {exc!r}") from None
        data: JsonObject = response.json()
        return data

    async def _undo(self, done: Sequence[tuple[StoredResource | None, StoredResource]]) -> None:
        """Put back what an interrupted batch changed (best effort, newest first)."""
        for before, after in reversed(done):
            try:
                if before is None:
                    await self._delete_object(
                        after.kind, after.namespace, after.name, after.resource_version
                    )
                else:
                    write = PreparedWrite(
                        key=before.key,
                        api_version=before.api_version,
                        spec_json=before.spec_json,
                        labels=before.labels,
                        annotations=before.annotations,
                        expected=after.resource_version,
                    )
                    await self._send(
                        "put",
                        before.kind,
                        before.namespace,
                        before.name,
                        self._document(write, after.resource_version, before.updated_at),
                    )
            except (KubeApiError, StoreError) as exc:
                log.error(
                    "could not undo the write of %s after a failed batch: %s", after.describe(), exc
                )

    async def _await_version(self, version: int) -> None:
        """Wait until the watch has delivered `version` (bounded: the write itself is done)."""
        try:
            async with asyncio.timeout(self._write_timeout):
                while self._seen < version and not self._closed:
                    await self._advanced.wait()
        except TimeoutError:
            log.warning("the CRD watch has not delivered resourceVersion %d yet", version)

    # -- the informers' reports --

    def _replace(self, kind: str, items: Sequence[JsonObject], version: int) -> None:
        """A (re-)listing of one kind: take it whole; watchers re-list."""
        fresh = {}
        for obj in items:
            record = stored_resource({**obj, "kind": obj.get("kind") or kind})
            fresh[record.key] = record
        for key in [key for key in self._cache if key[0] == kind and key not in fresh]:
            del self._cache[key]
        self._cache.update(fresh)
        self._flush()
        top = max(version, self._seen)
        self._seen = top
        self._feed.reset(top, f"the {kind} watch listed again at resourceVersion {version}")
        self._log.clear()
        self._floor = top
        self._wake()

    def _change(self, kind: str, event_type: str, obj: JsonObject) -> None:
        record = stored_resource({**obj, "kind": obj.get("kind") or kind})
        if event_type == "DELETED":
            self._cache.pop(record.key, None)
            change = WatchEventType.DELETED
        else:
            self._cache[record.key] = record
            change = WatchEventType.ADDED if event_type == "ADDED" else WatchEventType.MODIFIED
        version = object_version(obj)
        event = WatchEvent(change, record, record.resource_version)
        if version <= self._seen:
            # Another kind's watch got ahead: watchers re-list (from the cache, which has both).
            self._flush()
            self._log.clear()
            self._floor = self._seen
            self._feed.publish([event])  # out of order: the feed ends every watch
        else:
            self._seen = version
            if len(self._log) == self._log.maxlen:
                self._floor = int(self._log[0].resource_version)
            self._log.append(event)
            if self._held is not None:
                self._held.append(event)
            else:
                self._feed.publish([event])
        self._wake()

    def _flush(self) -> None:
        """Publish the events held for a batch (and stop holding)."""
        held, self._held = self._held, None
        if held:
            self._feed.publish(held)

    def _progress(self) -> None:
        self._wake()

    def _wake(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def _fetch_backlog(self, after: int, upto: int) -> builtins.list[WatchEvent]:
        if after < self._floor:
            raise WatchExpiredError(
                f"watch from resourceVersion {after} is too old: this store's change log "
                f"starts after {self._floor}; re-list and watch again from the list's "
                "resourceVersion"
            )
        return [event for event in self._log if after < int(event.resource_version) <= upto]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the config store is closed")


def _same_content(write: PreparedWrite, current: StoredResource) -> bool:
    return (
        write.api_version == current.api_version
        and write.spec_json == current.spec_json
        and dict(write.labels) == dict(current.labels)
        and dict(write.annotations) == dict(current.annotations)
    )
