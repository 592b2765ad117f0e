"""The TCP proxy filter: a byte pipe between a client and one upstream host.

Half-close is honoured in both directions: an EOF from one side becomes a
`write_eof` on the other, and the pair closes once both directions ended.

With network RBAC filters (`TcpProxy.authz`) a connection is authorized once,
when it is established (after the TLS handshake, so the peer's principal is
known) and before any upstream is chosen: a denied connection is closed
without contacting the upstream. (Envoy decides on the first bytes from the
client; deciding at once also covers protocols where the server speaks
first.) Decisions are counted as `<stat_prefix>rbac.allowed` / `.denied`.

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
import dataclasses
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from trellis.core.accesslog import AccessLogEntry
from trellis.core.authz import AuthzConfig, AuthzDecision
from trellis.core.authz_match import AuthzRequest, parse_ip
from trellis.core.config import SocketAddress, TcpProxy
from trellis.core.labels import with_peer_identity
from trellis.core.metrics import (
    CounterCell,
    IstioMetrics,
    PeerLabels,
    ResponseFlag,
    StatsRegistry,
    format_flags,
)
from trellis.core.outlier import Outcome
from trellis.core.peer_metadata import WorkloadMetadata
from trellis.core.tcp_exchange import ALPN, HeaderReader, ReadOutcome, TcpPeerExchange
from trellis.runtime.secrets import peer_principal, peer_sans

if TYPE_CHECKING:
    from trellis.runtime.cluster import ClusterRuntime, HostRuntime
    from trellis.runtime.listener import ChainRuntime, ListenerRuntime
    from trellis.runtime.telemetry import AccessLogSink


_NOT_METRIC_CHAR = re.compile(r"[^a-zA-Z0-9_]")
_MAX_PRINCIPALS = 4096  # peers choose their certificates' names: bound what they can make us keep


def _rbac_counter(stats: StatsRegistry | None, authz: AuthzConfig, outcome: str) -> CounterCell:
    """Envoy's network RBAC counter `<stat_prefix>rbac.<outcome>` (`tcp.rbac.denied` is
    `envoy_tcp_rbac_denied`), under the first filter's prefix: one count per connection."""
    if stats is None:
        return CounterCell()
    prefix = authz.layers[0].stat_prefix if authz.layers else ""
    if prefix and not prefix.endswith("."):
        prefix += "."
    stat = f"{prefix}rbac.{outcome}"
    return stats.counter("envoy_" + _NOT_METRIC_CHAR.sub("_", stat), stat_name=stat)


class TcpContext:
    """A TCP proxy filter, compiled for one listener."""

    __slots__ = (
        "_by_peer",
        "_labels_for",
        "cluster",
        "config",
        "exchange",
        "logs",
        "metrics",
        "own_principal",
        "peer",
        "rbac_allowed",
        "rbac_denied",
    )

    def __init__(
        self,
        config: TcpProxy,
        cluster: ClusterRuntime | None,
        metrics: IstioMetrics,
        peer: PeerLabels,
        logs: tuple[AccessLogSink, ...] = (),
        stats: StatsRegistry | None = None,
        own_principal: str = "unknown",
        exchange: TcpPeerExchange | None = None,
        labels_for: Callable[[WorkloadMetadata], PeerLabels] | None = None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.metrics = metrics
        self.peer = peer
        self.logs = logs
        self.own_principal = own_principal
        # The metadata exchange (None: not on this chain) and the labels of a peer it names.
        self.exchange = exchange if labels_for is not None else None
        self._labels_for = labels_for
        self._by_peer: dict[tuple[str | None, WorkloadMetadata | None], PeerLabels] = {}
        authz = config.authz
        self.rbac_allowed: CounterCell | None = None
        self.rbac_denied: CounterCell | None = None
        if authz is not None:
            self.rbac_allowed = _rbac_counter(stats, authz, "allowed")
            self.rbac_denied = _rbac_counter(stats, authz, "denied")

    def labels(self, principal: str | None, workload: WorkloadMetadata | None = None) -> PeerLabels:
        """The metric labels of a connection whose peer proved `principal` over mTLS
        (the client, for the destination reporter; the upstream, for the source) and
        told its `workload` in the metadata exchange."""
        if principal is None and workload is None:
            return self.peer
        key = (principal, workload)
        found = self._by_peer.get(key)
        if found is None:
            found = self.peer
            if workload is not None and self._labels_for is not None:
                found = self._labels_for(workload)
            if principal is not None:
                found = with_peer_identity(found, principal, self.own_principal)
            if len(self._by_peer) < _MAX_PRINCIPALS:
                self._by_peer[key] = found
        return found

    def authorize(self, pipe: TcpDownstream, authz: AuthzConfig) -> AuthzDecision:
        """Decide on `pipe`'s connection, count the outcome and remember it for the log."""
        transport = pipe.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        local = pipe.local
        port = pipe.listener.config.address.port if local is None else local[1]
        if local is None and transport is not None:
            local = transport.get_extra_info("sockname")
        request = AuthzRequest(
            principal=pipe.peer_principal,
            source_ip=parse_ip(peer[0]) if isinstance(peer, tuple) else None,
            destination_ip=parse_ip(local[0]) if isinstance(local, tuple) else None,
            destination_port=port,
            method="",
            path="",
            authority="",
        )
        decision = pipe.authz = authz.decide(request)
        counter = self.rbac_allowed if decision.allowed else self.rbac_denied
        if counter is not None:
            counter.value += 1
        return decision

    def log(self, pipe: TcpDownstream, flags: str) -> None:
        now = time.monotonic()
        host = pipe.host
        entry = AccessLogEntry(
            start_time=time.time() - (now - pipe.start),
            response_flags=flags,
            bytes_received=pipe.received,
            bytes_sent=pipe.sent,
            duration_ms=(now - pipe.start) * 1000.0,
            upstream_host=str(host.address) if host is not None else None,
            upstream_cluster=self.config.cluster,
            downstream_remote_address=pipe.remote,
            downstream_local_address=pipe.local_text,
            downstream_peer_uri_san=pipe.peer_principal,
        )
        decision = pipe.authz
        if decision is not None:
            allowed = decision.allowed
            entry = dataclasses.replace(
                entry,
                rbac_result="allowed" if allowed else "denied",
                rbac_policy=decision.policy or (None if allowed else decision.reason),
                connection_termination_details=None if allowed else decision.details,
            )
        for sink in self.logs:
            sink.write(entry)


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
        if cluster is None or not cluster.hosts:
            self._fail(
                ResponseFlag.NO_HEALTHY_UPSTREAM if cluster else ResponseFlag.NO_CLUSTER_FOUND
            )
            return
        if not cluster.limits.try_acquire_connection():
            self._fail(ResponseFlag.UPSTREAM_OVERFLOW)
            return
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

    async def _open(self, host: HostRuntime) -> None:
        upstream = await host.connect(lambda: _UpstreamSide(self))
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
    """Pass an EOF on: half-close a plain socket; a TLS transport cannot half-close
    (asyncio has no close_notify without closing), so it is closed once its buffered
    bytes are written, or the peer would never learn the stream ended."""
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()
