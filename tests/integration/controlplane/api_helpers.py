"""The REST API under test: in process (TestClient) or served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from trellis.controlplane.api import create_app, serve_api
from trellis.controlplane.memory_store import MemoryConfigStore
from trellis.controlplane.sqlite_store import SqliteConfigStore
from trellis.controlplane.store import ConfigStore

with warnings.catch_warnings():
    # Starlette >= 1.x prefers the `httpx2` fork; plain httpx still works (and is what we ship).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

T = TypeVar("T")

TOKEN = "integration-test-token-0123456789"
DATA = Path(__file__).parents[2] / "unit" / "cli" / "data"
SHOP_YAML = (DATA / "shop.yaml").read_text()
INVALID_YAML = (DATA / "invalid.yaml").read_text()
YAML = {"content-type": "application/yaml"}
GROUP = "/apis/networking.istio.io/v1"


def in_process(
    store: ConfigStore | None = None, *, client_host: str = "127.0.0.1", **options: Any
) -> TestClient:
    """The app over `store` (a fresh memory store by default), called as from `client_host`."""
    app = create_app(store or MemoryConfigStore(), token=TOKEN, **options)
    host = f"[{client_host}]" if ":" in client_host else client_host
    return TestClient(app, base_url=f"http://{host}:8080", client=(client_host, 40000))


class ServedApi:
    """The API with a SQLite store, served by uvicorn on its own event loop thread."""

    def __init__(self, data_dir: Path, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="api", daemon=True)
        self.thread.start()
        self.store: SqliteConfigStore = self.call(
            lambda: SqliteConfigStore.open(data_dir / "config.db")
        )
        self.app: FastAPI = create_app(self.store, token=TOKEN, **options)
        port: Future[int] = Future()

        async def start() -> asyncio.Task[None]:
            return asyncio.create_task(
                serve_api(self.app, "127.0.0.1", 0, started=port.set_result), name="serve_api"
            )

        self.task = self.call(start)
        self.port = port.result(timeout=10)
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def close(self) -> None:
        async def stop() -> None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            await self.store.close()

        try:
            self.call(stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@contextmanager
def served(data_dir: Path, **options: Any) -> Iterator[ServedApi]:
    api = ServedApi(data_dir, **options)
    try:
        yield api
    finally:
        api.close()
