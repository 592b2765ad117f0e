"""Recording what happened: Istio metrics, Envoy-style counters and access logs."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING

from trellis.core.accesslog import AccessLogEntry, AccessLogFormatter
from trellis.core.config import AccessLogConfig, NodeIdentity, TrafficDirection
from trellis.core.labels import peer_labels, service_from_cluster, with_peer_identity
from trellis.core.metrics import (
    CounterCell,
    HttpSeries,
    IstioMetrics,
    PeerLabels,
    ResponseFlag,
    StatsRegistry,
    format_flags,
)
from trellis.core.peer_metadata import WorkloadMetadata
from trellis.core.routing import strip_port

if TYPE_CHECKING:
    from trellis.runtime.router import Stream

_NO_FLAG = ResponseFlag.NONE  # a module global: cheaper to load than the enum's attribute
_MAX_PEER_CACHE = 4096  # authorities are client-chosen: bound what they can make us keep
_MAX_SERIES_CACHE = 4096  # the same for the series cache (emptied when full: it is a cache)

# What a finished request's Istio series is cached under: cluster, authority, peer
# principal, peer workload, status code, flags. Plain values: no Python-level hash.
_SeriesKey = tuple[str, str, str | None, WorkloadMetadata | None, int, str]


class AccessLogSink:
    """One configured access log: a compiled format and where lines go."""

    __slots__ = ("formatter", "stream")

    def __init__(self, config: AccessLogConfig) -> None:
        self.formatter = AccessLogFormatter.from_config(config.text_format, config.json_format)
        self.stream: IO[str] = (
            sys.stdout
            if config.path in (None, "/dev/stdout")
            else open(config.path, "a", buffering=1 << 16)  # noqa: SIM115
        )

    def write(self, entry: AccessLogEntry) -> None:
        line = self.formatter.format(entry)
        self.stream.write(line if line.endswith("\n") else line + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()


class HttpRecorder:
    """Per-listener recorder for finished HTTP streams."""

    __slots__ = (
        "_cx_rq",
        "_inbound",
        "_peers",
        "_prefix",
        "_rbac",
        "_rq_by_class",
        "_series",
        "direction",
        "logs",
        "metrics",
        "node",
        "stats",
    )

    def __init__(
        self,
        node: NodeIdentity,
        direction: TrafficDirection,
        stat_prefix: str,
        metrics: IstioMetrics,
        stats: StatsRegistry,
        logs: tuple[AccessLogSink, ...],
    ) -> None:
        self.node = node
        self.direction = direction
        self._inbound = direction is TrafficDirection.INBOUND
        self.metrics = metrics
        self.stats = stats
        self.logs = logs
        self._peers: dict[tuple[str, str, str | None, WorkloadMetadata | None], PeerLabels] = {}
        self._series: dict[_SeriesKey, HttpSeries] = {}
        labels = (("envoy_http_conn_manager_prefix", stat_prefix),)
        self._cx_rq = stats.counter("envoy_http_downstream_rq_total", labels)
        self._rq_by_class = [
            stats.counter(
                "envoy_http_downstream_rq_xx",
                (*labels, ("envoy_response_code_class", str(c))),
                stat_name=f"http.{stat_prefix}.downstream_rq_{c}xx",
            )
            for c in range(6)
        ]
        # Envoy's RBAC filter counters, `http.<prefix>.rbac.denied` and `.allowed`,
        # created when a request is first decided (listeners without RBAC show none).
        self._rbac: dict[bool, CounterCell] = {}
        self._prefix = stat_prefix

    def peer(
        self,
        cluster_name: str,
        authority: str,
        principal: str | None,
        workload: WorkloadMetadata | None = None,
    ) -> PeerLabels:
        """Labels for a request to `cluster_name`/`authority` whose peer proved `principal`
        over mTLS (the client, inbound; the upstream, outbound), else None, and told
        its `workload` in the metadata exchange, else None."""
        key = (cluster_name, authority, principal, workload)
        peer = self._peers.get(key)
        if peer is None:
            host = service_from_cluster(cluster_name) or strip_port(authority).lower()
            if len(self._peers) >= _MAX_PEER_CACHE:
                host = "unknown"
                key = ("", "", principal, workload)
                peer = self._peers.get(key)
                if peer is not None:
                    return peer
            peer = peer_labels(self.node, self.direction, host, peer=workload)
            if principal is not None:
                peer = with_peer_identity(peer, principal, self.node.principal)
            self._peers[key] = peer
        return peer

    def record(self, stream: Stream) -> None:
        now = time.monotonic()
        duration_ms = (now - stream.start) * 1000.0
        code = stream.response_code
        # Identity, not truth value: Flag.__bool__ is Python code, and this runs per request.
        flags = "-" if stream.flags is _NO_FLAG else format_flags(stream.flags)
        cluster = stream.cluster
        cluster_name = cluster.config.name if cluster is not None else ""
        principal = stream.conn.peer_principal if self._inbound else stream.upstream_principal
        key = (cluster_name, stream.authority, principal, stream.peer_workload, code, flags)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key)
        series.observe(
            duration_ms,
            stream.body_bytes + stream.request_head_bytes,
            stream.response_bytes + stream.response_head_bytes,
        )
        self._cx_rq.value += 1
        self._rq_by_class[code // 100 if 0 < code < 600 else 0].value += 1
        if stream.authz is not None:
            self._rbac_counter(stream.authz.allowed).value += 1
        if self.logs:
            entry = self._entry(stream, code, flags, duration_ms, now)
            for sink in self.logs:
                sink.write(entry)

    def _new_series(self, key: _SeriesKey) -> HttpSeries:
        cluster_name, authority, principal, workload, code, flags = key
        series = self.metrics.http_series(
            self.peer(cluster_name, authority, principal, workload), code, flags
        )
        if len(self._series) >= _MAX_SERIES_CACHE:
            self._series.clear()
        self._series[key] = series
        return series

    def _rbac_counter(self, allowed: bool) -> CounterCell:
        cell = self._rbac.get(allowed)
        if cell is None:
            outcome = "allowed" if allowed else "denied"
            cell = self._rbac[allowed] = self.stats.counter(
                f"envoy_http_rbac_{outcome}",
                (("envoy_http_conn_manager_prefix", self._prefix),),
                stat_name=f"http.{self._prefix}.rbac.{outcome}",
            )
        return cell

    def _entry(
        self, stream: Stream, code: int, flags: str, duration_ms: float, now: float
    ) -> AccessLogEntry:
        headers = dict((n.decode("latin-1"), v.decode("latin-1")) for n, v in stream.headers)
        route = stream.route
        host = stream.last_host
        generated_id = stream.request_id
        decision = stream.authz
        allowed = decision is not None and decision.allowed
        return AccessLogEntry(
            start_time=time.time() - (now - stream.start),
            method=stream.method.decode("latin-1"),
            path=stream.path,
            protocol="HTTP/1.1" if stream.conn.http11 else "HTTP/1.0",
            authority=stream.authority,
            response_code=code,
            response_flags=flags,
            bytes_received=stream.body_bytes,
            bytes_sent=stream.response_bytes,
            duration_ms=duration_ms,
            upstream_host=str(host.address) if host is not None else None,
            upstream_cluster=stream.cluster.config.name if stream.cluster is not None else None,
            route_name=route.route.name or None if route is not None else None,
            request_id=headers.get("x-request-id")
            or (generated_id.decode("ascii") if generated_id is not None else None),
            trace_id=f"{stream.trace.trace_id:032x}" if stream.trace is not None else None,
            downstream_remote_address=stream.conn.remote_ip,
            downstream_local_address=stream.conn.local_address(),
            user_agent=headers.get("user-agent"),
            x_forwarded_for=headers.get("x-forwarded-for"),
            request_headers=headers,
            downstream_peer_uri_san=stream.conn.peer_principal,
            upstream_peer_uri_san=stream.upstream_principal,
            rbac_result=None if decision is None else "allowed" if allowed else "denied",
            rbac_policy=(
                None
                if decision is None
                else decision.policy or (None if allowed else decision.reason)
            ),
            response_code_details=None if decision is None or allowed else decision.details,
        )
