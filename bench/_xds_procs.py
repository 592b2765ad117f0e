"""The xDS benchmark's processes: `trellis control-plane`, the REST apply, the client processes."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import Pinning, cpu_seconds, free_port, log_tail, stop, wait_until_ready
from _servers import trellis_command

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Plane:
    """A started `trellis control-plane`."""

    proc: subprocess.Popen[bytes]
    api_url: str
    ads_address: str
    log: Path


def start_plane(
    workdir: Path,
    *,
    cpus: str | None,
    pinning: Pinning,
    debounce: float,
    log_level: str,
    profile: Path | None = None,
) -> Plane:
    """Start the control plane with a fresh data dir on free loopback ports; wait for its API.

    With `profile`, it runs under cProfile and writes its stats there when stopped.
    """
    data_dir = workdir / "data"
    ads_port, api_port = free_port(), free_port()
    command = trellis_command()
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "trellis.cli.main"]
    argv = [
        *command,
        "control-plane",
        "--data-dir",
        str(data_dir),
        "--xds-address",
        f"127.0.0.1:{ads_port}",
        "--api-host",
        "127.0.0.1",
        "--api-port",
        str(api_port),
        "--debounce",
        str(debounce),
        "--log-level",
        log_level,
    ]
    log = workdir / "control-plane.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            pinning.wrap(cpus, argv), stdout=sink, stderr=subprocess.STDOUT, cwd=workdir
        )
    plane = Plane(proc, f"http://127.0.0.1:{api_port}", f"127.0.0.1:{ads_port}", log)
    try:
        wait_until_ready(proc, f"{plane.api_url}/healthz", timeout=30.0, log=log)
    except BaseException:
        stop(proc)
        raise
    return plane


def quiet(pid: int, limit_s: float = 10.0) -> None:
    """Wait (at most `limit_s`) until the control plane uses under 5% of a core for 300 ms."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.3)
        if cpu_seconds(pid) - before < 0.015:
            return


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set size (VmHWM) of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class ApplyError(RuntimeError):
    """The control plane refused or failed an apply."""


@dataclass(frozen=True, slots=True)
class Applied:
    sent: float  # time.monotonic() before the request
    acked: float  # time.monotonic() after the whole response was read
    outcomes: dict[str, int]  # "created"/"configured"/"unchanged" -> count
    warnings: int  # analysis findings the control plane reported


def apply(api_url: str, documents: Sequence[dict[str, Any]], timeout: float = 120.0) -> Applied:
    """POST /api/v1/apply (JSON list); returns once the control plane acknowledged it."""
    body = json.dumps(list(documents)).encode()
    request = urllib.request.Request(
        f"{api_url}/api/v1/apply",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    sent = time.monotonic()
    try:
        with opener.open(request, timeout=timeout) as response:
            answer = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as error:
        raise ApplyError(f"apply answered {error.code}: {error.read()[:2000]!r}") from None
    acked = time.monotonic()
    if status != 200:
        raise ApplyError(f"apply answered {status}: {answer[:2000]!r}")
    outcomes: dict[str, int] = {}
    parsed = json.loads(answer)
    for item in parsed.get("results", []) if isinstance(parsed, dict) else []:
        outcome = str(item.get("outcome", "?"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    warnings = len(parsed.get("warnings", [])) if isinstance(parsed, dict) else 0
    return Applied(sent, acked, outcomes, warnings)


@dataclass(slots=True)
class Clients:
    """One process of simulated proxies and the events it has printed."""

    proc: subprocess.Popen[bytes]
    first: int
    count: int
    log: Path
    events: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()


def _read_events(clients: Clients) -> None:
    assert clients.proc.stdout is not None
    for line in clients.proc.stdout:
        try:
            clients.events.put(json.loads(line))
        except ValueError:
            continue
    clients.events.put(None)


def start_clients(
    ads_address: str,
    *,
    proxies: int,
    services: int,
    per_process: int,
    workdir: Path,
    cpus: str | None,
    pinning: Pinning,
    protocol: str = "sotw",
    vhds: bool = False,
) -> list[Clients]:
    """Start ceil(proxies / per_process) client processes (speaking `protocol`: sotw or
    delta, with VHDS when `vhds` and delta) and wait until each is ready."""
    started: list[Clients] = []
    try:
        for first in range(0, proxies, per_process):
            count = min(per_process, proxies - first)
            log = workdir / f"clients-{first}.log"
            argv = [
                sys.executable,
                str(BENCH_DIR / "_xds_clients.py"),
                "--ads",
                ads_address,
                "--first",
                str(first),
                "--count",
                str(count),
                "--services",
                str(services),
                "--protocol",
                protocol,
                "--vhds",
                "on" if vhds else "off",
            ]
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    pinning.wrap(cpus, argv),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=sink,
                )
            clients = Clients(proc, first, count, log)
            started.append(clients)
            threading.Thread(target=_read_events, args=(clients,), daemon=True).start()
        wait_for(started, "ready", None, timeout=60.0)
    except BaseException:
        stop_clients(started)
        raise
    return started


def wait_for(
    fleet: Sequence[Clients], event: str, event_id: object, timeout: float
) -> list[dict[str, Any] | None]:
    """The `event` (with `id` = `event_id` when given) from every process; None on timeout."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any] | None] = [None] * len(fleet)
    for index, clients in enumerate(fleet):
        while found[index] is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                message = clients.events.get(timeout=left)
            except queue.Empty:
                break
            if message is None:
                raise RuntimeError(
                    f"client process {clients.first}.. exited with {clients.proc.wait()}"
                    + log_tail(clients.log)
                )
            if message.get("event") == event and (
                event_id is None or message.get("id") == event_id
            ):
                found[index] = message
    return found


def stop_clients(fleet: Sequence[Clients]) -> None:
    """Ask each process to quit, then stop it by PID."""
    for clients in fleet:
        if clients.proc.poll() is None:
            with contextlib.suppress(OSError):
                clients.send({"cmd": "quit"})
    for clients in fleet:
        try:
            clients.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop(clients.proc, grace=5.0)
        if clients.proc.stdin is not None:
            clients.proc.stdin.close()
