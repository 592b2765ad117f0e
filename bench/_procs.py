"""Process helpers for the benchmark: start, stop, probe, and read CPU and memory from /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPUs the proxy under test and the load side (wrk, upstream) run on."""

    proxy_cpus: str | None
    load_cpus: str | None
    note: str

    def wrap(self, cpus: str | None, argv: list[str]) -> list[str]:
        """Prefix `argv` with `taskset -c CPUS` when pinning is on."""
        return ["taskset", "-c", cpus, *argv] if cpus is not None else argv


def choose_pinning(proxy_cpus: str, load_cpus: str, enabled: bool) -> Pinning:
    """Decide pinning from the options and what this machine has."""
    if not enabled:
        return Pinning(None, None, "pinning disabled (--no-pin)")
    if shutil.which("taskset") is None:
        return Pinning(None, None, "taskset not found: processes are not pinned")
    available = len(os.sched_getaffinity(0))
    if available < 2:
        return Pinning(None, None, f"only {available} CPU available: processes are not pinned")
    return Pinning(proxy_cpus, load_cpus, f"proxy on CPU {proxy_cpus}, wrk+upstream on {load_cpus}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state=0, ppid=1, ..., utime=11, stime=12.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of one process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpus_allowed(pid: int) -> str:
    """The CPU list a process may run on (`Cpus_allowed_list` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds summed over `pid` and its descendants (nginx: master + workers)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


def tree_rss_bytes(pid: int) -> int:
    """VmRSS summed over `pid` and its descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += rss_bytes(member)
    return total


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a process we started, and any children it left, by PID."""
    if proc.poll() is not None:
        return
    family = process_tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    for pid in family[1:]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET `url` without a proxy from the environment; returns (status, body)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def wait_until_ready(
    proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path | None = None
) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}{log_tail(log)}")
        try:
            status, _ = http_get(url, timeout=1.0)
        except OSError as error:
            last = str(error)
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s ({last}){log_tail(log)}")


def log_tail(log: Path | None, lines: int = 20) -> str:
    """The last lines of a log file, headed by its name (empty if missing)."""
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- {log} (tail) ---\n" + "\n".join(tail)
