"""The admin listener (Envoy's :15000): readiness, stats, config dump, clusters, quit.

The same server, restricted to a few read-only routes, also answers on the
ports Istio's agent serves beside Envoy, which are reachable from outside the
workload: 15020 (`STATS_ROUTES`, the merged `/stats/prometheus`) and 15021
(`HEALTH_ROUTES`, `/healthz/ready`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Protocol

from trellis.runtime import wire

log = logging.getLogger("trellis.admin")

_MAX_HEAD = 16 * 1024
_READ_TIMEOUT = 10.0


class AdminTarget(Protocol):
    """What the admin endpoints read from and act on (the proxy server)."""

    def state(self) -> str: ...
    def prometheus(self) -> str: ...
    def stats_text(self) -> str: ...
    def config_dump(self) -> dict[str, object]: ...
    def clusters_text(self) -> str: ...
    def server_info(self) -> dict[str, object]: ...
    def quit(self) -> None: ...
    def drain(self) -> None: ...


Response = tuple[int, bytes, bytes]  # status, content type, body
Route = tuple[str, str]  # method, path
AsyncAnswer = Callable[[Mapping[str, str]], Awaitable[Response]]
"""An endpoint that awaits something, given the request's headers (lowercase names)."""
_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
_PROM = b"text/plain; version=0.0.4; charset=utf-8"

STATS_ROUTES: frozenset[Route] = frozenset(
    {("GET", "/stats/prometheus"), ("GET", "/healthz/ready")}
)
"""Istio's merged-metrics port (15020): the proxy's and the application's metrics."""
HEALTH_ROUTES: frozenset[Route] = frozenset({("GET", "/healthz/ready")})
"""Istio's health port (15021), the one readiness probes ask."""


class PrometheusSources:
    """Families added to `/stats/prometheus` at scrape time, beyond the proxy's own.

    One set per proxy, shared by every port serving that path, so the admin
    port and the merged-metrics port answer the same text.
    """

    def __init__(self) -> None:
        self._sync: list[Callable[[], str]] = []
        self._async: list[Callable[[], Awaitable[str]]] = []

    def add(self, render: Callable[[], str]) -> None:
        """Families rendered in process (e.g. the certificate's expiry)."""
        self._sync.append(render)

    def add_async(self, render: Callable[[], Awaitable[str]]) -> None:
        """Families fetched from elsewhere (the application's metrics, merged)."""
        self._async.append(render)

    def render(self) -> str:
        return "".join(render() for render in self._sync)

    async def fetch(self) -> str:
        return "".join([await render() for render in self._async])


class AdminServer:
    """A small HTTP/1.1 server over `target`; `routes` limits it to those (method, path)
    pairs (a port reachable from outside must not offer `/quitquitquit`)."""

    def __init__(
        self,
        target: AdminTarget,
        routes: Collection[Route] | None = None,
        sources: PrometheusSources | None = None,
    ) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.sources = sources if sources is not None else PrometheusSources()
        self._only = frozenset(routes) if routes is not None else None
        self._routes: dict[Route, Callable[[dict[str, list[str]]], Response]] = {
            ("GET", "/ready"): self._ready,
            ("GET", "/healthz/ready"): self._ready,
            ("GET", "/stats/prometheus"): lambda q: (200, _PROM, self._prometheus().encode()),
            ("GET", "/stats"): lambda q: (200, _TEXT, target.stats_text().encode()),
            ("GET", "/config_dump"): lambda q: (200, _JSON, _json(target.config_dump())),
            ("GET", "/clusters"): lambda q: (200, _TEXT, target.clusters_text().encode()),
            ("GET", "/server_info"): lambda q: (200, _JSON, _json(target.server_info())),
            ("POST", "/quitquitquit"): self._quit,
            ("POST", "/drain_listeners"): self._drain,
            ("POST", "/logging"): self._logging,
            ("GET", "/help"): self._help,
        }
        if self._only is not None:
            unknown = self._only - set(self._routes)
            if unknown:
                raise ValueError(f"no such admin routes: {sorted(unknown)}")
            self._routes = {route: self._routes[route] for route in self._only}
        self._async_routes: dict[Route, AsyncAnswer] = {}

    def add_prometheus_source(self, render: Callable[[], str]) -> None:
        """More families for `/stats/prometheus`, rendered at scrape time (e.g. cert expiry)."""
        self.sources.add(render)

    def add_json_route(self, path: str, render: Callable[[], object]) -> None:
        """Another `GET` endpoint answering JSON (e.g. Envoy's `/certs`); a restricted
        server keeps to its routes and ignores it."""
        if self._only is None or ("GET", path) in self._only:
            self._routes[("GET", path)] = lambda q: (200, _JSON, _json(render()))

    def add_async_route(self, path: str, answer: AsyncAnswer) -> None:
        """Another `GET` endpoint, answered by a coroutine: the application's probes on
        15020 (`runtime.app_prober`). Added explicitly, so restricted servers take it too."""
        self._async_routes[("GET", path)] = answer

    def _prometheus(self) -> str:
        return self.target.prometheus() + self.sources.render()

    async def start(self, host: str, port: int) -> None:
        # Bound here rather than by `start_server(host, port)`: uvloop resolves that
        # host, even an IP literal, on libuv's thread pool, whose four threads (and
        # their malloc arenas) would then stay for the proxy's lifetime: ~0.5 MiB of
        # the sidecar's 40 MB budget (DESIGN.md §8).
        sock = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
        self.server = await asyncio.start_server(self._serve, sock=sock)

    @property
    def bound_port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                if len(head) > _MAX_HEAD:
                    return
                keep_alive = await self._answer(head, reader, writer)
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, OSError):
            return
        except asyncio.CancelledError:
            # The proxy is exiting with this connection open (e.g. /quitquitquit):
            # end quietly rather than leave a cancelled handler for asyncio to report.
            return
        except Exception:  # the admin server must outlive any bad request
            log.exception("admin request failed")
        finally:
            writer.close()

    async def _answer(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            writer.write(wire.local_reply(400, b"bad request\n", close=True))
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length:
            await asyncio.wait_for(reader.readexactly(min(length, _MAX_HEAD)), _READ_TIMEOUT)
        path, query = split_target(target)
        handler = self._routes.get((method, path))
        answer = self._async_routes.get((method, path))
        if answer is not None:
            status, ctype, body = await answer(headers)
        elif handler is None:
            known = any(path == route for _, route in (*self._routes, *self._async_routes))
            status, ctype, body = (405 if known else 404), _TEXT, b"invalid path or method\n"
        else:
            status, ctype, body = handler(parse_query(query))
            if path == "/stats/prometheus":
                body += (await self.sources.fetch()).encode()
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        writer.write(wire.local_reply(status, body, close=not keep_alive, content_type=ctype))
        return keep_alive

    def _ready(self, query: dict[str, list[str]]) -> Response:
        state = self.target.state()
        return (200 if state == "LIVE" else 503), _TEXT, f"{state}\n".encode()

    def _quit(self, query: dict[str, list[str]]) -> Response:
        asyncio.get_running_loop().call_soon(self.target.quit)
        return 200, _TEXT, b"OK\n"

    def _drain(self, query: dict[str, list[str]]) -> Response:
        self.target.drain()
        return 200, _TEXT, b"OK\n"

    def _logging(self, query: dict[str, list[str]]) -> Response:
        level = (query.get("level") or [""])[0].upper()
        if level not in ("TRACE", "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "OFF"):
            return 400, _TEXT, b"usage: POST /logging?level=debug|info|warning|error|critical|off\n"
        mapped = {"TRACE": "DEBUG", "WARN": "WARNING", "OFF": "CRITICAL"}.get(level, level)
        logging.getLogger("trellis").setLevel(mapped)
        return 200, _TEXT, f"trellis: {mapped.lower()}\n".encode()

    def _help(self, query: dict[str, list[str]]) -> Response:
        lines = sorted(f"{method} {path}" for method, path in self._routes)
        return 200, _TEXT, ("admin commands are:\n" + "\n".join(lines) + "\n").encode()


def split_target(target: str) -> tuple[str, str]:
    """A request target's path and query (the fragment dropped), like `urlsplit` but
    without importing urllib.parse for every request (the sidecar does not load it:
    ~0.35 MiB). An absolute-form target still goes through `urlsplit`."""
    if not target.startswith("/"):
        from urllib.parse import urlsplit  # noqa: PLC0415 - rare: absolute-form targets

        url = urlsplit(target)
        return url.path, url.query
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


def parse_query(query: str) -> dict[str, list[str]]:
    """`parse_qs(query)`; urllib.parse is imported only when there is a query."""
    if not query:
        return {}
    from urllib.parse import parse_qs  # noqa: PLC0415 - only admin requests with a query

    return parse_qs(query)


def _json(value: object) -> bytes:
    return json.dumps(value, indent=2, sort_keys=False).encode() + b"\n"
