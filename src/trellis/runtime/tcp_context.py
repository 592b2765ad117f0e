"""The TCP proxy filter compiled for one listener: what every connection of a
filter chain shares (the upstream cluster, metric labels per peer, RBAC
counters, access log sinks).

With network RBAC filters (`TcpProxy.authz`) a connection is authorized once,
when it is established (after the TLS handshake, so the peer's principal is
known) and before any upstream is chosen: a denied connection is closed
without contacting the upstream. (Envoy decides on the first bytes from the
client; deciding at once also covers protocols where the server speaks
first.) Decisions are counted as `<stat_prefix>rbac.allowed` / `.denied`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from trellis.core.accesslog import AccessLogEntry
from trellis.core.authz import AuthzConfig, AuthzDecision
from trellis.core.authz_match import AuthzRequest, parse_ip
from trellis.core.config import TcpProxy
from trellis.core.labels import with_peer_identity
from trellis.core.metrics import CounterCell, IstioMetrics, PeerLabels, StatsRegistry
from trellis.core.peer_metadata import WorkloadMetadata
from trellis.core.tcp_exchange import TcpPeerExchange

if TYPE_CHECKING:
    from trellis.runtime.cluster import ClusterRuntime
    from trellis.runtime.tcp import TcpDownstream
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
