"""Watching a ConfigStore: order, resume from a past version, expiry, slow watchers."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from trellis.controlplane.store import WatchEvent, WatchEventType, WatchExpiredError
from trellis.errors import ConfigError

from .store_helpers import StoreFactory, nothing_more, run, store_factory, take, versions, write


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return store_factory(request.param, tmp_path)


def test_watch_from_now_sees_every_change_in_order(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            await store.apply([write("before")])
            async with contextlib.aclosing(store.watch()) as stream:
                await store.apply([write("a"), write("b")])
                await store.apply([write("a")])  # unchanged: no event
                await store.apply([write("a", spec={"hosts": ["a2"]})])
                await store.delete("VirtualService", "default", "b")
                events = await take(stream, 4)
                assert await nothing_more(stream)
            assert [(e.type, e.resource.name) for e in events] == [
                (WatchEventType.ADDED, "a"),
                (WatchEventType.ADDED, "b"),
                (WatchEventType.MODIFIED, "a"),
                (WatchEventType.DELETED, "b"),
            ]
            assert versions(events) == [2, 3, 4, 5]
            assert all(e.resource.resource_version == e.resource_version for e in events)
            assert events[2].resource.spec == {"hosts": ["a2"]}
            assert events[3].resource.spec == {"hosts": ["b"]}

    run(main)


def test_watch_from_a_past_version_replays_then_follows(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            for i in range(5):
                await store.apply([write(f"r{i}")])
            stream = store.watch(since="2")
            await store.apply([write("r0", spec={"hosts": ["changed"]})])
            replayed = await take(stream, 4)
            assert versions(replayed) == [3, 4, 5, 6]
            assert [e.resource.name for e in replayed] == ["r2", "r3", "r4", "r0"]
            await store.apply([write("r5"), write("r6")])
            live = await take(stream, 2)
            assert versions(live) == [7, 8]
            assert await nothing_more(stream)
            await stream.aclose()

            everything = store.watch(since="0")
            assert versions(await take(everything, 8)) == list(range(1, 9))
            await everything.aclose()

    run(main)


def test_replay_and_concurrent_writes_leave_no_gap_or_duplicate(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store(watch_queue_limit=1000) as store:
            await store.apply([write(f"seed{i}") for i in range(20)])
            stream = store.watch(since="5")
            seen: list[WatchEvent] = []

            async def reader() -> None:
                seen.extend(await take(stream, 15 + 30))

            async def writer() -> None:
                for i in range(30):
                    await store.apply([write(f"live{i}")])

            await asyncio.gather(reader(), writer())
            assert versions(seen) == list(range(6, 51))
            await stream.aclose()

    run(main)


def test_watch_since_an_expired_version_fails(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store(change_log_limit=3) as store:
            for i in range(6):
                await store.apply([write(f"r{i}")])
            with pytest.raises(WatchExpiredError, match="too old") as caught:
                await anext(store.watch(since="1"))
            assert "re-list" in str(caught.value)
            # the log still holds 4..6, so resuming after 3 works
            assert versions(await take(store.watch(since="3"), 3)) == [4, 5, 6]
            with pytest.raises(WatchExpiredError, match="only at 6"):
                await anext(store.watch(since="60"))
            with pytest.raises(ConfigError, match="resourceVersion"):
                store.watch(since="six")

    run(main)


def test_slow_watcher_is_dropped_without_blocking_writers(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store(watch_queue_limit=4) as store:
            slow = store.watch()
            fast = store.watch()
            received: list[WatchEvent] = []

            async def follow() -> None:
                received.extend(await take(fast, 20))

            follower = asyncio.create_task(follow())
            for i in range(20):
                await asyncio.wait_for(store.apply([write(f"r{i}")]), 2.0)
            await asyncio.wait_for(follower, 5.0)
            assert versions(received) == list(range(1, 21))
            with pytest.raises(WatchExpiredError, match="fell more than 4 events behind"):
                await anext(slow)
            with pytest.raises(WatchExpiredError):  # and it stays failed
                await anext(slow)

    run(main)


def test_idle_watcher_takes_a_batch_larger_than_its_queue(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store(watch_queue_limit=2) as store:
            stream = store.watch()
            await store.apply([write(f"r{i}") for i in range(5)])
            assert versions(await take(stream, 5)) == [1, 2, 3, 4, 5]

    run(main)


def test_closing_the_store_ends_watches(open_store: StoreFactory) -> None:
    async def main() -> None:
        store = await open_store()
        stream = store.watch()
        collected: list[WatchEvent] = []

        async def consume() -> None:
            async for event in stream:
                collected.append(event)

        consumer = asyncio.create_task(consume())
        await store.apply([write("a")])
        await asyncio.sleep(0.05)
        await store.close()
        await asyncio.wait_for(consumer, 2.0)
        assert [e.resource.name for e in collected] == ["a"]

    run(main)


def test_closed_watch_stops_and_others_continue(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            first = store.watch()
            second = store.watch()
            await first.aclose()
            await store.apply([write("a")])
            with pytest.raises(StopAsyncIteration):
                await anext(first)
            assert versions(await take(second, 1)) == [1]

    run(main)
