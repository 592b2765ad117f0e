"""`MemoryConfigStore`: the reference ConfigStore, in memory (tests, and for comparison).

Same semantics as the SQLite store, minus durability: versions, optimistic
concurrency, all-or-nothing batches, a bounded change log and watches.
"""

from __future__ import annotations

import builtins
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Self

from trellis.api.meta import ResourceKey
from trellis.controlplane.changefeed import ChangeFeed
from trellis.controlplane.store import (
    ApplyResult,
    ResourceList,
    ResourceWrite,
    StoredResource,
    StoreError,
    WatchEvent,
    WatchEventType,
    WatchStream,
)
from trellis.controlplane.write_plan import (
    parse_version,
    plan_batch,
    plan_delete,
    prepare_writes,
    rfc3339,
)

DEFAULT_CHANGE_LOG_LIMIT = 10_000
DEFAULT_WATCH_QUEUE_LIMIT = 10_000


class MemoryConfigStore:
    """A ConfigStore held in this process's memory; everything is lost on exit."""

    def __init__(
        self,
        *,
        change_log_limit: int = DEFAULT_CHANGE_LOG_LIMIT,
        watch_queue_limit: int = DEFAULT_WATCH_QUEUE_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if change_log_limit < 1:
            raise ValueError(f"change log limit must be at least 1, got {change_log_limit}")
        self._clock = clock
        self._resources: dict[ResourceKey, StoredResource] = {}
        self._log: deque[WatchEvent] = deque(maxlen=change_log_limit)
        self._version = 0
        self._feed = ChangeFeed(0, watch_queue_limit, self._fetch_backlog)
        self._closed = False

    async def get(self, kind: str, namespace: str, name: str) -> StoredResource | None:
        self._check_open()
        return self._resources.get((kind, namespace, name))

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[StoredResource]:
        return builtins.list((await self.list_with_version(kind, namespace)).items)

    async def list_with_version(
        self, kind: str | None = None, namespace: str | None = None
    ) -> ResourceList:
        self._check_open()
        return ResourceList.of(self._resources, self._version, kind, namespace)

    async def apply(self, items: Sequence[ResourceWrite]) -> builtins.list[ApplyResult]:
        self._check_open()
        prepared = prepare_writes(items)
        now = rfc3339(self._clock())
        plan = plan_batch(prepared, self._resources.get, self._version, now)
        self._commit(plan.events)
        return plan.results

    async def delete(
        self, kind: str, namespace: str, name: str, expected_version: str | None = None
    ) -> StoredResource | None:
        self._check_open()
        current = self._resources.get((kind, namespace, name))
        if current is None:
            return None
        event = plan_delete(current, expected_version, self._version)
        self._commit([event])
        return event.resource

    def watch(self, since: str | None = None) -> WatchStream:
        after = None if since is None else parse_version(since, "watch: resourceVersion")
        return self._feed.subscribe(after)

    async def current_version(self) -> str:
        self._check_open()
        return str(self._version)

    async def close(self) -> None:
        self._closed = True
        self._feed.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the config store is closed")

    def _commit(self, events: Sequence[WatchEvent]) -> None:
        for event in events:
            resource = event.resource
            if event.type is WatchEventType.DELETED:
                del self._resources[resource.key]
            else:
                self._resources[resource.key] = resource
            self._log.append(event)
            self._version = int(event.resource_version)
        self._feed.publish(events)

    async def _fetch_backlog(self, after: int, upto: int) -> builtins.list[WatchEvent]:
        return [event for event in self._log if after < int(event.resource_version) <= upto]
