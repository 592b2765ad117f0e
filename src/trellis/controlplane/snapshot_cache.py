"""The latest snapshot of every proxy, with debounced change notification.

`set` stores a snapshot at once (after checking that it is consistent) and marks
its node as changed when any of its per-type versions moved. Changed nodes are
announced to their watchers (the ADS streams of that node) once the burst of
`set` calls has been quiet for `debounce` seconds, or `max_delay` seconds after
the burst began, whichever comes first (Istio's debounce). A stream woken this
way reads the snapshot with `get`, so it always sends the newest one.

Call `set`, `watch` and `clear` from the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from trellis.controlplane.snapshot import Snapshot

log = logging.getLogger("trellis.controlplane.cache")

Watcher = Callable[[], None]


def _type_versions(snapshot: Snapshot) -> dict[str, str]:
    return {t: s.version for t, s in snapshot.sets.items() if len(s)}


class SnapshotCache:
    """Snapshots keyed by node id; pushes are announced per node after a debounce."""

    def __init__(
        self,
        *,
        debounce: float = 0.1,
        max_delay: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if debounce < 0 or max_delay < debounce:
            raise ValueError(f"need 0 <= debounce ({debounce}) <= max_delay ({max_delay})")
        self.debounce = debounce
        self.max_delay = max_delay
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        self._versions: dict[str, dict[str, str]] = {}
        self._watchers: dict[str, list[Watcher]] = {}
        self._pending: set[str] = set()
        self._burst_start = 0.0
        self._last_set = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.flushes = 0  # how many times watchers were notified (for tests and metrics)

    def set(self, node_id: str, snapshot: Snapshot) -> None:
        """Publish `snapshot` for `node_id`; raises InconsistentSnapshotError and keeps the old."""
        snapshot.check()
        versions = _type_versions(snapshot)
        self._snapshots[node_id] = snapshot
        if self._versions.get(node_id) == versions:
            return
        self._versions[node_id] = versions
        if node_id in self._watchers:
            self._mark(node_id)

    def get(self, node_id: str) -> Snapshot | None:
        return self._snapshots.get(node_id)

    def clear(self, node_id: str) -> None:
        """Forget a node's snapshot (its streams keep what they were sent)."""
        self._snapshots.pop(node_id, None)
        self._versions.pop(node_id, None)
        self._pending.discard(node_id)

    def node_ids(self) -> frozenset[str]:
        return frozenset(self._snapshots)

    @property
    def pending(self) -> frozenset[str]:
        """Nodes changed since the last notification."""
        return frozenset(self._pending)

    def watch(self, node_id: str, watcher: Watcher) -> Callable[[], None]:
        """Call `watcher()` after each debounced change of `node_id`; returns the cancel."""
        self._watchers.setdefault(node_id, []).append(watcher)

        def cancel() -> None:
            watchers = self._watchers.get(node_id, [])
            if watcher in watchers:
                watchers.remove(watcher)
            if not watchers:
                self._watchers.pop(node_id, None)

        return cancel

    def watcher_count(self, node_id: str) -> int:
        return len(self._watchers.get(node_id, ()))

    def flush(self) -> None:
        """Notify the watchers of every changed node now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, set()
        if not pending:
            return
        self.flushes += 1
        for node_id in pending:
            for watcher in tuple(self._watchers.get(node_id, ())):
                watcher()

    def _mark(self, node_id: str) -> None:
        now = self._clock()
        if not self._pending:
            self._burst_start = now
        self._pending.add(node_id)
        self._last_set = now
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no loop: nothing is waiting for a timer
            return
        if self._timer is None:
            self._timer = loop.call_later(self.debounce, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock()
        due = min(self._last_set + self.debounce, self._burst_start + self.max_delay)
        if now + 1e-4 < due:
            self._timer = asyncio.get_running_loop().call_later(due - now, self._on_timer)
            return
        self.flush()
