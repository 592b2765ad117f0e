"""`SqliteConfigStore`: the local platform's durable ConfigStore (one SQLite file, WAL).

All SQLite work runs on one dedicated worker thread that owns the connection,
so the event loop never blocks on disk. An apply is one IMMEDIATE transaction;
it returns only after COMMIT, and with `synchronous=FULL` a committed change
survives a crash of the process or the machine. Committed changes are
published to watchers from the worker thread through `call_soon_threadsafe`,
which keeps them in commit order.

One process owns a store file at a time (the control plane): watchers only
see changes made through this object.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self, TypeVar

from trellis.controlplane.changefeed import ChangeFeed
from trellis.controlplane.sqlite_worker import SqliteWorker
from trellis.controlplane.store import (
    ApplyResult,
    ResourceList,
    ResourceWrite,
    StoredResource,
    StoreError,
    WatchEvent,
    WatchStream,
)
from trellis.controlplane.write_plan import parse_version, rfc3339

T = TypeVar("T")

DEFAULT_CHANGE_LOG_LIMIT = 10_000
DEFAULT_WATCH_QUEUE_LIMIT = 10_000


class SqliteConfigStore:
    """A ConfigStore in one SQLite file. Create with `await SqliteConfigStore.open(path)`."""

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
        worker: SqliteWorker,
        version: int,
        watch_queue_limit: int,
        clock: Callable[[], float],
    ) -> None:
        """Use `open`; this takes over an opened worker."""
        self._path = path
        self._loop = loop
        self._executor = executor
        self._worker = worker
        self._feed = ChangeFeed(version, watch_queue_limit, self._fetch_backlog)
        self._clock = clock
        self._closed = False
        worker.on_commit = self._publish_from_worker

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        change_log_limit: int = DEFAULT_CHANGE_LOG_LIMIT,
        watch_queue_limit: int = DEFAULT_WATCH_QUEUE_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> SqliteConfigStore:
        """Open (creating if needed) the store at `path`; its directory must exist.

        The store belongs to the running event loop: use it from that loop only.
        """
        if change_log_limit < 1:
            raise ValueError(f"change log limit must be at least 1, got {change_log_limit}")
        loop = asyncio.get_running_loop()
        worker = SqliteWorker(path, change_log_limit)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trellis-config-store")
        try:
            version = await _in_thread(loop, executor, path, "open", worker.open)
        except BaseException:
            await _in_thread(loop, executor, path, "close", worker.close)
            executor.shutdown(wait=False)
            raise
        return cls(path, loop, executor, worker, version, watch_queue_limit, clock)

    @property
    def path(self) -> Path:
        return self._path

    async def get(self, kind: str, namespace: str, name: str) -> StoredResource | None:
        return await self._run("get", functools.partial(self._worker.get, (kind, namespace, name)))

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[StoredResource]:
        return builtins.list((await self.list_with_version(kind, namespace)).items)

    async def list_with_version(
        self, kind: str | None = None, namespace: str | None = None
    ) -> ResourceList:
        return await self._run(
            "list", functools.partial(self._worker.list_resources, kind, namespace)
        )

    async def apply(self, items: Sequence[ResourceWrite]) -> builtins.list[ApplyResult]:
        now = rfc3339(self._clock())
        job = functools.partial(self._worker.apply, tuple(items), now)
        return (await self._run("apply", job)).results

    async def delete(
        self, kind: str, namespace: str, name: str, expected_version: str | None = None
    ) -> StoredResource | None:
        key = (kind, namespace, name)
        event = await self._run(
            "delete", functools.partial(self._worker.delete, key, expected_version)
        )
        return None if event is None else event.resource

    def watch(self, since: str | None = None) -> WatchStream:
        after = None if since is None else parse_version(since, "watch: resourceVersion")
        return self._feed.subscribe(after)

    async def current_version(self) -> str:
        return str(await self._run("read the version", self._worker.version))

    async def close(self) -> None:
        """Let queued operations finish, end all watches, close the database."""
        if self._closed:
            return
        self._closed = True
        self._feed.close()
        try:
            await _in_thread(self._loop, self._executor, self._path, "close", self._worker.close)
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _run(self, what: str, job: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError(f"config store {self._path} is closed; cannot {what}")
        return await _in_thread(self._loop, self._executor, self._path, what, job)

    def _publish_from_worker(self, events: builtins.list[WatchEvent]) -> None:
        """Called on the worker thread right after COMMIT; keeps commit order."""
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is watching any more
            self._loop.call_soon_threadsafe(self._feed.publish, events)

    async def _fetch_backlog(self, after: int, upto: int) -> builtins.list[WatchEvent]:
        if self._closed:
            return []
        return await self._run(
            "read the change log", functools.partial(self._worker.backlog, after, upto)
        )


async def _in_thread(
    loop: asyncio.AbstractEventLoop,
    executor: ThreadPoolExecutor,
    path: Path,
    what: str,
    job: Callable[[], T],
) -> T:
    """Run `job` on the store's thread; SQLite errors become StoreError naming the file."""
    try:
        return await loop.run_in_executor(executor, job)
    except sqlite3.Error as error:
        raise StoreError(f"config store {path}: {what} failed: {error}") from error
