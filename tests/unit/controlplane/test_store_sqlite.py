"""What only the SQLite store promises: persistence across reopen, its file format, errors."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from trellis.controlplane.sqlite_store import SqliteConfigStore
from trellis.controlplane.sqlite_worker import BACKLOG_PAGE
from trellis.controlplane.store import ApplyOutcome, StoreError, WatchEventType

from .store_helpers import run, take, versions, write


def test_reopen_keeps_resources_versions_and_change_log(tmp_path: Path) -> None:
    path = tmp_path / "config.db"

    async def main() -> None:
        async with await SqliteConfigStore.open(path) as store:
            await store.apply([write("a", labels={"app": "a"}), write("b")])
            await store.apply([write("a", spec={"hosts": ["a2"]})])
            await store.delete("VirtualService", "default", "b")
            before = await store.list()

        async with await SqliteConfigStore.open(path) as store:
            assert await store.current_version() == "4"
            assert await store.list() == before
            (result,) = await store.apply([write("c")])
            assert result.resource.resource_version == "5"
            # an apply replaces labels too: the update above dropped app=a
            (same,) = await store.apply([write("a", spec={"hosts": ["a2"]})])
            assert same.outcome is ApplyOutcome.UNCHANGED
            events = await take(store.watch(since="0"), 5)
            assert versions(events) == [1, 2, 3, 4, 5]
            assert [(e.type, e.resource.name) for e in events] == [
                (WatchEventType.ADDED, "a"),
                (WatchEventType.ADDED, "b"),
                (WatchEventType.MODIFIED, "a"),
                (WatchEventType.DELETED, "b"),
                (WatchEventType.ADDED, "c"),
            ]
            assert events[2].resource == before[0]
            assert events[0].resource.labels == {"app": "a"}
            assert events[0].resource.spec == {"hosts": ["a"]}
            assert dict(events[2].resource.labels) == {}

    run(main)


def test_file_uses_wal_and_the_documented_schema(tmp_path: Path) -> None:
    path = tmp_path / "config.db"

    async def main() -> None:
        async with await SqliteConfigStore.open(path, change_log_limit=2) as store:
            for i in range(4):
                await store.apply([write(f"r{i}")])

    run(main)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {"resources", "changes", "meta"} <= tables
        assert conn.execute("SELECT value FROM meta WHERE key='version'").fetchone() == ("4",)
        # the change log is bounded
        assert [v for (v,) in conn.execute("SELECT version FROM changes ORDER BY version")] == [
            3,
            4,
        ]
        row = conn.execute(
            "SELECT kind, namespace, name, resource_version, generation FROM resources"
            " WHERE name='r3'"
        ).fetchone()
        assert row == ("VirtualService", "default", "r3", 4, 1)
    conn.close()


def test_missing_directory_and_foreign_file_are_named(tmp_path: Path) -> None:
    async def main() -> None:
        missing = tmp_path / "no-such-dir" / "config.db"
        with pytest.raises(StoreError, match="no-such-dir"):
            await SqliteConfigStore.open(missing)
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not a database, just some bytes " * 100)
        with pytest.raises(StoreError, match=r"garbage\.db"):
            await SqliteConfigStore.open(garbage)

    run(main)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.db"

    async def main() -> None:
        async with await SqliteConfigStore.open(path):
            pass

    run(main)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema'")
    conn.close()

    async def reopen() -> None:
        with pytest.raises(StoreError, match="schema version 99"):
            await SqliteConfigStore.open(path)

    run(reopen)


def test_sqlite_work_runs_off_the_event_loop(tmp_path: Path) -> None:
    """A large apply commits on the worker thread while the loop keeps ticking."""
    path = tmp_path / "config.db"

    async def main() -> None:
        async with await SqliteConfigStore.open(path) as store:
            ticks = 0
            done = False

            async def ticker() -> None:
                nonlocal ticks
                while not done and ticks < 100_000:
                    ticks += 1
                    await asyncio.sleep(0)

            task = asyncio.create_task(ticker())
            big = {"hosts": [f"h{i}.example.com" for i in range(200)]}
            started = time.monotonic()
            await store.apply([write(f"r{i}", spec=big) for i in range(300)])
            elapsed = time.monotonic() - started
            done = True
            await task
            # the loop ran other work while the batch was prepared and committed
            assert ticks > 3, (ticks, elapsed)

    run(main)


def test_replay_longer_than_one_page_of_the_change_log(tmp_path: Path) -> None:
    async def main() -> None:
        async with await SqliteConfigStore.open(tmp_path / "config.db") as store:
            total = BACKLOG_PAGE + 150
            await store.apply([write(f"r{i}") for i in range(total)])
            events = await take(store.watch(since="0"), total)
            assert versions(events) == list(range(1, total + 1))

    run(main)
