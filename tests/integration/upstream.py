"""A controllable HTTP/1.1 upstream that records what it receives.

Runs an asyncio server on 127.0.0.1 (port 0) in a background thread. The path
selects the behaviour (`/status/N`, `/delay/S`, `/echo`, `/sink`, `/bytes/N`,
`/close`, `/bye`, `/raw/KIND/N`, `/bigheader/N`, `/hop`, `/headers`,
`/flaky/KEY/N/<behaviour>`); anything else answers 200.
Every response names the upstream in `x-upstream` and the connection in
`x-upstream-connection`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

KEPT_BODY_BYTES = 4 * 1024 * 1024
WRITE_CHUNK = 64 * 1024
READ_LIMIT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One complete request as the upstream saw it."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body_length: int
    body: bytes  # at most KEPT_BODY_BYTES; empty for /sink
    chunked: bool
    connection_id: int

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return ",".join(values) if values else None


class _BadRequestError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Head:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        lname = name.lower()
        vals = [v for k, v in self.headers if k.lower() == lname]
        return ",".join(vals) if vals else None


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequestError(lines[0])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequestError(line)
        headers.append((name, value.strip()))
    return _Head(parts[0], parts[1], parts[2], tuple(headers))


class HttpUpstream:
    """The upstream server; start() binds, stop() closes everything."""

    def __init__(
        self, name: str = "upstream", *, hold_all: bool = False, always_status: int | None = None
    ) -> None:
        self.name = name
        self.port = 0
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        self._accepted = 0
        self._active = 0
        self._peak_active = 0
        self._flaky: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._release: asyncio.Event | None = None
        self._hold_all = hold_all
        self._always_status = always_status

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> HttpUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._release = asyncio.Event()
        self._server = await asyncio.start_server(
            self._on_connection, "127.0.0.1", 0, limit=READ_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def release_held(self) -> None:
        """Let every request held by `hold_all` (or `/hold`) finish."""
        release = self._release
        if release is not None:
            self._loop.call_soon_threadsafe(release.set)

    # --- observations --------------------------------------------------------------

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def connections_accepted(self) -> int:
        with self._lock:
            return self._accepted

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    @property
    def peak_active(self) -> int:
        with self._lock:
            return self._peak_active

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._accepted = 0
            self._peak_active = self._active

    # --- serving -------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._accepted += 1
            conn_id = self._accepted
        try:
            while await self._serve_one(reader, writer, conn_id):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except _BadRequestError:
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int
    ) -> bool:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return False
        head = _parse_head(raw[:-4])
        if (head.get("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        path = urlsplit(head.target).path
        query = parse_qs(urlsplit(head.target).query)
        with self._lock:
            self._active += 1
            self._peak_active = max(self._peak_active, self._active)
        try:
            if "pause" in query:
                await asyncio.sleep(float(query["pause"][0]))
            keep = 0 if path.startswith("/sink") else KEPT_BODY_BYTES
            body, length, chunked = await self._read_body(reader, head, keep)
            self._record(head, body, length, chunked, conn_id)
            return await self._respond(writer, head, path, body, length, conn_id)
        finally:
            with self._lock:
                self._active -= 1

    async def _read_body(
        self, reader: asyncio.StreamReader, head: _Head, keep: int
    ) -> tuple[bytes, int, bool]:
        kept = bytearray()
        length = 0
        te = (head.get("transfer-encoding") or "").lower()
        if "chunked" in te:
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return bytes(kept), length, True
                remaining = size
                while remaining:
                    data = await reader.read(min(remaining, WRITE_CHUNK))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    remaining -= len(data)
                    length += len(data)
                    if len(kept) < keep:
                        kept += data[: keep - len(kept)]
                await reader.readexactly(2)
        remaining = int(head.get("content-length") or "0")
        while remaining:
            data = await reader.read(min(remaining, WRITE_CHUNK))
            if not data:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(data)
            length += len(data)
            if len(kept) < keep:
                kept += data[: keep - len(kept)]
        return bytes(kept), length, False

    def _record(self, head: _Head, body: bytes, length: int, chunked: bool, conn_id: int) -> None:
        req = ReceivedRequest(
            head.method, head.target, head.version, head.headers, length, body, chunked, conn_id
        )
        with self._lock:
            self._requests.append(req)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        head: _Head,
        path: str,
        body: bytes,
        length: int,
        conn_id: int,
    ) -> bool:
        parts = [p for p in path.split("/") if p]
        if self._hold_all or parts[:1] == ["hold"]:
            assert self._release is not None
            await self._release.wait()
        if parts[:1] == ["flaky"] and len(parts) >= 3:
            key, times = parts[1], int(parts[2])
            with self._lock:
                self._flaky[key] += 1
                hit = self._flaky[key]
            parts = parts[3:] if hit <= times else []
        status, extra, payload, size = 200, [("content-type", "text/plain")], b"", -1
        silent_close = False
        query = parse_qs(urlsplit(head.target).query)
        chunked = "chunked" in query
        match parts:
            case ["status", code, *_]:
                status = int(code)
                payload = f"status {code} from {self.name}".encode()
            case ["delay", seconds, *_]:
                await asyncio.sleep(float(seconds))
                payload = f"delayed {seconds} from {self.name}".encode()
            case ["echo", *_]:
                payload = body
            case ["sink", *_]:
                payload = json.dumps({"length": length}).encode()
            case ["headers", *_]:
                payload = json.dumps([list(h) for h in head.headers]).encode()
            case ["bytes", n, *_]:
                size = int(n)
            case ["close", *_]:
                return False
            case ["raw", kind, n, *_]:
                await _write_broken(writer, kind, int(n))
                return False
            case ["bye", *_]:  # answer as if keeping the connection, then close it
                payload, silent_close = b"bye", True
            case ["bigheader", n, *_]:
                extra.append(("x-big", "h" * int(n)))
                payload = b"big"
            case ["hop", *_]:
                extra += [("connection", "x-resp-hop"), ("x-resp-hop", "1")]
                extra += [("keep-alive", "timeout=5"), ("proxy-connection", "keep-alive")]
                payload = b"hop"
            case _:
                payload = f"ok from {self.name}".encode()
        if self._always_status is not None:
            status = self._always_status
        close = (head.get("connection") or "").lower() == "close" or head.version == "HTTP/1.0"
        close = close or "close" in query  # ?close=1: answer with connection: close, then close
        lines = [f"HTTP/1.1 {status} X", f"x-upstream: {self.name}"]
        lines += [f"x-upstream-connection: {conn_id}", "x-remove-me: yes", "server: test-upstream"]
        lines += [f"{k}: {v}" for k, v in extra]
        total = size if size >= 0 else len(payload)
        if status in (204, 304):
            pass  # no body and no framing headers
        elif chunked:
            lines.append("transfer-encoding: chunked")
        else:
            lines.append(f"content-length: {total}")
        if close:
            lines.append("connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if head.method != "HEAD" and status >= 200 and status not in (204, 304):
            await self._write_body(writer, payload, size, chunked)
        await writer.drain()
        return not close and not silent_close

    async def _write_body(
        self, writer: asyncio.StreamWriter, payload: bytes, size: int, chunked: bool
    ) -> None:
        if size >= 0:
            block = b"x" * WRITE_CHUNK
            remaining = size
            while remaining:
                piece = block[: min(remaining, WRITE_CHUNK)]
                remaining -= len(piece)
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
        elif payload:
            writer.write(b"%x\r\n%s\r\n" % (len(payload), payload) if chunked else payload)
        if chunked:
            writer.write(b"0\r\n\r\n")


async def _write_broken(writer: asyncio.StreamWriter, kind: str, n: int) -> None:
    """Odd or broken responses, then close.

    truncate: content-length n, n/2 sent; truncate-chunked: n/2 in one chunk, no last
    chunk; eof-body: no length, n bytes; dup-cl: two differing content-lengths; cl-te:
    both framings (chunked is right);
    bad-status: a non-numeric status; spurious-100 / early-hints: a 100 or 103 first,
    then 200 with n bytes.
    """
    ok = "HTTP/1.1 200 X\r\n"
    body = b"r" * n
    if kind == "truncate":
        writer.write(f"{ok}content-length: {n}\r\n\r\n".encode() + body[: n // 2])
    elif kind == "truncate-chunked":
        half = n // 2
        writer.write(f"{ok}transfer-encoding: chunked\r\n\r\n{half:x}\r\n".encode() + body[:half])
        writer.write(b"\r\n")
    elif kind == "eof-body":
        writer.write(f"{ok}connection: close\r\n\r\n".encode() + body)
    elif kind == "dup-cl":
        writer.write(f"{ok}content-length: {n}\r\ncontent-length: {n + 5}\r\n\r\n".encode() + body)
    elif kind == "cl-te":
        framing = f"content-length: {n + 100}\r\ntransfer-encoding: chunked\r\n\r\n"
        writer.write(f"{ok}{framing}{n:x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    elif kind == "bad-status":
        writer.write(f"HTTP/1.1 2x0 X\r\ncontent-length: {n}\r\n\r\n".encode() + body)
    elif kind in ("spurious-100", "early-hints"):
        interim = (
            "HTTP/1.1 100 Continue\r\n\r\n"
            if kind == "spurious-100"
            else ("HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
        )
        writer.write(
            f"{interim}{ok}content-length: {n}\r\nconnection: close\r\n\r\n".encode() + body
        )
    await writer.drain()
