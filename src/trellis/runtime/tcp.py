"""The TCP proxy filter: a byte pipe between a client and one upstream host.

Half-close is honoured in both directions: an EOF from one side becomes a
`write_eof` on the other, and the pair closes once both directions ended.

With network RBAC filters (`TcpProxy.authz`) a connection is authorized once,
when it is established (after the TLS handshake, so the peer's principal is
known) and before any upstream is chosen: a denied connection is closed
without contacting the upstream. (Envoy decides on the first bytes from the
client; deciding at once also covers protocols where the server speaks
first.) Decisions are counted as `<stat_prefix>rbac.allowed` / `.denied`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
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
        "_by_principal",
        "cluster",
        "config",
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
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.metrics = metrics
        self.peer = peer
        self.logs = logs
        self.own_principal = own_principal
        self._by_principal: dict[str, PeerLabels] = {}
        authz = config.authz
        self.rbac_allowed: CounterCell | None = None
        self.rbac_denied: CounterCell | None = None
        if authz is not None:
            self.rbac_allowed = _rbac_counter(stats, authz, "allowed")
            self.rbac_denied = _rbac_counter(stats, authz, "denied")

    def labels(self, principal: str | None) -> PeerLabels:
        """The metric labels of a connection whose peer proved `principal` over mTLS
        (the client, for the destination reporter; the upstream, for the source)."""
        if principal is None:
            return self.peer
        found = self._by_principal.get(principal)
        if found is None:
            found = with_peer_identity(self.peer, principal, self.own_principal)
            if len(self._by_principal) < _MAX_PRINCIPALS:
                self._by_principal[principal] = found
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


class _UpstreamSide(asyncio.Protocol):
    __slots__ = ("peer_principal", "pipe", "transport")

    def __init__(self, pipe: TcpDownstream) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.peer_principal: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peercert = transport.get_extra_info("peercert")
        if peercert:
            self.peer_principal = peer_principal(peer_sans(peercert))

    def data_received(self, data: bytes) -> None:
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
        "_pending",
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

    def _labels(self, upstream: _UpstreamSide | None) -> PeerLabels:
        inbound = self.ctx.peer.reporter == "destination"
        principal = self.peer_principal if inbound else None
        if not inbound and upstream is not None:
            principal = upstream.peer_principal
        return self.ctx.labels(principal)

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
        self.ctx.metrics.tcp_opened(self._labels(upstream))
        self.upstream = upstream
        if self._pending and upstream.transport is not None:
            upstream.transport.write(b"".join(self._pending))
            self._pending.clear()
        if self._eof_down and upstream.transport is not None and upstream.transport.can_write_eof():
            upstream.transport.write_eof()
        if self.transport is not None:
            self.transport.resume_reading()

    # -- downstream events -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.last_activity = time.monotonic()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)
        else:
            self._pending.append(data)

    def eof_received(self) -> bool:
        self._eof_down = True
        upstream = self.upstream
        if (
            upstream is not None
            and upstream.transport is not None
            and upstream.transport.can_write_eof()
        ):
            upstream.transport.write_eof()
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

    # -- upstream events ---------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        self.sent += len(data)
        self.last_activity = time.monotonic()
        if self.transport is not None:
            self.transport.write(data)

    def upstream_eof(self) -> None:
        self._eof_up = True
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
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
        if self.upstream is None:  # never connected: count it opened with its failure flags
            metrics.tcp_opened(labels, flags)
        metrics.tcp_bytes(labels, self.sent, self.received, flags)
        metrics.tcp_closed(labels, flags)
        if self.ctx.logs:
            self.ctx.log(self, flags)
        self.listener.connection_closed(self)
