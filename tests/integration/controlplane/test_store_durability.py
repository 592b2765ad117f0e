"""An acknowledged apply survives kill -9 of the process that made it (DESIGN.md section 7)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from trellis.controlplane.sqlite_store import SqliteConfigStore

# Applies two-resource batches as fast as it can and reports each acknowledged one.
WRITER = """
import asyncio, sys
from pathlib import Path
from trellis.controlplane.sqlite_store import SqliteConfigStore
from trellis.controlplane.store import ResourceWrite

def item(name):
    return ResourceWrite("networking.istio.io/v1", "ServiceEntry", "default", name,
                         {"hosts": [name + ".example.com"], "resolution": "STATIC"})

async def main():
    store = await SqliteConfigStore.open(Path(sys.argv[1]))
    for i in range(10_000):
        await store.apply([item(f"se-{i}-a"), item(f"se-{i}-b")])
        print(f"acked {i}", flush=True)

asyncio.run(main())
"""

ACKS_BEFORE_KILL = 20


def test_acknowledged_applies_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "config.db"
    stderr_path = tmp_path / "writer.stderr"
    acked: list[int] = []
    with (
        stderr_path.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as child,
    ):
        watchdog = threading.Timer(30.0, child.kill)
        watchdog.start()
        try:
            assert child.stdout is not None
            for _ in range(ACKS_BEFORE_KILL):
                line = child.stdout.readline()
                if not line:
                    break
                acked.append(int(line.removeprefix("acked ")))
            # kill -9 right after the acknowledgement, while later writes are in flight
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            watchdog.cancel()
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
    assert acked == list(range(ACKS_BEFORE_KILL)), stderr_path.read_text()
    assert child.returncode == -signal.SIGKILL

    async def reopen() -> tuple[set[str], int]:
        async with await SqliteConfigStore.open(path) as store:
            names = {r.name for r in await store.list("ServiceEntry", "default")}
            return names, int(await store.current_version())

    names, version = asyncio.run(asyncio.wait_for(reopen(), 10))
    for i in acked:
        assert {f"se-{i}-a", f"se-{i}-b"} <= names, f"acknowledged batch {i} was lost"
    # whatever survived beyond the acks is whole batches, matching the version counter
    assert len(names) % 2 == 0
    assert version == len(names)
