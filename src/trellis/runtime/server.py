"""The proxy at run time: listeners, clusters, admin server, housekeeping and drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from typing import TYPE_CHECKING

from trellis import __version__
from trellis.core.addresses import SocketAddress
from trellis.core.config import ProxyConfig
from trellis.core.metrics import CounterCell, IstioMetrics, StatsRegistry
from trellis.runtime.admin import HEALTH_ROUTES, STATS_ROUTES, AdminServer, PrometheusSources
from trellis.runtime.cluster import ClusterManager, ClusterRuntime, publish_outlier_stats
from trellis.runtime.listener import ConnectionBudget, ListenerRuntime
from trellis.runtime.manager import ConfigManager
from trellis.runtime.secrets import SecretStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from trellis.core.app_probe import AppProbe

log = logging.getLogger("trellis.proxy")

_HOUSEKEEPING_INTERVAL = 1.0


class ProxyServer:
    """Owns everything that runs inside one `trellis proxy` process."""

    def __init__(
        self,
        config: ProxyConfig,
        dump: Callable[[], dict[str, object]],
        *,
        drain_time: float = 5.0,
        rng: random.Random | None = None,
        stats_address: SocketAddress | None = None,
        health_address: SocketAddress | None = None,
        app_probes: Mapping[str, AppProbe] | None = None,
        app_probe_host: str = "127.0.0.1",
    ) -> None:
        """`stats_address`, `health_address`: where to serve Istio's agent ports (15020
        merged metrics, 15021 readiness), which Envoy's bootstrap has no field for.
        `app_probes`: the application's probes the stats port answers by path, sent
        to `app_probe_host` (the pod's IP, where the kubelet would have sent them)."""
        self.config = config
        self._dump = dump
        self.drain_time = drain_time
        self.rng = rng or random.Random()
        self.metrics = IstioMetrics()
        self.stats = StatsRegistry()
        self.secrets = SecretStore(config.secrets)
        self.clusters = ClusterManager.build(config.clusters, self.rng, self.secrets)
        self.budget = ConnectionBudget(config.max_downstream_connections)
        self.manager = ConfigManager(
            config.node,
            self.clusters,
            self.budget,
            self.metrics,
            self.stats,
            self.rng,
            self._note_retry,
        )
        self.admin: AdminServer | None = None
        self.prometheus_sources = PrometheusSources()
        """What every `/stats/prometheus` adds to the proxy's own metrics."""
        self._agent_ports = (
            ("stats", STATS_ROUTES, stats_address),
            ("health", HEALTH_ROUTES, health_address),
        )
        self.app_probes = dict(app_probes or {})
        self.app_probe_host = app_probe_host
        self.agent_servers: dict[str, AdminServer] = {}
        """The started agent ports by name (`stats`, `health`)."""
        self.started = time.time()
        self._state = "PRE_INITIALIZING"
        self._stop = asyncio.Event()
        self._retry_cells: dict[str, CounterCell] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self.stats.gauge("envoy_server_live").value = 0

    # -- building ------------------------------------------------------------------

    def _note_retry(self, cluster: ClusterRuntime) -> None:
        name = cluster.config.name
        cell = self._retry_cells.get(name)
        if cell is None:
            cell = self._retry_cells[name] = self.stats.counter(
                "envoy_cluster_upstream_rq_retry", (("envoy_cluster_name", name),)
            )
        cell.value += 1

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def listeners(self) -> list[ListenerRuntime]:
        return list(self.manager.listeners.values())

    async def start(self, *, live: bool = True) -> None:
        """Open the admin port and the static listeners; `live=False` waits for `set_live`."""
        loop = asyncio.get_running_loop()
        if self.config.admin is not None:
            self.admin = AdminServer(self, sources=self.prometheus_sources)
            address = self.config.admin.address
            await self.admin.start(address.host, address.port)
        for name, routes, where in self._agent_ports:
            if where is not None:
                agent = AdminServer(self, routes, self.prometheus_sources)
                if name == "stats" and self.app_probes:
                    self._serve_app_probes(agent)
                try:
                    await agent.start(where.host, where.port)
                except OSError as exc:
                    reason = os.strerror(exc.errno) if exc.errno else str(exc)
                    raise OSError(f"the {name} port {where}: {reason}") from exc
                self.agent_servers[name] = agent
        await self.manager.add_static(self.config.listeners)
        self._housekeeping = loop.create_task(self._housekeep(), name="housekeeping")
        if live:
            self.set_live()

    def _serve_app_probes(self, agent: AdminServer) -> None:
        """`/app-health/...` on the stats port, as Istio's agent serves them on 15020."""
        from trellis.runtime.app_prober import AppProber  # noqa: PLC0415 - only with probes

        prober = AppProber(self.app_probes, self.app_probe_host)
        for path in self.app_probes:
            agent.add_async_route(path, functools.partial(prober.answer, path))

    def set_live(self) -> None:
        """Initial config is in place (Envoy leaves PRE_INITIALIZING)."""
        if self._state == "PRE_INITIALIZING":
            self._state = "LIVE"
            self.stats.gauge("envoy_server_live").value = 1

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    def quit(self) -> None:
        self._stop.set()

    def drain(self) -> None:
        if self._state != "DRAINING":
            self._state = "DRAINING"
            self.stats.gauge("envoy_server_live").value = 0
            for listener in self.listeners:
                listener.drain()

    def stop_draining(self) -> None:
        """Stop waiting for in-flight requests (a second SIGTERM)."""
        if self.budget.emptied is not None:
            self.budget.emptied.set()

    async def shutdown(self, drain: bool) -> None:
        """Stop accepting; when `drain`, let in-flight requests finish (bounded)."""
        emptied = self.budget.emptied = asyncio.Event()
        self.drain()
        if drain and self.budget.active > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(emptied.wait(), self.drain_time)
        for listener in self.listeners:
            for conn in list(listener.connections):
                conn.close()
        self.clusters.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self.admin is not None:
            self.admin.close()
        for agent in self.agent_servers.values():
            agent.close()
        for sink in self.manager.sinks():
            sink.flush()
            sink.close()

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_INTERVAL)
            now = time.monotonic()
            try:
                self.clusters.sweep_idle(now)
                self.clusters.sweep_outliers(now)
                for listener in self.listeners:
                    listener.sweep(now)
                for sink in self.manager.sinks():
                    sink.flush()
            except Exception:
                log.exception("housekeeping failed")

    # -- admin -------------------------------------------------------------------------

    def state(self) -> str:
        return self._state

    def prometheus(self) -> str:
        self.stats.gauge("envoy_server_uptime").value = int(time.time() - self.started)
        self._cluster_gauges()
        return self.metrics.render_prometheus() + self.stats.render_prometheus()

    def stats_text(self) -> str:
        self._cluster_gauges()
        return self.stats.render_envoy_text()

    def _cluster_gauges(self) -> None:
        for name, cluster in self.clusters.clusters.items():
            labels = (("envoy_cluster_name", name),)
            stats = self.stats
            stats.gauge("envoy_cluster_upstream_cx_active", labels).value = sum(
                h.stats.active_connections for h in cluster.hosts
            )
            stats.gauge("envoy_cluster_upstream_rq_active", labels).value = sum(
                h.stats.active_requests for h in cluster.hosts
            )
            stats.gauge("envoy_cluster_upstream_rq_total", labels).value = sum(
                h.stats.total_requests for h in cluster.hosts
            )
            stats.gauge("envoy_cluster_upstream_cx_connect_fail", labels).value = sum(
                h.cx_connect_fail for h in cluster.hosts
            )
            limits = cluster.limits
            stats.gauge(
                "envoy_cluster_upstream_rq_pending_overflow", labels
            ).value = limits.upstream_rq_pending_overflow
            stats.gauge(
                "envoy_cluster_upstream_cx_overflow", labels
            ).value = limits.upstream_cx_overflow
            stats.gauge(
                "envoy_cluster_upstream_rq_retry_overflow", labels
            ).value = limits.upstream_rq_retry_overflow
            publish_outlier_stats(stats, cluster)

    def config_dump(self) -> dict[str, object]:
        return self._dump()

    def clusters_text(self) -> str:
        """Envoy's `/clusters` text: `cluster::host::stat::value` lines."""
        out: list[str] = []
        for name, cluster in self.clusters.clusters.items():
            t = cluster.config.thresholds
            for key, value in (
                ("max_connections", t.max_connections),
                ("max_pending_requests", t.max_pending_requests),
                ("max_requests", t.max_requests),
                ("max_retries", t.max_retries),
            ):
                out.append(f"{name}::default_priority::{key}::{value}")
            dynamic = "false" if name in self.manager.static_clusters else "true"
            out.append(f"{name}::added_via_api::{dynamic}")
            for host, endpoint in zip(cluster.hosts, cluster.config.endpoints, strict=True):
                s = host.stats
                prefix = f"{name}::{host.address}"
                out.extend(
                    (
                        f"{prefix}::cx_active::{s.active_connections}",
                        f"{prefix}::cx_connect_fail::{host.cx_connect_fail}",
                        f"{prefix}::cx_total::{host.cx_total}",
                        f"{prefix}::rq_active::{s.active_requests}",
                        f"{prefix}::rq_error::{s.failures}",
                        f"{prefix}::rq_success::{s.successes}",
                        f"{prefix}::rq_total::{s.total_requests}",
                        f"{prefix}::hostname::",
                        f"{prefix}::health_flags::{cluster.health_flags(host.index)}",
                        f"{prefix}::weight::{endpoint.weight}",
                    )
                )
        return "\n".join(out) + "\n"

    def server_info(self) -> dict[str, object]:
        return {
            "version": f"trellis/{__version__}",
            "state": self._state,
            "uptime_current_epoch": f"{int(time.time() - self.started)}s",
            "pid": os.getpid(),
            "node": {"id": self.config.node.id, "cluster": self.config.node.cluster},
        }
