"""Fan-out of committed changes to watchers.

A store publishes each committed batch to its `ChangeFeed` on the event loop,
in version order. Each watcher has a bounded queue: a watcher that falls too
far behind is dropped with WatchExpiredError (it must re-list), so a slow
watcher never slows writers down. A watcher that starts from a past version
first reads the store's change log (through the store's `BacklogFetch`), then
continues with the live events queued since it subscribed, with no gap and no
duplicate.

A feed is `contiguous` when every change takes the next version (the memory
and SQLite stores). The Kubernetes store's versions are the API server's,
shared with objects it does not follow, so its feed only requires them to
increase, and its `BacklogFetch` raises WatchExpiredError when its log does
not reach back far enough.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self

from trellis.controlplane.store import StoreError, WatchEvent, WatchExpiredError

BacklogFetch = Callable[[int, int], Awaitable[Sequence[WatchEvent]]]
"""fetch(after, upto): logged events with after < version <= upto, in order (a first page
is enough). When the log no longer reaches back to after + 1, it starts later."""

RELIST_HINT = "re-list and watch again from the list's resourceVersion"


class ChangeFeed:
    """Committed changes, fanned out to the watch streams subscribed to it."""

    def __init__(
        self, last_version: int, queue_limit: int, fetch: BacklogFetch, *, contiguous: bool = True
    ) -> None:
        if queue_limit < 1:
            raise ValueError(f"watch queue limit must be at least 1, got {queue_limit}")
        self._last_version = last_version
        self._queue_limit = queue_limit
        self._fetch = fetch
        self._contiguous = contiguous
        self._streams: set[FeedStream] = set()
        self._closed = False

    @property
    def last_version(self) -> int:
        """The version of the last change published (what a new watch starts after)."""
        return self._last_version

    @property
    def watcher_count(self) -> int:
        return len(self._streams)

    def subscribe(self, since: int | None) -> FeedStream:
        """A stream of the changes after `since` (default: after the last published one)."""
        if self._closed:
            raise StoreError("the config store is closed; cannot watch")
        start = self._last_version
        error = None
        if since is not None and since > start:
            error = WatchExpiredError(
                f"watch from resourceVersion {since}: the store is only at {start}; {RELIST_HINT}"
            )
        cursor = start if since is None or error is not None else since
        stream = FeedStream(
            self, cursor, start, self._queue_limit, self._fetch, error, contiguous=self._contiguous
        )
        if error is None:
            self._streams.add(stream)
        return stream

    def publish(self, events: Sequence[WatchEvent]) -> None:
        """Hand one committed batch (consecutive versions) to every watcher."""
        if self._closed or not events:
            return
        first = int(events[0].resource_version)
        if self._contiguous:
            in_order = first == self._last_version + 1
        else:
            in_order = first > self._last_version
        if not in_order:
            # Cannot happen while stores publish in commit order; if it ever does,
            # every watcher re-lists rather than silently missing changes.
            self._expire_all(f"changes arrived out of order ({first} after {self._last_version})")
        self._last_version = max(self._last_version, int(events[-1].resource_version))
        for stream in list(self._streams):
            if not stream.deliver(events):
                self._streams.discard(stream)

    def discard(self, stream: FeedStream) -> None:
        self._streams.discard(stream)

    def reset(self, version: int, reason: str) -> None:
        """Expire every watcher (they re-list) and go on after `version` (never backwards)."""
        self._expire_all(reason)
        self._last_version = max(self._last_version, version)

    def close(self) -> None:
        """End every stream (they stop iterating) and refuse new ones."""
        self._closed = True
        for stream in list(self._streams):
            stream.end()
        self._streams.clear()

    def _expire_all(self, reason: str) -> None:
        for stream in list(self._streams):
            stream.fail(WatchExpiredError(f"watch interrupted: {reason}; {RELIST_HINT}"))
        self._streams.clear()


class FeedStream:
    """One watcher: an async iterator of WatchEvents. Not for concurrent `__anext__` calls."""

    def __init__(
        self,
        feed: ChangeFeed,
        cursor: int,
        backlog_until: int,
        queue_limit: int,
        fetch: BacklogFetch,
        error: WatchExpiredError | None,
        *,
        contiguous: bool = True,
    ) -> None:
        self._feed = feed
        self._contiguous = contiguous
        self._since = cursor
        self._cursor = cursor
        self._backlog_until = backlog_until
        self._queue_limit = queue_limit
        self._fetch = fetch
        self._error = error
        self._backlog: deque[WatchEvent] = deque()
        self._live: deque[WatchEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._error is not None:
            raise self._error
        if self._ended:
            raise StopAsyncIteration
        if self._cursor < self._backlog_until:
            return await self._next_from_backlog()
        while not self._live:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
            if self._error is not None:
                raise self._error
            if self._ended:
                raise StopAsyncIteration
        event = self._live.popleft()
        self._cursor = int(event.resource_version)
        return event

    async def aclose(self) -> None:
        self.end()
        self._feed.discard(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def deliver(self, events: Sequence[WatchEvent]) -> bool:
        """Queue live events; False (and the stream fails) if it fell too far behind."""
        if self._ended or self._error is not None:
            return False
        if self._live and len(self._live) + len(events) > self._queue_limit:
            self.fail(
                WatchExpiredError(
                    f"watcher fell more than {self._queue_limit} events behind "
                    f"(at resourceVersion {self._cursor}); {RELIST_HINT}"
                )
            )
            return False
        self._live.extend(events)
        self._wake()
        return True

    def fail(self, error: WatchExpiredError) -> None:
        self._error = error
        self._live.clear()
        self._backlog.clear()
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._live.clear()
        self._backlog.clear()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _next_from_backlog(self) -> WatchEvent:
        if not self._backlog:
            try:
                page = await self._fetch(self._cursor, self._backlog_until)
            except WatchExpiredError as expired:
                self.fail(expired)
                self._feed.discard(self)
                raise
            if self._error is not None:
                raise self._error
            if self._ended:
                raise StopAsyncIteration
            versions = [int(event.resource_version) for event in page]
            if self._contiguous:
                wanted = list(range(self._cursor + 1, self._cursor + 1 + len(page)))
            else:
                wanted = sorted(set(version for version in versions if version > self._cursor))
            if not page or versions != wanted:
                starts = f"it now starts at {versions[0]}" if page else "it is empty"
                error = WatchExpiredError(
                    f"watch from resourceVersion {self._since} is too old: the change log "
                    f"no longer holds version {self._cursor + 1} ({starts}); {RELIST_HINT}"
                )
                self.fail(error)
                self._feed.discard(self)
                raise error
            self._backlog.extend(page)
        event = self._backlog.popleft()
        self._cursor = int(event.resource_version)
        return event
