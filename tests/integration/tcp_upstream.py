"""A TCP upstream for the tcp_proxy tests."""

from __future__ import annotations

import asyncio
import threading

WRITE_CHUNK = 64 * 1024


class TcpUpstream:
    """A TCP server for half-close tests.

    mode "reply": read until EOF, then send `received <n> bytes` and close.
    mode "banner": send `hello`, shut the write side, read until EOF and record it.
    """

    def __init__(self, mode: str = "reply") -> None:
        self.mode = mode
        self.port = 0
        self._lock = threading.Lock()
        self._received: list[int] = []
        self._accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> TcpUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
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

    @property
    def received(self) -> list[int]:
        """Byte counts read until EOF, one per finished connection."""
        with self._lock:
            return list(self._received)

    @property
    def connections_accepted(self) -> int:
        with self._lock:
            return self._accepted

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._accepted += 1
        try:
            if self.mode == "banner":
                writer.write(b"hello")
                await writer.drain()
                writer.write_eof()
            total = 0
            while data := await reader.read(WRITE_CHUNK):
                total += len(data)
            with self._lock:
                self._received.append(total)
            if self.mode == "reply":
                writer.write(f"received {total} bytes".encode())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)
