"""The TCP proxy filter: a byte pipe between a client and one upstream host.

Half-close is honoured in both directions: an EOF from one side becomes a
`write_eof` on the other, and the pair closes once both directions ended.
A connection with network RBAC filters is authorized once it is established,
before any upstream is chosen (`tcp_context.TcpContext.authorize`).

Istio's TCP metadata exchange (`core.tcp_exchange`) runs on mTLS connections
whose handshake selected ALPN `istio-peer-exchange` (offered only when the
xDS TLS context lists it). Outbound, this sidecar writes its header as soon
as the upstream handshake is done and takes the server's header off the
upstream's first bytes; the connection counts as opened once that header is
in, so its metrics name the server's workload. Inbound, the client's header
is read before an upstream is chosen; a client that sent one gets this
sidecar's header back, then the pipe starts. Without the ALPN nothing
changes: no header is written or expected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from trellis.core.addresses import SocketAddress
from trellis.core.authz import AuthzDecision
from trellis.core.metrics import PeerLabels, ResponseFlag, format_flags
from trellis.core.outlier import Outcome
from trellis.core.peer_metadata import WorkloadMetadata
from trellis.core.tcp_exchange import ALPN, HeaderReader, ReadOutcome
from trellis.runtime.secrets import peer_principal, peer_sans

if TYPE_CHECKING:
    from trellis.runtime.cluster import HostRuntime
    from trellis.runtime.listener import ChainRuntime, ListenerRuntime
    from trellis.runtime.tcp_context import TcpContext

log = logging.getLogger("trellis.tcp")


def _selected_exchange(transport: asyncio.BaseTransport) -> bool:
    """Whether the TLS handshake of `transport` selected the metadata exchange's ALPN."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == ALPN


class _UpstreamSide(asyncio.Protocol):
    __slots__ = ("peer_principal", "pipe", "reader", "transport")

    def __init__(self, pipe: TcpDownstream) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.peer_principal: str | None = None
        self.reader: HeaderReader | None = None  # set while the server's header is awaited

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peercert = transport.get_extra_info("peercert")
        if peercert:
            self.peer_principal = peer_principal(peer_sans(peercert))
        ctx = self.pipe.ctx
        exchange = ctx.exchange
        if exchange is not None and ctx.peer.reporter == "source" and _selected_exchange(transport):
            self.transport.write(exchange.header)  # ahead of any application byte
            self.reader = HeaderReader()

    def data_received(self, data: bytes) -> None:
        if self.reader is not None:
            data = self.pipe.upstream_header(self, data)
            if not data:
                return
        self.pipe.from_upstream(data)

    def eof_received(self) -> bool:
        self.pipe.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pipe.upstream_lost()

    def pause_writing(self) -> None:
        self.pipe.pause_downstream()

    def resume_writing(self) -> None:
        self.pipe.resume_downstream()


class TcpDownstream(asyncio.Protocol):
    __slots__ = (
        "_connect",
        "_eof_down",
        "_eof_up",
        "_opened",
        "_pending",
        "_reader",
        "authz",
        "chain",
        "closed",
        "ctx",
        "flags",
        "host",
        "last_activity",
        "listener",
        "local",
        "local_text",
        "peer_principal",
        "peer_workload",
        "received",
        "remote",
        "sent",
        "start",
        "transport",
        "upstream",
    )

    def __init__(
        self,
        listener: ListenerRuntime,
        chain: ChainRuntime,
        local: tuple[str, int] | None = None,
    ) -> None:
        self.listener = listener
        self.chain = chain
        # The TCP proxy is chosen once: the connection keeps this context to the end.
        self.ctx: TcpContext = chain.context  # type: ignore[assignment]
        # The original destination (`use_original_dst`); None: the socket's address.
        self.local = local
        self.transport: asyncio.Transport | None = None
        self.upstream: _UpstreamSide | None = None
        self.host: HostRuntime | None = None
        self._pending: list[bytes] = []
        self._eof_down = False
        self._eof_up = False
        self._connect: asyncio.Task[None] | None = None
        self.received = 0
        self.sent = 0
        self.flags = ResponseFlag.NONE
        self.closed = False
        self.start = self.last_activity = time.monotonic()
        self.remote: str | None = None
        self.local_text: str | None = None  # %DOWNSTREAM_LOCAL_ADDRESS%
        self.peer_principal: str | None = None  # set by the listener on mTLS connections
        self.authz: AuthzDecision | None = None  # the RBAC filters' decision, if any
        self.peer_workload: WorkloadMetadata | None = None  # told in the metadata exchange
        self._reader: HeaderReader | None = None  # set while the client's header is awaited
        self._opened = False  # counted in istio_tcp_connections_opened_total

    def _labels(self, upstream: _UpstreamSide | None) -> PeerLabels:
        inbound = self.ctx.peer.reporter == "destination"
        principal = self.peer_principal if inbound else None
        if not inbound and upstream is not None:
            principal = upstream.peer_principal
        return self.ctx.labels(principal, self.peer_workload)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.remote = f"{peer[0]}:{peer[1]}"
        if self.ctx.logs:
            local = self.local or transport.get_extra_info("sockname")
            if isinstance(local, tuple):
                self.local_text = str(SocketAddress(local[0], local[1]))
        self.listener.connection_opened(self)
        if self.closed:  # refused: the connection limit, or a draining listener
            return
        authz = self.ctx.config.authz
        if authz is not None and not self.ctx.authorize(self, authz).allowed:
            self._close()  # before any upstream is chosen: it never sees the connection
            return
        if (
            self.ctx.exchange is not None
            and self.chain.config.tls is not None
            and _selected_exchange(transport)
        ):
            self._reader = HeaderReader()  # the client's header names it for the upstream's metrics
            return
        self._connect_upstream()

    def _connect_upstream(self) -> None:
        """Choose a host of the cluster and start connecting to it."""
        assert self.transport is not None
        cluster = self.ctx.cluster
        if cluster is None:
            self._fail(ResponseFlag.NO_CLUSTER_FOUND)
            return
        destination = self._original_destination() if cluster.config.original_dst else None
        if not (cluster.hosts or destination):
            self._fail(ResponseFlag.NO_HEALTHY_UPSTREAM)
            return
        if not cluster.limits.try_acquire_connection():
            self._fail(ResponseFlag.UPSTREAM_OVERFLOW)
            return
        if destination is not None:
            self.host = cluster.original_host(*destination)
        else:
            index = cluster.choose_host()
            if index is None:
                cluster.limits.release_connection()
                self._fail(ResponseFlag.NO_HEALTHY_UPSTREAM)
                return
            self.host = cluster.hosts[index]
        self.host.stats.active_requests += 1
        self.transport.pause_reading()
        self._connect = asyncio.get_running_loop().create_task(
            self._open(self.host), name=f"tcp connect {self.host.address}"
        )

    def _original_destination(self) -> tuple[str, int] | None:
        """Where an ORIGINAL_DST cluster sends this connection: where the client sent
        it before iptables redirected it here. None when it was not redirected (its
        original destination is this listener's own socket): connecting there would
        bring the connection back to this proxy, over and over."""
        local = self.local
        transport = self.transport
        own = transport.get_extra_info("sockname") if transport is not None else None
        if local is None or (isinstance(own, tuple) and tuple(own[:2]) == local):
            log.debug("tcp: %s was not redirected here: no original destination", own)
            return None
        return local

    async def _open(self, host: HostRuntime) -> None:
        upstream = await host.connect(lambda: _UpstreamSide(self), half_close=True)
        cluster = host.cluster
        if isinstance(upstream, str):
            if cluster.outlier is not None:
                cluster.report(host, Outcome.LOCAL_FAILURE)
            self._fail(ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
            return
        if cluster.outlier is not None:
            cluster.report(host, Outcome.SUCCESS)
        if self.closed:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        host.stats.active_connections += 1
        self.upstream = upstream
        if upstream.reader is None:  # else opened once the server's header is in
            self._count_opened()
        if self._pending and upstream.transport is not None:
            upstream.transport.write(b"".join(self._pending))
            self._pending.clear()
        if self._eof_down and upstream.transport is not None:
            _end_writing(upstream.transport)
        if self.transport is not None:
            self.transport.resume_reading()

    # -- downstream events -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._reader is not None:
            data = self._client_header(self._reader, data)
            if not data:
                return
        self.received += len(data)
        self.last_activity = time.monotonic()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool:
        if self._reader is not None:  # ended inside the exchange: nothing to relay
            self._close()
            return False
        self._eof_down = True
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            _end_writing(upstream.transport)
        self._maybe_close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # -- the metadata exchange --------------------------------------------------------

    def _client_header(self, reader: HeaderReader, data: bytes) -> bytes:
        """Feed the client's header; the application bytes after it (b"": none yet)."""
        self.last_activity = time.monotonic()
        read = reader.feed(data)
        outcome = read.outcome
        if outcome is ReadOutcome.PENDING:
            return b""
        self._reader = None
        if outcome is ReadOutcome.TOO_LARGE:
            self._fail(ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR)
            return b""
        exchange = self.ctx.exchange
        if outcome is ReadOutcome.FOUND and exchange is not None:
            self.peer_workload = exchange.peer(read.payload)
            if self.transport is not None:
                self.transport.write(exchange.header)  # answered only to a peer that spoke it
        self._connect_upstream()
        return read.rest

    def upstream_header(self, upstream: _UpstreamSide, data: bytes) -> bytes:
        """Feed the server's header; the application bytes after it (b"": none yet)."""
        reader = upstream.reader
        assert reader is not None
        read = reader.feed(data)
        outcome = read.outcome
        if outcome is ReadOutcome.PENDING:
            return b""
        upstream.reader = None
        if outcome is ReadOutcome.TOO_LARGE:
            self._fail(ResponseFlag.UPSTREAM_PROTOCOL_ERROR)
            return b""
        exchange = self.ctx.exchange
        if outcome is ReadOutcome.FOUND and exchange is not None:
            self.peer_workload = exchange.peer(read.payload)
        if self.upstream is upstream and not self.closed:
            self._count_opened()
        return read.rest

    def _count_opened(self) -> None:
        self._opened = True
        self.ctx.metrics.tcp_opened(self._labels(self.upstream))

    # -- upstream events ---------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        self.sent += len(data)
        self.last_activity = time.monotonic()
        if self.transport is not None:
            self.transport.write(data)

    def upstream_eof(self) -> None:
        self._eof_up = True
        if self.transport is not None:
            _end_writing(self.transport)
        self._maybe_close()

    def upstream_lost(self) -> None:
        if not self.closed and not self._eof_up:
            self.flags |= ResponseFlag.UPSTREAM_CONNECTION_TERMINATION
        self._close()

    def pause_downstream(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_downstream(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # -- endings -----------------------------------------------------------------------

    def close(self) -> None:
        """Close both sides (idle timeout, drain)."""
        self._close()

    def _maybe_close(self) -> None:
        if self._eof_down and self._eof_up:
            self._close()

    def _fail(self, flag: ResponseFlag) -> None:
        self.flags |= flag
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._connect is not None and not self._connect.done():
            self._connect.cancel()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.close()
        if self.transport is not None:
            self.transport.close()
        host = self.host
        cluster = self.ctx.cluster
        if host is not None and cluster is not None:
            host.stats.active_requests -= 1
            if self.upstream is not None:
                host.stats.active_connections -= 1
            cluster.limits.release_connection()
        flags = format_flags(self.flags)
        metrics = self.ctx.metrics
        labels = self._labels(self.upstream)
        if not self._opened:  # never connected: count it opened with its failure flags
            metrics.tcp_opened(labels, flags)
        metrics.tcp_bytes(labels, self.sent, self.received, flags)
        metrics.tcp_closed(labels, flags)
        if self.ctx.logs:
            self.ctx.log(self, flags)
        self.listener.connection_closed(self)


def _end_writing(transport: asyncio.Transport) -> None:
    """Pass an EOF on: half-close a plain socket or a `TlsStream` (close_notify); an
    asyncio TLS transport cannot half-close, so it is closed once its buffered bytes
    are written, or the peer would never learn the stream ended."""
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()
