"""Upstream clusters at run time: hosts, their connection pools, balancer, limits and
outlier detection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from trellis.core.addresses import SocketAddress
from trellis.core.balancer import HostStats, LoadBalancer, choose_with_predicate, make_balancer
from trellis.core.circuit import ResourceLimits
from trellis.core.config import Cluster, Endpoint
from trellis.core.outlier import Outcome, OutlierDetector, choose_available
from trellis.core.prometheus import StatsRegistry
from trellis.core.tls import san_allowed, upstream_tls_for
from trellis.runtime.connect import open_connection, open_tls_stream
from trellis.runtime.secrets import SecretStore, peer_sans
from trellis.runtime.upstream import UpstreamConnection

log = logging.getLogger("trellis.upstream")

P = TypeVar("P", bound=asyncio.BaseProtocol)


class PoolWaiter(Protocol):
    """A request waiting for a connection from a host's pool."""

    def on_pool_ready(self, conn: UpstreamConnection) -> None: ...
    def on_pool_failure(self, reason: str) -> None: ...


class HostRuntime:
    """One endpoint of a cluster: its address, counters and pool."""

    __slots__ = (
        "address",
        "cluster",
        "cx_connect_fail",
        "cx_total",
        "endpoint",
        "index",
        "pool",
        "stats",
    )

    def __init__(self, cluster: ClusterRuntime, index: int, endpoint: Endpoint) -> None:
        self.cluster = cluster
        self.index = index
        self.address = endpoint.address
        self.endpoint = endpoint
        self.stats = HostStats()
        self.pool = HostPool(self)
        self.cx_total = 0
        self.cx_connect_fail = 0

    async def connect(self, factory: Callable[[], P], *, half_close: bool = False) -> P | str:
        """A new connection within the cluster's connect timeout, or why it failed.

        Failures are counted here; the caller counts the connection as active
        once it decides to keep it. `half_close`: a TLS connection's transport can
        end one direction only (`TlsStream`, for the TCP proxy).
        """
        self.cx_total += 1
        address = self.address
        config = self.cluster.config
        tls = upstream_tls_for(
            config.transport_socket,
            config.transport_socket_matches,
            self.endpoint.transport_metadata,
        )
        context = None
        if tls is not None:
            secrets = self.cluster.secrets
            context = secrets.client_context(tls) if secrets is not None else None
            if context is None:
                return self._failed("TLS error: the certificate or trusted CAs are not ready")
        sni = tls.sni if tls is not None else None  # "": no SNI
        handshake_timeout = config.connect_timeout if context is not None else None
        try:
            if context is not None and half_close:
                transport, protocol = await asyncio.wait_for(
                    open_tls_stream(address, factory, context, sni, config.connect_timeout),
                    config.connect_timeout,
                )
            else:
                transport, protocol = await asyncio.wait_for(
                    open_connection(address, factory, context, sni, handshake_timeout),
                    config.connect_timeout,
                )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.debug("connect to %s failed: %s", address, exc)
            if isinstance(exc, TimeoutError):
                return self._failed("connection timeout")
            if context is not None and isinstance(exc, ssl.SSLError):
                return self._failed(f"TLS error: {exc.reason or exc}")
            return self._failed("connection failure")
        if tls is not None and tls.common.san_matchers:
            sans = peer_sans(transport.get_extra_info("peercert"))
            if not san_allowed(tls.common.san_matchers, sans):
                transport.close()
                log.debug("upstream %s: certificate SANs %s are not expected", address, sans)
                return self._failed("TLS error: the peer's certificate SAN does not match")
        return protocol

    def _failed(self, reason: str) -> str:
        self.cx_connect_fail += 1
        self.stats.connect_failures += 1
        return reason


class HostPool:
    """HTTP/1.1 connections to one host: idle ones (reused newest first) and waiters.

    Limits are the cluster's circuit breakers: a connection is opened only while
    `max_connections` allows; otherwise waiters queue (bounded by
    `max_pending_requests`, checked by the caller) until one is released.
    """

    __slots__ = ("_tasks", "connecting", "host", "idle", "waiters")

    def __init__(self, host: HostRuntime) -> None:
        self.host = host
        self.idle: list[UpstreamConnection] = []
        self.waiters: deque[PoolWaiter] = deque()
        self.connecting = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def fail_waiters(self, reason: str) -> None:
        """Fail the requests queued here beyond the connections being opened for them
        (the host left its cluster: nothing else would ever serve them)."""
        while len(self.waiters) > self.connecting:
            self.waiters.pop().on_pool_failure(reason)

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def wait(self, waiter: PoolWaiter) -> None:
        """Queue `waiter`; opens a connection for it if the limits allow."""
        self.waiters.append(waiter)
        if (
            self.connecting < len(self.waiters)
            and self.host.cluster.limits.try_acquire_connection()
        ):
            self._open()

    def cancel(self, waiter: PoolWaiter) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def release(self, conn: UpstreamConnection) -> None:
        """A request finished with `conn` and it can be reused."""
        conn.listener = None
        if conn.closed:
            return
        transport = conn.transport  # a finished response may have left it paused
        if transport is not None and not transport.is_reading():
            transport.resume_reading()
        if self.waiters:
            self.waiters.popleft().on_pool_ready(conn)
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def connection_closed(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self.host.stats.active_connections -= 1
        cluster = self.host.cluster
        cluster.limits.release_connection()
        cluster.serve_waiters()

    def close_idle(self, older_than: float) -> None:
        keep = []
        for conn in self.idle:
            if conn.idle_since <= older_than:
                conn.close()
            else:
                keep.append(conn)
        self.idle[:] = keep

    def _open(self) -> None:
        self.connecting += 1
        task = asyncio.get_running_loop().create_task(
            self._connect(), name=f"connect {self.host.address}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        host = self.host
        cluster = host.cluster
        conn = await host.connect(lambda: UpstreamConnection(host))
        self.connecting -= 1
        if isinstance(conn, str):
            cluster.limits.release_connection()
            if self.waiters:
                self.waiters.popleft().on_pool_failure(conn)
            cluster.serve_waiters()
            return
        host.stats.active_connections += 1
        transport = conn.transport
        if transport is not None:
            limit = cluster.buffer_limit
            transport.set_write_buffer_limits(high=limit, low=limit // 4)
        if self.waiters:
            self.waiters.popleft().on_pool_ready(conn)
        else:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)


class ClusterRuntime:
    """A cluster's live state. A config change updates it in place: hosts that stay
    keep their pools and counters, requests in flight keep the hosts they hold."""

    __slots__ = (
        "balancer",
        "buffer_limit",
        "config",
        "hosts",
        "limits",
        "original_hosts",
        "outlier",
        "rng",
        "secrets",
    )

    def __init__(
        self,
        config: Cluster,
        rng: random.Random,
        buffer_limit: int = 1 << 20,
        secrets: SecretStore | None = None,
    ) -> None:
        self.config = config
        self.rng = rng
        self.secrets = secrets
        self.buffer_limit = buffer_limit
        self.limits = ResourceLimits(config.thresholds)
        self.hosts = [HostRuntime(self, i, ep) for i, ep in enumerate(config.endpoints)]
        self.balancer: LoadBalancer = make_balancer(config, [h.stats for h in self.hosts], rng)
        self.outlier: OutlierDetector | None = None  # None: the hot path skips it
        self._update_outlier(None, [None] * len(self.hosts))
        # ORIGINAL_DST: a host per original destination in use (`original_host`).
        self.original_hosts: dict[tuple[str, int], HostRuntime] = {}

    def update(self, config: Cluster) -> None:
        """Take a new config (for EDS clusters, with the endpoints filled in)."""
        if config == self.config:
            return
        old_config, self.config = self.config, config
        if (old_config.transport_socket, old_config.transport_socket_matches) != (
            config.transport_socket,
            config.transport_socket_matches,
        ):
            now = time.monotonic()
            for old_host in self.hosts:  # idle connections may use the old transport
                old_host.pool.close_idle(now)
        self.limits.thresholds = config.thresholds
        previous = {host.address: host for host in self.hosts}
        hosts = []
        kept: list[int | None] = []  # new index -> old index of the same host
        for index, endpoint in enumerate(config.endpoints):
            host = previous.pop(endpoint.address, None)
            kept.append(None if host is None else host.index)
            if host is None:
                host = HostRuntime(self, index, endpoint)
            elif host.endpoint.transport_metadata != endpoint.transport_metadata:
                host.pool.close_idle(time.monotonic())  # they may use another transport
            host.endpoint = endpoint
            host.index = index
            hosts.append(host)
        for gone in previous.values():
            gone.pool.close_idle(float("inf"))
            gone.pool.fail_waiters("upstream host removed")
        self.hosts = hosts
        self.balancer = make_balancer(config, [h.stats for h in hosts], self.rng)
        self._update_outlier(old_config, kept)

    def _update_outlier(self, old: Cluster | None, kept: list[int | None]) -> None:
        """Hosts that stay keep their outlier state; a changed policy starts afresh
        (Envoy builds a new detector for a changed cluster)."""
        config = self.config
        policy = config.outlier_detection
        if policy is None:
            self.outlier = None
        elif (
            self.outlier is not None
            and old is not None
            and old.outlier_detection == policy
            and old.healthy_panic_threshold == config.healthy_panic_threshold
        ):
            self.outlier.remap(kept)
        else:
            self.outlier = OutlierDetector(
                policy,
                len(self.hosts),
                time.monotonic(),
                self.rng.random,
                panic_threshold=config.healthy_panic_threshold,
            )

    def choose_host(self, exclude: Sequence[int] = (), attempts: int = 1) -> int | None:
        """A host index: ejected hosts are skipped (unless the cluster is in panic), and
        the previous hosts in `exclude` are avoided up to `attempts` re-picks."""
        outlier = self.outlier
        if outlier is not None and outlier.unavailable:
            return choose_available(self.balancer, outlier.unavailable, exclude, attempts)
        if not exclude:
            return self.balancer.choose()
        return choose_with_predicate(self.balancer, exclude, attempts)

    def original_host(self, host: str, port: int) -> HostRuntime:
        """ORIGINAL_DST: the host for the original destination `host`:`port`, made on
        first use (as Envoy adds them on demand) and dropped by `sweep_idle` once no
        connection uses it. Such hosts stay out of `hosts` and the balancer."""
        key = (host, port)
        found = self.original_hosts.get(key)
        if found is None:
            endpoint = Endpoint(SocketAddress(host, port))
            found = self.original_hosts[key] = HostRuntime(self, -1, endpoint)
        return found

    def report(self, host: HostRuntime, outcome: Outcome) -> None:
        """An outcome for outlier detection; call only when `self.outlier` is set."""
        outlier = self.outlier
        index = host.index
        hosts = self.hosts
        if outlier is not None and index < len(hosts) and hosts[index] is host:
            outlier.record(index, outcome, time.monotonic())

    def health_flags(self, index: int) -> str:
        """Envoy's `/clusters` health flags of host `index`."""
        outlier = self.outlier
        if outlier is not None and outlier.ejected(index):
            return "/failed_outlier_check"
        return "healthy"

    def serve_waiters(self) -> None:
        """After a connection slot frees up, open connections for queued requests."""
        for host in self.hosts:
            pool = host.pool
            while pool.connecting < len(pool.waiters) and self.limits.try_acquire_connection():
                pool._open()

    def sweep_idle(self, now: float) -> None:
        if self.original_hosts:
            self._forget_unused_originals()
        timeout = self.config.idle_timeout
        if timeout is None:
            return
        for host in self.hosts:
            host.pool.close_idle(now - timeout)

    def _forget_unused_originals(self) -> None:
        """Drop the ORIGINAL_DST hosts no connection or request holds any more."""
        unused = [
            key
            for key, host in self.original_hosts.items()
            if not (host.stats.active_requests or host.stats.active_connections)
            and not host.pool.waiters
            and not host.pool.connecting
        ]
        for key in unused:
            self.original_hosts.pop(key).pool.close_idle(float("inf"))

    def close(self) -> None:
        for host in [*self.hosts, *self.original_hosts.values()]:
            for conn in host.pool.idle:
                conn.close()
            host.pool.idle.clear()


class ClusterManager:
    __slots__ = ("clusters", "secrets")

    def __init__(
        self, clusters: dict[str, ClusterRuntime], secrets: SecretStore | None = None
    ) -> None:
        self.clusters = clusters
        self.secrets = secrets

    @classmethod
    def build(
        cls, configs: tuple[Cluster, ...], rng: random.Random, secrets: SecretStore | None = None
    ) -> ClusterManager:
        return cls({c.name: ClusterRuntime(c, rng, secrets=secrets) for c in configs}, secrets)

    def sweep_idle(self, now: float) -> None:
        for cluster in self.clusters.values():
            cluster.sweep_idle(now)

    def sweep_outliers(self, now: float) -> None:
        """Return ejected hosts to service when their time is over (every `interval`)."""
        for cluster in self.clusters.values():
            if cluster.outlier is not None:
                cluster.outlier.sweep(now)

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()


_OUTLIER_COUNTERS = (
    "ejections_total",
    "ejections_consecutive_5xx",
    "ejections_overflow",
    "ejections_enforced_total",
    "ejections_detected_consecutive_5xx",
    "ejections_enforced_consecutive_5xx",
    "ejections_detected_consecutive_gateway_failure",
    "ejections_enforced_consecutive_gateway_failure",
)


def publish_outlier_stats(stats: StatsRegistry, cluster: ClusterRuntime) -> None:
    """Envoy's `cluster.<name>.outlier_detection.*` stats of `cluster`, if it has a detector."""
    outlier = cluster.outlier
    if outlier is None:
        return
    name = cluster.config.name
    labels = (("envoy_cluster_name", name),)
    prefix = f"cluster.{name}.outlier_detection."
    stats.gauge(
        "envoy_cluster_outlier_detection_ejections_active",
        labels,
        stat_name=prefix + "ejections_active",
    ).value = outlier.ejections_active
    counts = outlier.stats
    for key in _OUTLIER_COUNTERS:
        stats.counter(
            "envoy_cluster_outlier_detection_" + key, labels, stat_name=prefix + key
        ).value = getattr(counts, key)
