"""Loopback ports for sidecars that share one machine, allocated without collisions.

Binding port 0 and closing the socket leaves a window in which another
process (often another launcher doing the same) gets the same port, and the
proxy cannot take over a bound socket. So a port is *reserved*, not probed:

1. Candidates come from below the kernel's ephemeral range
   (`net.ipv4.ip_local_port_range`), so outgoing connections and `bind(0)`
   never take them; they are tried from a random start.
2. A candidate is reserved by holding `flock` on `ports/<port>.lock` in the
   user's runtime directory for as long as the workload runs: launchers never
   hand out the same port twice, and a launcher that dies releases its ports
   with its last breath (the kernel drops the locks).
3. A reserved port must also bind on 127.0.0.1 right now (with SO_REUSEADDR,
   as the proxy binds), which skips ports some other program listens on.

What is left is a program outside Trellis binding the port explicitly
between steps 3 and the proxy's bind; the launcher sees that as a port clash
(`address already in use`) and starts over with new ports.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trellis.platform.paths import private_dir, release, try_lock
from trellis.platform.spec import LaunchError

LOWEST = 20000
"""Below: conventional service ports (8080, 9090, 15000-15021, ...)."""
SMALLEST_RANGE = 1000
MAX_TRIES = 500


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default when it cannot be read)."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def candidate_range(ephemeral: tuple[int, int]) -> range:
    """Ports to allocate from: [20000, ephemeral low), else above the ephemeral range."""
    low, high = ephemeral
    if low - LOWEST >= SMALLEST_RANGE:
        return range(LOWEST, low)
    if 65536 - (high + 1) >= SMALLEST_RANGE:
        return range(high + 1, 65536)
    return range(1024, 65536)


def candidates(ports: range, rng: random.Random) -> Iterator[int]:
    """Every port of `ports` once, starting at a random one."""
    start = rng.randrange(len(ports))
    for offset in range(len(ports)):
        yield ports[(start + offset) % len(ports)]


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind `host:port` now (SO_REUSEADDR, like the proxy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(slots=True)
class PortLease:
    """Ports reserved for one workload; `release()` gives them back."""

    ports: tuple[int, ...]
    _locks: list[int] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for fd in self._locks:
            release(fd)
        self._locks.clear()


class PortAllocator:
    """Reserves loopback ports under `<runtime base>/ports` (see the module's docstring)."""

    def __init__(
        self,
        base: Path,
        ports: range | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._folder = base / "ports"
        self._ports = ports if ports is not None else candidate_range(ephemeral_range())
        self._rng = rng or random.Random()

    def allocate(self, count: int, avoid: Iterable[int] = ()) -> PortLease:
        """`count` distinct reserved ports, none of `avoid`; LaunchError if none are left."""
        folder = private_dir(self._folder)
        lease = PortLease(())
        found: list[int] = []
        skip = set(avoid)
        try:
            for tries, port in enumerate(candidates(self._ports, self._rng)):
                if len(found) == count or tries >= MAX_TRIES:
                    break
                if port in skip:
                    continue
                fd = try_lock(folder / f"{port}.lock")
                if fd is None:
                    continue  # another launcher holds it
                if not bindable(port):
                    release(fd)
                    continue
                lease._locks.append(fd)
                found.append(port)
        except BaseException:
            lease.release()
            raise
        if len(found) < count:
            lease.release()
            raise LaunchError(
                f"no free loopback port in {self._ports.start}-{self._ports.stop - 1} "
                f"after {MAX_TRIES} tries"
            )
        lease.ports = tuple(found)
        return lease

    def reserve(self, port: int) -> PortLease:
        """Reserve a port the user chose, so no launcher hands it out meanwhile.

        LaunchError when another launcher holds it (one of its sidecar's ports).
        """
        fd = try_lock(private_dir(self._folder) / f"{port}.lock")
        if fd is None:
            raise LaunchError(f"--port {port}: the port belongs to another workload's sidecar")
        return PortLease((port,), [fd])
