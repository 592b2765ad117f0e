"""The state directory of workload networks: one record per network, and locks.

`<state_dir>/lock` is held (flock) while a launcher changes the bridge or the
records, so two launchers never take the same address or remove a bridge the
other is joining. Each network has `<id>.json` (its `NetworkRecord`) and
`<id>.lock`, held by the launcher that made it for as long as it lives: the
kernel drops the lock when that process ends, however it ends, so a free
lock marks a network a crashed launcher left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trellis.platform.netns_rules import NetworkError, NetworkRecord
from trellis.platform.paths import private_dir, release, try_lock
from trellis.runtime.files import write_file_atomically

LOCK_WAIT = 30.0
LOCK_POLL = 0.05
RECORD_SUFFIX = ".json"
SCAN_LIMIT = 1000


def state_dir(path: Path) -> Path:
    """`path` as a private directory (0700, parents made as needed)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    return private_dir(path)


@contextlib.contextmanager
def state_lock(path: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the state directory's lock (waiting at most `wait` seconds for it)."""
    lock_file = state_dir(path) / "lock"
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise NetworkError(
                        f"{lock_file}: another trellis run held this lock for {wait:.0f} s"
                    ) from None
                time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)


def process_start_time(pid: int) -> int:
    """When process `pid` started, in clock ticks after boot (0 when unknown)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (IndexError, ValueError):
        return 0


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record read from the state directory, and whether its launcher still lives."""

    record: NetworkRecord
    alive: bool


def record_path(directory: Path, network_id: str) -> Path:
    return directory / f"{network_id}{RECORD_SUFFIX}"


def lock_path(directory: Path, network_id: str) -> Path:
    return directory / f"{network_id}.lock"


def hold_record(directory: Path, network_id: str) -> int:
    """Take the lock that says this network's launcher lives (call under `state_lock`)."""
    fd = try_lock(lock_path(directory, network_id))
    if fd is None:
        raise NetworkError(f"network {network_id} is already held by another launcher")
    return fd


def write_record(directory: Path, record: NetworkRecord) -> None:
    """Store `record` atomically (a reader sees the old file or the new one)."""
    write_file_atomically(record_path(directory, record.network_id), record.to_json().encode())


def read_records(directory: Path) -> list[StoredRecord]:
    """Every record, each marked alive when its launcher holds its lock (call under the lock)."""
    stored = []
    for path in sorted(directory.glob(f"*{RECORD_SUFFIX}"))[:SCAN_LIMIT]:
        try:
            record = NetworkRecord.from_json(path.read_text())
        except (OSError, NetworkError):
            continue
        stored.append(StoredRecord(record, _held(directory, record.network_id)))
    return stored


def _held(directory: Path, network_id: str) -> bool:
    try:
        fd = try_lock(lock_path(directory, network_id), create=False)
    except FileNotFoundError:
        return False
    if fd is None:
        return True
    release(fd)
    return False


def forget(directory: Path, network_id: str) -> None:
    """Remove a network's record and lock file."""
    for path in (record_path(directory, network_id), lock_path(directory, network_id)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
