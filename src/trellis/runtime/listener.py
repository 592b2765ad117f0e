"""A listening socket and the connections it accepted."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol

from trellis.core.config import Listener
from trellis.core.metrics import StatsRegistry
from trellis.core.tls import FilterChain, needs_inspection, san_allowed, select_chain
from trellis.runtime.downstream import DownstreamHttp1
from trellis.runtime.http_context import HttpContext
from trellis.runtime.secrets import SecretStore, peer_principal, peer_sans
from trellis.runtime.tcp import TcpContext, TcpDownstream

log = logging.getLogger("trellis.listener")

_ACCEPT_BATCH = 64
_PEEK_BYTES = 8
_INSPECT_TIMEOUT = 15.0  # Envoy's listener_filters_timeout
_HANDSHAKE_TIMEOUT = 10.0


class Connection(Protocol):
    last_activity: float
    peer_principal: str | None  # the client's SPIFFE ID, on a verified mTLS connection

    @property
    def transport(self) -> asyncio.Transport | None: ...

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
    """A bound socket, the connections it accepted, and how it accepts them.

    Plaintext listeners accept in uvloop's C loop. Listeners with TLS filter
    chains accept here: peek at the first bytes when chains differ by transport
    protocol (Istio's PERMISSIVE), pick the chain, and hand the socket to the
    event loop with that chain's current SSL context.
    """

    __slots__ = (
        "_accepting",
        "_cx_active",
        "_cx_total",
        "_manual",
        "_socket",
        "budget",
        "config",
        "connections",
        "context",
        "draining",
        "secrets",
        "server",
        "stats",
    )

    def __init__(
        self,
        config: Listener,
        context: HttpContext | TcpContext,
        budget: ConnectionBudget,
        stats: StatsRegistry,
        secrets: SecretStore | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.budget = budget
        self.stats = stats
        self.secrets = secrets
        self.server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        self.draining = False
        self._socket: socket.socket | None = None
        self._manual = False
        self._accepting: set[asyncio.Task[None]] = set()
        labels = (("envoy_listener_address", str(config.address)),)
        self._cx_total = stats.counter("envoy_listener_downstream_cx_total", labels)
        self._cx_active = stats.gauge("envoy_listener_downstream_cx_active", labels)

    def _protocol(self) -> asyncio.Protocol:
        # The context current at accept time: config updates swap `self.context`.
        context = self.context
        if isinstance(context, HttpContext):
            return DownstreamHttp1(self, context)
        return TcpDownstream(self, context)

    async def start(self) -> None:
        address = self.config.address
        self._socket = socket.create_server(
            (address.host, address.port),
            family=socket.AF_INET6 if ":" in address.host else socket.AF_INET,
            backlog=1024,
        )
        self._socket.setblocking(False)
        await self._start_accepting()

    async def _start_accepting(self) -> None:
        assert self._socket is not None
        loop = asyncio.get_running_loop()
        self._manual = accepts_by_hand(self.config.chains)
        if self._manual:
            loop.add_reader(self._socket.fileno(), self._on_acceptable)
        else:  # uvloop owns (and closes) a duplicate of the socket
            self.server = await loop.create_server(self._protocol, sock=self._socket.dup())

    def _stop_accepting(self) -> None:
        if self._manual and self._socket is not None:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
        if self.server is not None:
            self.server.close()
            self.server = None

    async def reconfigure(self, config: Listener, context: HttpContext | TcpContext) -> None:
        """Take a new config on the same address, keeping the socket and connections."""
        self.config, self.context = config, context
        if not self.draining and accepts_by_hand(config.chains) != self._manual:
            self._stop_accepting()
            await self._start_accepting()

    @property
    def bound_port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    # -- accepting TLS and inspected connections -----------------------------------------

    def _on_acceptable(self) -> None:
        listening = self._socket
        loop = asyncio.get_running_loop()
        for _ in range(_ACCEPT_BATCH):
            if listening is None or self.draining:
                return
            try:
                conn, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and friends: try again on the next wakeup
                log.warning("listener %s: accept failed: %s", self.config.name, error)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._serve(conn), name=f"accept {self.config.name}")
            self._accepting.add(task)
            task.add_done_callback(self._accepting.discard)

    async def _serve(self, conn: socket.socket) -> None:
        """Pick the filter chain, then hand the socket (TLS or not) to the event loop."""
        loop = asyncio.get_running_loop()
        try:
            chains = self.config.chains
            is_tls = False
            if needs_inspection(chains):
                first = await _peek(loop, conn)
                is_tls = first[:1] == b"\x16"  # a TLS handshake record
            chain = select_chain(chains, is_tls)
            if chain is None:
                self._refuse(conn, "plaintext" if not is_tls else "TLS", "no filter chain matches")
                return
            context = None
            if chain.tls is not None:
                context = self.secrets.server_context(chain.tls) if self.secrets else None
                if context is None:
                    self._refuse(conn, "TLS", "the certificate or trusted CAs are not ready")
                    return
            await loop.connect_accepted_socket(
                self._protocol,
                conn,
                ssl=context,
                ssl_handshake_timeout=_HANDSHAKE_TIMEOUT if context is not None else None,
            )
        except (OSError, TimeoutError, EOFError) as error:  # ssl.SSLError is an OSError
            log.debug("listener %s: connection refused: %r", self.config.name, error)
            self._count_tls_failure()
            conn.close()
        except asyncio.CancelledError:  # the listener stopped while this one was accepted
            conn.close()
            raise
        except Exception:  # a bug ends this connection, never the listener
            log.exception("listener %s: accepting a connection failed", self.config.name)
            conn.close()

    def _refuse(self, conn: socket.socket, kind: str, why: str) -> None:
        log.debug("listener %s: %s connection refused: %s", self.config.name, kind, why)
        self._count_tls_failure()
        conn.close()

    def _count_tls_failure(self) -> None:
        labels = (("envoy_listener_address", str(self.config.address)),)
        self.stats.counter("envoy_listener_downstream_tls_error_total", labels).value += 1

    def _peer_allowed(self, conn: Connection) -> bool:
        """Record an mTLS peer's identity; False when its SANs are not the expected ones."""
        transport = conn.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return True
        sans = peer_sans(ssl_object.getpeercert())
        conn.peer_principal = peer_principal(sans)
        chain = select_chain(self.config.chains, True)
        matchers = chain.tls.common.san_matchers if chain and chain.tls else ()
        return san_allowed(matchers, sans)

    def connection_opened(self, conn: Connection) -> None:
        budget = self.budget
        if self.draining or (budget.limit is not None and budget.active >= budget.limit):
            budget.overflow += 1
            conn.close()
            return
        if not self._peer_allowed(conn):
            self._count_tls_failure()
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
        if self.draining:
            return
        self.draining = True
        self._stop_accepting()
        for task in self._accepting:  # handshakes not finished yet: never served
            task.cancel()
        if self._socket is not None:
            self._socket.close()

    def drain(self) -> None:
        self.stop_accepting()
        for conn in list(self.connections):
            if isinstance(conn, DownstreamHttp1):
                conn.start_draining()


def accepts_by_hand(chains: tuple[FilterChain, ...]) -> bool:
    """Whether a listener needs the Python accept path (TLS or inspection)."""
    return any(chain.tls is not None for chain in chains) or needs_inspection(chains)


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first bytes the client sent, left in the socket for whoever reads next."""
    async with asyncio.timeout(_INSPECT_TIMEOUT):
        while True:
            try:
                data = conn.recv(_PEEK_BYTES, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                data = None
            if data is not None:
                if not data:
                    raise EOFError("closed before sending anything")
                return data
            readable = loop.create_future()
            loop.add_reader(conn.fileno(), readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(conn.fileno())


def _is_idle(conn: Connection) -> bool:
    if isinstance(conn, DownstreamHttp1):
        return not conn.streams and conn.current is None and conn.tunnel is None
    return True
