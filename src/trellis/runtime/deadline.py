"""Many request timeouts on one loop timer.

Arming a loop timer per request costs about 2 us on uvloop (a libuv handle is
created and closed each time), a noticeable share of a proxied request. Here
timeouts of the same length share a FIFO: they expire in the order they were
set, so the head of each FIFO is its earliest deadline and one loop timer,
armed for the earliest head, serves them all.

Cancelling is lazy: the entry is marked and dropped when it reaches the head.
A FIFO whose head stays alive (one slow request) compacts itself once cancelled
entries pile up, so memory stays proportional to the requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger("trellis.deadline")

_COMPACT_MIN = 1024
_TOLERANCE = 0.001  # the loop's timers have millisecond resolution


class Deadline:
    """A scheduled timeout; `cancel()` makes sure its callback never runs."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class _Fifo:
    __slots__ = ("entries", "limit")

    def __init__(self) -> None:
        self.entries: deque[Deadline] = deque()
        self.limit = _COMPACT_MIN

    def drop_cancelled_head(self) -> None:
        entries = self.entries
        while entries and entries[0].callback is None:
            entries.popleft()

    def compact(self) -> None:
        """Drop every cancelled entry. Amortised O(1) when called once the length
        passes `limit`: the limit doubles with what survives."""
        self.entries = deque(d for d in self.entries if d.callback is not None)
        self.limit = max(_COMPACT_MIN, 2 * len(self.entries))


class Deadlines:
    __slots__ = ("_armed", "_armed_at", "_fifos", "_firing", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._fifos: dict[float, _Fifo] = {}
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._firing = False

    def schedule(self, delay: float, callback: Callable[[], None]) -> Deadline:
        """Run `callback` after `delay` seconds unless the returned deadline is cancelled."""
        when = self._loop.time() + delay
        deadline = Deadline(when, callback)
        fifo = self._fifos.get(delay)
        if fifo is None:
            fifo = self._fifos[delay] = _Fifo()
        # Appending is inlined (this runs for every request): cancelled entries at
        # the head go first, so the head is the FIFO's earliest live deadline.
        entries = fifo.entries
        while entries and entries[0].callback is None:
            entries.popleft()
        entries.append(deadline)
        if len(entries) > fifo.limit:
            fifo.compact()
        if (
            fifo.entries[0] is deadline
            and not self._firing
            and (self._armed is None or when < self._armed_at)
        ):
            self._arm(when)
        return deadline

    def _arm(self, when: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed_at = when
        self._armed = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._armed = None
        self._firing = True
        try:
            now = self._loop.time() + _TOLERANCE
            for fifo in list(self._fifos.values()):
                entries = fifo.entries
                while entries:
                    head = entries[0]
                    callback = head.callback
                    if callback is not None and head.when > now:
                        break
                    entries.popleft()
                    if callback is None:
                        continue
                    head.callback = None
                    try:
                        callback()
                    except Exception:
                        log.exception("timeout handler failed")
        finally:
            self._firing = False
        earliest: float | None = None
        for fifo in self._fifos.values():
            fifo.drop_cancelled_head()
            if fifo.entries:
                when = fifo.entries[0].when
                if earliest is None or when < earliest:
                    earliest = when
        if earliest is not None:
            self._arm(earliest)

    def pending(self) -> int:
        """Live deadlines (for tests and stats)."""
        return sum(1 for f in self._fifos.values() for d in f.entries if d.callback is not None)
