"""The workload's sidecar: a `trellis proxy` child process, its readiness and its end.

Ready means what the application needs before its first request: the
proxy's admin `/ready` says `LIVE` (certificate obtained, first config
applied), its `/config_dump` holds the outbound and inbound listeners, and
both accept TCP connections. A listener the proxy could not bind shows as the
control plane's record of the rejected update (`address already in use`),
which `wait_ready` reports as a `PortClashError` so the launcher can retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from trellis.platform.child import describe_exit, spawn, stop
from trellis.platform.spec import LOOPBACK, LaunchError

POLL = 0.1
REJECTION_EVERY = 5
"""Ask the control plane for rejected updates every this many polls."""
TAIL_LINES = 25
IN_USE = "address already in use"
_TCP_LISTEN = "0A"
"""The state column of a listening socket in /proc/net/tcp."""


class SidecarError(LaunchError):
    """The sidecar failed to start or died; the message ends with its log's tail."""


class PortClashError(SidecarError):
    """A port of the sidecar was taken by someone else between allocation and bind."""


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


def listener_names(dump: Mapping[str, Any]) -> set[str]:
    """The names of the dynamic listeners in an admin `/config_dump`."""
    names: set[str] = set()
    for section in dump.get("configs", []):
        if str(section.get("@type", "")).endswith("ListenersConfigDump"):
            for item in section.get("dynamic_listeners", []):
                if item.get("active_state") and item.get("name"):
                    names.add(str(item["name"]))
    return names


async def accepts(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on `host`:`port` (1 s bound)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of process `pid`
    (Linux: its /proc/PID/net/tcp and tcp6). False when the process is gone.

    Transparent capture: a connection from outside to the application's port
    would reach the sidecar (iptables), so only the namespace's own table
    tells whether the application listens.
    """
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            listens = len(fields) > 3 and fields[3] == _TCP_LISTEN
            if listens and int(fields[1].rpartition(":")[2], 16) == port:
                return True
    return False


class Sidecar:
    """One `trellis proxy` child; its output goes to `log_path`."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        admin_port: int,
        log_path: Path,
        host: str = LOOPBACK,
    ) -> None:
        """`host`: where the sidecar's admin port and listeners are reached."""
        self.command = list(command)
        self.env = dict(env)
        self.host = host
        self.admin = f"http://{host}:{admin_port}"
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._http = httpx.AsyncClient(timeout=1.0)

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await spawn(
                self.command,
                self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def tail(self) -> str:
        return log_tail(self.log_path)

    def _exited(self) -> SidecarError | None:
        process = self.process
        if process is None or process.returncode is None:
            return None
        tail = self.tail()
        kind = PortClashError if IN_USE in tail.lower() else SidecarError
        ended = describe_exit(process.returncode)
        return kind(f"the sidecar ended ({ended}) before it was ready; its log:\n{tail}")

    async def _admin(self, path: str) -> httpx.Response | None:
        try:
            return await self._http.get(self.admin + path)
        except httpx.HTTPError:
            return None

    async def listeners(self) -> set[str]:
        response = await self._admin("/config_dump")
        if response is None or response.status_code != 200:
            return set()
        try:
            return listener_names(response.json())
        except ValueError:
            return set()

    async def wait_ready(
        self,
        listeners: Mapping[str, int | None],
        seconds: float,
        rejection: Callable[[], Awaitable[str | None]],
    ) -> None:
        """Wait until LIVE with `listeners` (name -> port, None: not reachable from here)
        accepting; at most `seconds`.

        `rejection` returns the proxy's last rejected update (from the control
        plane), if any: a listener it could not bind keeps it from getting
        ready, and is reported as PortClashError.
        """
        deadline = time.monotonic() + seconds
        state = "not started"
        for attempt in range(int(seconds / POLL) + 1):
            failure = self._exited()
            if failure is not None:
                raise failure
            response = await self._admin("/ready")
            if response is None:
                state = "admin port not answering"
            elif response.status_code != 200:
                state = response.text.strip() or str(response.status_code)
            else:
                state = await self._check_listeners(listeners)
                if not state:
                    return
            if response is not None and attempt % REJECTION_EVERY == 0:
                reason = await rejection()
                if reason and IN_USE in reason.lower():
                    raise PortClashError(f"the sidecar could not bind a listener: {reason}")
                if reason:
                    state += f"; last rejected update: {reason}"
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        raise SidecarError(
            f"the sidecar was not ready within {seconds:g}s ({state}); its log:\n{self.tail()}"
        )

    async def _check_listeners(self, listeners: Mapping[str, int | None]) -> str:
        """What is still missing ('' when nothing)."""
        missing = sorted(set(listeners) - await self.listeners())
        if missing:
            return f"LIVE, waiting for listeners {', '.join(missing)}"
        for name, port in listeners.items():
            if port is not None and not await accepts(port, self.host):
                return f"listener {name} on port {port} does not accept connections"
        return ""

    @property
    def pid(self) -> int:
        return -1 if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def stop(self, grace: float) -> int | None:
        """SIGTERM (the proxy drains), SIGKILL after `grace`; None if never started."""
        await self._http.aclose()
        if self.process is None:
            return None
        return await stop(self.process, grace, group=False)
