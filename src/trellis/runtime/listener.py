"""A listening socket, its filter chains and the connections it accepted."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import Protocol

from trellis.core.config import FilterChain, Listener
from trellis.core.filter_chain import ChainTable, chain_match
from trellis.core.metrics import StatsRegistry
from trellis.core.tls import TransportProtocol, san_allowed
from trellis.runtime.downstream import DownstreamHttp1
from trellis.runtime.http_context import HttpContext
from trellis.runtime.secrets import SecretStore, peer_principal, peer_sans
from trellis.runtime.tcp import TcpDownstream
from trellis.runtime.tcp_context import TcpContext
from trellis.runtime.tls_stream import TlsStream

log = logging.getLogger("trellis.listener")

_ACCEPT_BATCH = 64
_PEEK_BYTES = 8
_INSPECT_TIMEOUT = 15.0  # Envoy's listener_filters_timeout
_HANDSHAKE_TIMEOUT = 10.0
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; Python's socket module does not name it
_SOCKADDR_IN_BYTES = 16

Context = HttpContext | TcpContext


class ChainRuntime:
    """One filter chain of a running listener: its config and its current context.

    Connections keep their chain; a config push swaps `context` here (a new
    route table, cluster references) and their next request takes it.
    """

    __slots__ = ("config", "context")

    def __init__(self, config: FilterChain, context: Context) -> None:
        self.config = config
        self.context = context


class Connection(Protocol):
    last_activity: float
    peer_principal: str | None  # the client's SPIFFE ID, on a verified mTLS connection
    chain: ChainRuntime

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
    """A bound socket, its filter chains, the connections it accepted, and how it
    accepts them.

    A listener with one plaintext chain for every connection accepts in uvloop's
    C loop. The others accept here: read the original destination
    (`use_original_dst`), find the chains of its port, peek at the first bytes
    when those differ by transport protocol (Istio's PERMISSIVE), pick the
    chain, and hand the socket to the event loop with that chain's current SSL
    context. The chain is chosen once per connection.
    """

    __slots__ = (
        "_accepting",
        "_cx_active",
        "_cx_total",
        "_manual",
        "_port",
        "_socket",
        "budget",
        "chains",
        "config",
        "connections",
        "draining",
        "secrets",
        "server",
        "stats",
        "table",
    )

    def __init__(
        self,
        config: Listener,
        contexts: Sequence[Context],
        budget: ConnectionBudget,
        stats: StatsRegistry,
        secrets: SecretStore | None = None,
    ) -> None:
        self.config = config
        self.chains = tuple(map(ChainRuntime, config.chains, contexts))
        self.table = ChainTable(config.chains)
        self.budget = budget
        self.stats = stats
        self.secrets = secrets
        self.server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        self.draining = False
        self._socket: socket.socket | None = None
        self._port = config.address.port  # the bound port, once started
        self._manual = False
        self._accepting: set[asyncio.Task[None]] = set()
        labels = (("envoy_listener_address", str(config.address)),)
        self._cx_total = stats.counter("envoy_listener_downstream_cx_total", labels)
        self._cx_active = stats.gauge("envoy_listener_downstream_cx_active", labels)

    def _protocol(self) -> asyncio.Protocol:
        """A connection accepted by uvloop: the listener's only chain (current at accept
        time: config updates swap `self.chains`)."""
        return self._protocol_for(self.chains[0], None)

    def _protocol_for(self, chain: ChainRuntime, local: tuple[str, int] | None) -> asyncio.Protocol:
        if isinstance(chain.context, HttpContext):
            return DownstreamHttp1(self, chain, local)
        return TcpDownstream(self, chain, local)

    async def start(self) -> None:
        address = self.config.address
        self._socket = socket.create_server(
            (address.host, address.port),
            family=socket.AF_INET6 if ":" in address.host else socket.AF_INET,
            backlog=1024,
        )
        self._socket.setblocking(False)
        self._port = int(self._socket.getsockname()[1])
        await self._start_accepting()

    async def _start_accepting(self) -> None:
        assert self._socket is not None
        loop = asyncio.get_running_loop()
        self._manual = accepts_by_hand(self.config)
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

    async def reconfigure(self, config: Listener, contexts: Sequence[Context]) -> None:
        """Take a new config on the same address, keeping the socket and connections.

        A chain with the same match and kind of filter as before keeps its
        connections, which take the new filter on their next request; HTTP
        connections of a chain that is gone drain (as Envoy drains a removed
        filter chain's connections).
        """
        known = {chain_match(chain.config): chain for chain in self.chains}
        chains = []
        for chain_config, context in zip(config.chains, contexts, strict=True):
            match = chain_match(chain_config)
            chain = known.get(match)
            if chain is not None and type(chain.context) is type(context):
                del known[match]
                chain.config, chain.context = chain_config, context
            else:  # new, or HTTP became TCP (or back): its connections cannot follow
                chain = ChainRuntime(chain_config, context)
            chains.append(chain)
        self.config, self.chains, self.table = config, tuple(chains), ChainTable(config.chains)
        gone = set(known.values())
        for conn in list(self.connections):
            if conn.chain in gone and isinstance(conn, DownstreamHttp1):
                conn.start_draining()
        if not self.draining and accepts_by_hand(config) != self._manual:
            self._stop_accepting()
            await self._start_accepting()

    def set_contexts(self, contexts: Sequence[Context]) -> None:
        """New contexts for the same chains (routes or clusters changed)."""
        for chain, context in zip(self.chains, contexts, strict=True):
            chain.context = context

    @property
    def bound_port(self) -> int:
        assert self._socket is not None
        return self._port

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
            # One config for the whole choice, though a push may land during the peek.
            config, chains, table = self.config, self.chains, self.table
            local = None
            port = self._port
            address = None  # the destination address, read only when a chain names one
            if config.use_original_dst:
                local = original_destination(conn)
                port = local[1]
                address = local[0]
            elif table.uses_addresses:
                address = str(conn.getsockname()[0])
            found = table.lookup(port, address)
            is_tls = False
            if found is not None and found.needs_inspection:
                first = await _peek(loop, conn)
                is_tls = first[:1] == b"\x16"  # a TLS handshake record
            index = None if found is None else found.pick(is_tls)
            if index is None:
                self._no_chain(conn, port, is_tls)
                return
            chain = chains[index]
            context = None
            tls = chain.config.tls
            if tls is not None:
                context = self.secrets.server_context(tls) if self.secrets else None
                if context is None:
                    self._refuse(conn, "TLS", "the certificate or trusted CAs are not ready")
                    return
            if context is not None and isinstance(chain.context, TcpContext):
                # TLS the TCP proxy can half-close (asyncio's cannot): see TlsStream.
                app = self._protocol_for(chain, local)
                _, stream = await loop.connect_accepted_socket(
                    lambda: TlsStream(
                        app, context, server_side=True, handshake_timeout=_HANDSHAKE_TIMEOUT
                    ),
                    conn,
                )
                try:
                    await stream.handshake
                except (OSError, TimeoutError) as error:  # the stream closed its socket
                    log.debug("listener %s: TLS handshake failed: %r", self.config.name, error)
                    self._count_tls_failure()
                return
            await loop.connect_accepted_socket(
                lambda: self._protocol_for(chain, local),
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

    def _no_chain(self, conn: socket.socket, port: int, is_tls: bool) -> None:
        """Envoy's "no matching filter chain": close, count `no_filter_chain_match`."""
        kind = "TLS" if is_tls else "plaintext"
        log.debug(
            "listener %s: %s connection to port %d refused: no filter chain matches",
            self.config.name,
            kind,
            port,
        )
        labels = (("envoy_listener_address", str(self.config.address)),)
        self.stats.counter("envoy_listener_no_filter_chain_match", labels).value += 1
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
        tls = conn.chain.config.tls
        return san_allowed(tls.common.san_matchers if tls is not None else (), sans)

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
        for conn in list(self.connections):
            if isinstance(conn, DownstreamHttp1):
                conn.check_timeouts(now)
            timeout = conn.chain.config.filter.idle_timeout
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


def accepts_by_hand(config: Listener) -> bool:
    """Whether a listener needs the Python accept path: anything but one plaintext
    chain for every connection (TLS, inspection, destination ports or addresses,
    original destinations)."""
    if config.use_original_dst or len(config.chains) != 1:
        return True
    (chain,) = config.chains
    return (
        chain.tls is not None
        or chain.destination_port is not None
        or bool(chain.prefix_ranges)
        or chain.transport_protocol is not TransportProtocol.ANY
    )


def original_destination(conn: socket.socket) -> tuple[str, int]:
    """Where the client sent `conn` before iptables redirected it here: the kernel's
    SO_ORIGINAL_DST (IPv4); the socket's own address when there is no NAT entry
    (the connection was not redirected) or the socket is not IPv4."""
    if conn.family == socket.AF_INET:
        try:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_BYTES)
        except OSError:
            pass
        else:  # struct sockaddr_in: family, port (big-endian), address
            return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")
    host, port = conn.getsockname()[:2]
    return str(host), int(port)


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
