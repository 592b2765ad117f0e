"""A listening socket and the connections it accepted."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from trellis.core.config import Listener
from trellis.core.metrics import StatsRegistry
from trellis.runtime.downstream import DownstreamHttp1
from trellis.runtime.http_context import HttpContext
from trellis.runtime.tcp import TcpContext, TcpDownstream

log = logging.getLogger("trellis.listener")


class Connection(Protocol):
    last_activity: float

    def close(self) -> None: ...


class ConnectionBudget:
    """The proxy-wide downstream connection limit (overload manager's max connections)."""

    __slots__ = ("active", "emptied", "limit", "overflow")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.active = 0
        self.overflow = 0
        self.emptied: asyncio.Event | None = None  # set when draining reaches zero connections


class ListenerRuntime:
    __slots__ = (
        "_cx_active",
        "_cx_total",
        "budget",
        "config",
        "connections",
        "context",
        "draining",
        "server",
        "stats",
    )

    def __init__(
        self,
        config: Listener,
        context: HttpContext | TcpContext,
        budget: ConnectionBudget,
        stats: StatsRegistry,
    ) -> None:
        self.config = config
        self.context = context
        self.budget = budget
        self.stats = stats
        self.server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        self.draining = False
        labels = (("envoy_listener_address", str(config.address)),)
        self._cx_total = stats.counter("envoy_listener_downstream_cx_total", labels)
        self._cx_active = stats.gauge("envoy_listener_downstream_cx_active", labels)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        address = self.config.address

        def factory() -> asyncio.Protocol:
            # The context current at accept time: config updates swap `self.context`.
            context = self.context
            if isinstance(context, HttpContext):
                return DownstreamHttp1(self, context)
            return TcpDownstream(self, context)

        self.server = await loop.create_server(
            factory, address.host, address.port, reuse_address=True, backlog=1024
        )

    @property
    def bound_port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def connection_opened(self, conn: Connection) -> None:
        budget = self.budget
        if self.draining or (budget.limit is not None and budget.active >= budget.limit):
            budget.overflow += 1
            conn.close()
            return
        budget.active += 1
        self.connections.add(conn)
        self._cx_total.value += 1
        self._cx_active.value += 1

    def connection_closed(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.budget.active -= 1
            self._cx_active.value -= 1
            if self.budget.active == 0 and self.budget.emptied is not None:
                self.budget.emptied.set()

    def protocol_error(self, status: int) -> None:
        labels = (("envoy_listener_address", str(self.config.address)), ("status", str(status)))
        self.stats.counter("envoy_listener_downstream_rq_rejected_total", labels).value += 1

    def sweep(self, now: float) -> None:
        """Close idle connections and enforce the coarse stream timeouts."""
        timeout = self.config.filter.idle_timeout
        for conn in list(self.connections):
            if isinstance(conn, DownstreamHttp1):
                conn.check_timeouts(now)
            if timeout is not None and now - conn.last_activity > timeout and _is_idle(conn):
                conn.close()

    def stop_accepting(self) -> None:
        self.draining = True
        if self.server is not None:
            self.server.close()

    def drain(self) -> None:
        self.stop_accepting()
        for conn in list(self.connections):
            if isinstance(conn, DownstreamHttp1):
                conn.start_draining()


def _is_idle(conn: Connection) -> bool:
    if isinstance(conn, DownstreamHttp1):
        return not conn.streams and conn.current is None and conn.tunnel is None
    return True
