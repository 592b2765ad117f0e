"""Deadlines: many timeouts on one loop timer, fired in time, never after cancel."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import uvloop

from trellis.runtime.deadline import Deadlines


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await coro_fn()

    uvloop.run(main())


def test_fires_in_order_and_on_time() -> None:
    fired: list[tuple[str, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        start = time.monotonic()

        def note(name: str) -> None:
            fired.append((name, time.monotonic() - start))

        for name, delay in (("slow", 0.15), ("fast", 0.05), ("mid", 0.1), ("fast2", 0.05)):
            deadlines.schedule(delay, functools.partial(note, name))
        await asyncio.sleep(0.25)
        assert deadlines.pending() == 0

    run(main)
    assert [name for name, _ in fired] == ["fast", "fast2", "mid", "slow"]
    for name, elapsed in fired:
        expected = {"fast": 0.05, "fast2": 0.05, "mid": 0.1, "slow": 0.15}[name]
        assert expected - 0.002 <= elapsed < expected + 0.25, (name, elapsed)


def test_cancelled_deadline_never_fires() -> None:
    fired: list[int] = []

    async def main() -> None:
        deadlines = Deadlines(asyncio.get_running_loop())
        handles = [deadlines.schedule(0.03, functools.partial(fired.append, i)) for i in range(10)]
        for handle in handles[::2]:
            handle.cancel()
        await asyncio.sleep(0.1)

    run(main)
    assert fired == [1, 3, 5, 7, 9]


def test_schedule_from_a_callback_is_not_lost() -> None:
    fired: list[str] = []

    async def main() -> None:
        deadlines = Deadlines(asyncio.get_running_loop())

        def first() -> None:
            fired.append("first")
            deadlines.schedule(0.02, lambda: fired.append("second"))

        deadlines.schedule(0.02, first)
        deadlines.schedule(0.5, lambda: fired.append("late"))
        await asyncio.sleep(0.1)

    run(main)
    assert fired == ["first", "second"]


def test_memory_stays_bounded_behind_a_slow_head() -> None:
    async def main() -> None:
        deadlines = Deadlines(asyncio.get_running_loop())
        slow = deadlines.schedule(10.0, lambda: None)
        for _ in range(100_000):
            deadlines.schedule(10.0, lambda: None).cancel()
        fifo = next(iter(deadlines._fifos.values()))
        assert len(fifo.entries) <= 2 * 1024 + 1
        assert deadlines.pending() == 1
        slow.cancel()

    run(main)
