"""A WebSocket echo server (the `websockets` package) in a background thread."""

from __future__ import annotations

import asyncio
import threading

from websockets.asyncio.server import Server, ServerConnection, serve


class WebSocketEcho:
    """Echoes every message; remembers the request headers of each handshake."""

    def __init__(self) -> None:
        self.port = 0
        self._lock = threading.Lock()
        self._handshakes: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Server | None = None

    def start(self) -> WebSocketEcho:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._server = await serve(self._echo, "127.0.0.1", 0)
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def _echo(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        with self._lock:
            self._handshakes.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        async for message in ws:
            await ws.send(message)

    @property
    def handshakes(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._handshakes)

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
            await self._server.wait_closed()
