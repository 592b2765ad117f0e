"""Small HTTP clients for the tests: http.client requests, raw socket exchanges, RSS sampling."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    elapsed: float

    def header(self, name: str) -> str | None:
        lname = name.lower()
        vals = [v for k, v in self.headers if k.lower() == lname]
        return ",".join(vals) if vals else None

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def __str__(self) -> str:
        return f"{self.status} {dict(self.headers)} {self.body[:300]!r}"


def request(
    port: int,
    method: str = "GET",
    path: str = "/",
    *,
    host: str = "svc",
    headers: Mapping[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
    timeout: float = 10.0,
    encode_chunked: bool = False,
) -> Response:
    """One request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        return send(
            conn, method, path, host=host, headers=headers, body=body, encode_chunked=encode_chunked
        )
    finally:
        conn.close()


def send(
    conn: http.client.HTTPConnection,
    method: str = "GET",
    path: str = "/",
    *,
    host: str = "svc",
    headers: Mapping[str, str] | None = None,
    body: bytes | Iterable[bytes] | None = None,
    encode_chunked: bool = False,
) -> Response:
    """One request on an existing (keep-alive) connection."""
    hdrs = {"Host": host, **(headers or {})}
    start = time.monotonic()
    conn.request(method, path, body=body, headers=hdrs, encode_chunked=encode_chunked)
    resp = conn.getresponse()
    data = resp.read()
    return Response(resp.status, tuple(resp.getheaders()), data, time.monotonic() - start)


@dataclass(frozen=True, slots=True)
class RawResult:
    data: bytes
    closed: bool  # the peer closed (EOF or reset) before the timeout
    reset: bool
    elapsed: float

    @property
    def status(self) -> int | None:
        return status_of(self.data)

    def __str__(self) -> str:
        return f"closed={self.closed} reset={self.reset} data={self.data[:400]!r}"


def status_of(data: bytes) -> int | None:
    """The status of the first non-1xx response in `data`, if any."""
    rest = data
    while rest.startswith(b"HTTP/"):
        head, _, rest = rest.partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) < 2 or not parts[1].isdigit():
            return None
        code = int(parts[1])
        if code >= 200 or code == 101:
            return code
    return None


def read_until_closed(sock: socket.socket, timeout: float) -> RawResult:
    """Read until EOF, reset or `timeout` seconds."""
    start = time.monotonic()
    deadline = start + timeout
    buf = bytearray()
    closed = reset = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = reset = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
    return RawResult(bytes(buf), closed, reset, time.monotonic() - start)


def raw_exchange(
    port: int, data: bytes, *, timeout: float = 5.0, shut_write: bool = False
) -> RawResult:
    """Send raw bytes on a fresh connection and read until the proxy closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if shut_write:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(sock, timeout)


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssMonitor:
    """Samples a process's RSS in a thread; `peak_kb` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline_kb = rss_kb(pid)
        self.peak_kb = self.baseline_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(OSError, AssertionError):
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @property
    def growth_mb(self) -> float:
        return (self.peak_kb - self.baseline_kb) / 1024
