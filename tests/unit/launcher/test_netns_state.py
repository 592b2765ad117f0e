"""The workload networks' state directory: records, and locks that say who is alive."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trellis.platform import netns_state as state
from trellis.platform.netns_rules import NetworkError, NetworkRecord
from trellis.platform.paths import release


def record(network_id: str, address: str = "10.213.0.2") -> NetworkRecord:
    return NetworkRecord(
        network_id=network_id,
        workload="web",
        namespace=f"trellis-{network_id}",
        host_veth=f"trellis{network_id}",
        bridge="trellis0",
        subnet="10.213.0.0/24",
        address=address,
        pid=os.getpid(),
        start_time=state.process_start_time(os.getpid()),
    )


def test_the_state_dir_is_private_and_made_with_its_parents(tmp_path: Path) -> None:
    folder = state.state_dir(tmp_path / "run" / "trellis" / "net")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_record_is_alive_while_its_lock_is_held(tmp_path: Path) -> None:
    folder = state.state_dir(tmp_path / "net")
    with state.state_lock(folder):
        fd = state.hold_record(folder, "0a1b2c")
        state.write_record(folder, record("0a1b2c"))
        state.write_record(folder, record("ffffff", "10.213.0.3"))  # nobody holds it
        with pytest.raises(NetworkError, match="already held"):
            state.hold_record(folder, "0a1b2c")
        found = {s.record.network_id: s.alive for s in state.read_records(folder)}
    assert found == {"0a1b2c": True, "ffffff": False}
    release(fd)  # as the kernel does when the launcher dies
    assert [s.alive for s in state.read_records(folder)] == [False, False]
    state.forget(folder, "0a1b2c")
    assert [s.record.network_id for s in state.read_records(folder)] == ["ffffff"]
    assert not state.lock_path(folder, "0a1b2c").exists()


def test_unreadable_records_are_skipped(tmp_path: Path) -> None:
    folder = state.state_dir(tmp_path / "net")
    (folder / "junk.json").write_text("{not json")
    state.write_record(folder, record("0a1b2c"))
    assert [s.record.network_id for s in state.read_records(folder)] == ["0a1b2c"]


def test_the_state_lock_waits_a_bounded_time(tmp_path: Path) -> None:
    folder = state.state_dir(tmp_path / "net")
    with (
        state.state_lock(folder),
        pytest.raises(NetworkError, match="held this lock"),
        state.state_lock(folder, wait=0.2),
    ):
        pass  # pragma: no cover


def test_process_start_time_tells_processes_apart() -> None:
    assert state.process_start_time(os.getpid()) > 0
    assert state.process_start_time(1) <= state.process_start_time(os.getpid())
    assert state.process_start_time(2**22 + 12345) == 0  # no such process
