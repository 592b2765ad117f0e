"""Shared helpers for the config store tests: both implementations, one contract."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from trellis.controlplane.memory_store import MemoryConfigStore
from trellis.controlplane.sqlite_store import SqliteConfigStore
from trellis.controlplane.store import ConfigStore, ResourceWrite, WatchEvent, WatchStream

StoreFactory = Callable[..., Awaitable[ConfigStore]]

TEST_TIMEOUT = 10.0


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one test body on a fresh event loop, bounded in time."""
    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT))


def store_factory(kind: str, directory: Path) -> StoreFactory:
    async def open_store(**options: Any) -> ConfigStore:
        if kind == "memory":
            memory: ConfigStore = MemoryConfigStore(**options)
            return memory
        return await SqliteConfigStore.open(directory / "config.db", **options)

    return open_store


class FakeClock:
    """A clock the test moves: starts at 2024-01-01T00:00:00Z, one minute per reading."""

    def __init__(self) -> None:
        self._ticks: Iterator[int] = itertools.count()

    def __call__(self) -> float:
        return 1_704_067_200.0 + 60 * next(self._ticks)


def write(
    name: str,
    *,
    kind: str = "VirtualService",
    namespace: str = "default",
    spec: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    expected: str | None = None,
) -> ResourceWrite:
    return ResourceWrite(
        api_version="networking.istio.io/v1",
        kind=kind,
        namespace=namespace,
        name=name,
        spec={"hosts": [name]} if spec is None else spec,
        labels=labels or {},
        expected_version=expected,
    )


async def take(stream: WatchStream, count: int, within: float = 5.0) -> list[WatchEvent]:
    """The next `count` events of a watch, failing the test if they do not come in time."""

    async def collect() -> list[WatchEvent]:
        return [await anext(stream) for _ in range(count)]

    return await asyncio.wait_for(collect(), within)


async def nothing_more(stream: WatchStream, wait: float = 0.05) -> bool:
    """True if the watch delivers no further event within `wait` seconds."""
    try:
        await asyncio.wait_for(anext(stream), wait)
    except TimeoutError:
        return True
    return False


def versions(events: list[WatchEvent]) -> list[int]:
    return [int(event.resource_version) for event in events]
