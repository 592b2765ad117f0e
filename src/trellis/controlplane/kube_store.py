"""`KubeConfigStore`: the ConfigStore of the Kubernetes platform, over the Istio CRDs.

Reads come from a cache that one `Informer` per kind keeps (list, then watch);
watches are served from that cache's change log through a `ChangeFeed`, so the
REST API and the translation see the same stream as with SQLite. Versions are
the API server's resourceVersions (etcd revisions: one counter for the whole
cluster), so they increase but have gaps.

Writes go to the API server (`CrdWriter`, in `trellis.controlplane.kube_crd`)
with its own preconditions: an update carries the expected
`metadata.resourceVersion`, a create-only write is a POST, a delete carries
`preconditions.resourceVersion`; the server's 409 becomes ConflictError. A
write returns once the server has it (etcd: durable) and this store's watch
has delivered it, so a read after a write sees it.

Differences from SQLite that Kubernetes imposes:
- a batch is not one transaction (the API has none): every precondition is
  checked against the cache first, the writes are made in order, and when one
  fails the earlier ones are undone (best effort: another writer may have
  changed them since);
- events of different kinds come over different watches; one that arrives
  after a later-versioned one ends every watch of this store with
  WatchExpiredError, and the watchers re-list;
- `updated_at` is kept in the `trellis.io/updated-at` annotation (Kubernetes
  has no such field); `created_at` is `metadata.creationTimestamp`;
- records carry no `status`: the store keeps each object's status beside its
  record (`object_states`, for the leader's status writer), and a change of
  the status alone (or of nothing a record holds) updates the record's
  resourceVersion without an event, so status writes do not make every
  replica translate the config again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

from lightkube import AsyncClient

from trellis.api.meta import ResourceKey
from trellis.controlplane.api_kinds import KINDS
from trellis.controlplane.changefeed import ChangeFeed
from trellis.controlplane.kube_client import (
    Backoff,
    Informer,
    JsonObject,
    KubeApiError,
    object_version,
)
from trellis.controlplane.kube_crd import CrdKind, CrdWriter, stored_resource
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
)
from trellis.controlplane.write_plan import (
    PreparedWrite,
    check_expected,
    parse_version,
    prepare_writes,
    rfc3339,
)
from trellis.kube.status import ObjectState

log = logging.getLogger("trellis.controlplane.kube")

DEFAULT_CHANGE_LOG_LIMIT = 10_000
DEFAULT_WATCH_QUEUE_LIMIT = 10_000


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
        self._writer = CrdWriter(client, self._kinds, write_timeout)
        self._cache: dict[ResourceKey, StoredResource] = {}
        self._statuses: dict[ResourceKey, JsonObject] = {}  # each object's `status`
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
        return ResourceList.of(self._cache, self._feed.last_version, kind, namespace)

    def object_states(self) -> builtins.list[tuple[StoredResource, ObjectState]]:
        """Every object with its generation, resourceVersion and current status, in key order."""
        self._check_open()
        return [
            (
                record,
                ObjectState(
                    key,
                    record.generation,
                    record.resource_version,
                    self._statuses.get(key, {}),
                ),
            )
            for key, record in sorted(self._cache.items())
        ]

    def watch(self, since: str | None = None) -> WatchStream:
        after = None if since is None else parse_version(since, "watch: resourceVersion")
        return self._feed.subscribe(after)

    async def current_version(self) -> str:
        self._check_open()
        return str(self._feed.last_version)

    # -- writes --

    async def apply(self, items: Sequence[ResourceWrite]) -> builtins.list[ApplyResult]:
        self._check_open()
        prepared = [self._writer.normalized(write) for write in prepare_writes(items)]
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
                    written = await self._writer.write(write, current, now)
                    done.append((current, written))
                    await self._await_version(int(written.resource_version))
                    outcome = ApplyOutcome.CREATED if current is None else ApplyOutcome.CONFIGURED
                    results.append(ApplyResult(written, outcome))
            except (ConflictError, StoreError):
                await self._writer.undo(done)
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
                obj = await self._writer.delete(kind, namespace, name, expected)
            except KubeApiError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 409 and expected is not None:
                    raise await self._writer.conflict(kind, namespace, name, expected) from None
                raise StoreError(f"{kind} {namespace}/{name}: {exc}") from None
            deleted = stored_resource(obj)
            await self._await_version(int(deleted.resource_version))
            return deleted

    async def patch_status(self, key: ResourceKey, patch: JsonObject) -> None:
        """Merge-patch one object's `status` subresource; StoreError naming it when refused.

        The change reaches the cache through the watch, like every other.
        """
        self._check_open()
        kind, namespace, name = key
        try:
            await self._writer.patch_status(kind, namespace, name, patch)
        except KubeApiError as exc:
            raise StoreError(f"{kind} {namespace}/{name}: status: {exc}") from None

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
            self._statuses[record.key] = _status_of(obj)
        for key in [key for key in self._cache if key[0] == kind and key not in fresh]:
            del self._cache[key]
            self._statuses.pop(key, None)
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
        previous = self._cache.get(record.key)
        if event_type == "DELETED":
            self._cache.pop(record.key, None)
            self._statuses.pop(record.key, None)
            change = WatchEventType.DELETED
        elif previous is not None and same_record(previous, record):
            # Only the status moved: the record takes the new resourceVersion (the next
            # update's precondition), and watchers hear nothing (they see no status).
            self._cache[record.key] = record
            self._statuses[record.key] = _status_of(obj)
            self._wake()
            return
        else:
            self._statuses[record.key] = _status_of(obj)
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


def same_record(before: StoredResource, after: StoredResource) -> bool:
    """Whether two records differ in nothing but their resourceVersion."""
    return dataclasses.replace(after, resource_version=before.resource_version) == before


def _status_of(obj: JsonObject) -> JsonObject:
    status = obj.get("status")
    return dict(status) if isinstance(status, dict) else {}


def _same_content(write: PreparedWrite, current: StoredResource) -> bool:
    return (
        write.api_version == current.api_version
        and write.spec_json == current.spec_json
        and dict(write.labels) == dict(current.labels)
        and dict(write.annotations) == dict(current.annotations)
    )
