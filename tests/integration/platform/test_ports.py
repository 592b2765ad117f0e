"""Port reservation for sidecars that share a machine (real sockets on 127.0.0.1)."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trellis.platform.ports import PortAllocator, bindable
from trellis.platform.spec import LaunchError

HOLD = """
import sys, time
from pathlib import Path
from trellis.platform.ports import PortAllocator
lease = PortAllocator(Path(sys.argv[1]), range(int(sys.argv[2]), int(sys.argv[3]))).allocate(4)
print(" ".join(map(str, lease.ports)), flush=True)
sys.stdin.read()  # hold the ports until the test closes stdin
"""


def free_block(size: int) -> int:
    """The first port of `size` consecutive bindable ports in the allocator's usual range."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(20000, 32000 - size)
        if all(bindable(port) for port in range(start, start + size)):
            return start
    raise AssertionError("no free block of ports")


def test_concurrent_launchers_never_share_a_port(tmp_path: Path) -> None:
    start = free_block(12)
    ports = range(start, start + 12)
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD, str(tmp_path), str(ports.start), str(ports.stop)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        taken = []
        for holder in holders:
            assert holder.stdout is not None
            taken += [int(port) for port in holder.stdout.readline().split()]
        assert len(taken) == 8 and len(set(taken)) == 8, taken
        # This process gets the rest, and no more while the holders live.
        mine = PortAllocator(tmp_path, ports).allocate(4)
        assert sorted([*taken, *mine.ports]) == list(ports)
        with pytest.raises(LaunchError, match="no free loopback port"):
            PortAllocator(tmp_path, ports).allocate(1)
        mine.release()
    finally:
        for holder in holders:
            holder.communicate("", timeout=10)
    # The holders ended (their locks went with them): everything is free again.
    everything = PortAllocator(tmp_path, ports).allocate(12)
    assert len(everything.ports) == 12
    everything.release()


def test_a_port_someone_listens_on_is_skipped(tmp_path: Path) -> None:
    start = free_block(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", start + 1))
        squatter.listen()
        lease = PortAllocator(tmp_path, range(start, start + 3)).allocate(2)
        assert sorted(lease.ports) == [start, start + 2]
        lease.release()


def test_a_chosen_application_port_is_reserved(tmp_path: Path) -> None:
    start = free_block(2)
    allocator = PortAllocator(tmp_path, range(start, start + 2))
    chosen = allocator.reserve(start)
    with pytest.raises(LaunchError, match=f"--port {start}: the port belongs to another"):
        allocator.reserve(start)
    other = allocator.allocate(1)
    assert other.ports == (start + 1,)
    other.release()
    chosen.release()
