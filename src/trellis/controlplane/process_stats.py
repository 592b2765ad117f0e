"""The process's own resource use, as Prometheus client libraries name it (`process_*`).

Read on demand, cheaply: CPU time from `os.times`, the descriptor limit from
`getrlimit`, and on Linux memory, open descriptors and the start time from
`/proc/self`. A value the platform cannot give is None and left out of the
exposition rather than reported as zero.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcessStats:
    cpu_seconds: float  # user + system
    max_fds: int | None = None
    open_fds: int | None = None
    resident_bytes: int | None = None
    virtual_bytes: int | None = None
    start_time: float | None = None  # Unix time


def read_process_stats(proc: Path = _PROC) -> ProcessStats:
    """This process's stats now; the `/proc` parts are None where `/proc` is missing."""
    times = os.times()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    stats = ProcessStats(
        cpu_seconds=times.user + times.system,
        max_fds=soft if soft != resource.RLIM_INFINITY else None,
    )
    try:
        # Fields after the parenthesised command name; index 0 is the state (field 3).
        fields = (proc / "self" / "stat").read_text().rpartition(")")[2].split()
        started_ticks, virtual, resident_pages = int(fields[19]), int(fields[20]), int(fields[21])
        open_fds = sum(1 for _ in (proc / "self" / "fd").iterdir())
        boot = _boot_time(proc)
    except (OSError, ValueError, IndexError):
        return stats
    return ProcessStats(
        cpu_seconds=stats.cpu_seconds,
        max_fds=stats.max_fds,
        open_fds=open_fds,
        virtual_bytes=virtual,
        resident_bytes=resident_pages * resource.getpagesize(),
        start_time=boot + started_ticks / os.sysconf("SC_CLK_TCK") if boot is not None else None,
    )


def _boot_time(proc: Path) -> float | None:
    """The kernel's boot time (`btime` of /proc/stat), which process start ticks count from."""
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None
