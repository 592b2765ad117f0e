"""Running config: listeners and clusters built from static and xDS resources.

Every change builds new contexts (route tables, cluster references), one per
filter chain of each listener, and swaps one reference per chain: requests in
flight finish on the context they started with, new requests (also on existing
connections) use the new one. Listeners whose address is unchanged keep their
sockets and connections; clusters are updated in place so their connection
pools survive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from trellis.core.config import (
    AccessLogConfig,
    Cluster,
    Endpoint,
    FilterChain,
    HttpConnectionManager,
    Listener,
    NodeIdentity,
    RouteConfig,
    TcpProxy,
)
from trellis.core.labels import peer_labels, service_from_cluster
from trellis.core.metrics import IstioMetrics, PeerLabels, StatsRegistry
from trellis.core.peer_metadata import PeerExchange, WorkloadMetadata
from trellis.core.tcp_exchange import TcpPeerExchange
from trellis.core.tls import CommonTls, Secret, SecretSource
from trellis.core.tracing import TracingProvider
from trellis.errors import ConfigError
from trellis.runtime.cluster import ClusterManager, ClusterRuntime
from trellis.runtime.deadline import Deadlines
from trellis.runtime.http_context import HttpContext
from trellis.runtime.listener import ConnectionBudget, Context, ListenerRuntime
from trellis.runtime.tcp_context import TcpContext
from trellis.runtime.telemetry import AccessLogSink, HttpRecorder

if TYPE_CHECKING:
    from trellis.runtime.router import Stream
    from trellis.runtime.trace_export import SpanExporter
    from trellis.runtime.tracing import Tracer

log = logging.getLogger("trellis.config")

Sinks = dict[AccessLogConfig, AccessLogSink]


class ConfigManager:
    def __init__(
        self,
        node: NodeIdentity,
        clusters: ClusterManager,
        budget: ConnectionBudget,
        metrics: IstioMetrics,
        stats: StatsRegistry,
        rng: random.Random,
        note_retry: Callable[[ClusterRuntime], None],
    ) -> None:
        self.node = node
        self.exchange = PeerExchange(node)  # our metadata, encoded once; peers met, cached
        self.tcp_exchange = TcpPeerExchange(node)  # the same, for TCP (ALPN istio-peer-exchange)
        self.clusters = clusters
        self.budget = budget
        self.metrics = metrics
        self.stats = stats
        self.rng = rng
        self.note_retry = note_retry
        self.listeners: dict[str, ListenerRuntime] = {}
        self.routes: dict[str, RouteConfig] = {}
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self.static_clusters = frozenset(clusters.clusters)
        self.static_listeners: frozenset[str] = frozenset()
        self._dynamic_clusters: dict[str, Cluster] = {}
        # Per listener: its distinct access log configs and one sink each, shared by
        # its chains (one buffered file handle per path, so lines never interleave).
        self._sinks: dict[str, tuple[tuple[AccessLogConfig, ...], Sinks]] = {}
        self._recorders: dict[tuple[str, int], tuple[Listener, HttpRecorder]] = {}
        self._deadlines: Deadlines | None = None
        self._wanted_listeners: dict[str, Listener] = {}
        # One span exporter per tracing provider, shared by the connection managers
        # that name it (kept for the process: their number is the configs' number).
        self.exporters: dict[TracingProvider, SpanExporter] = {}

    # -- contexts ------------------------------------------------------------------------

    def _sinks_for(self, listener: Listener) -> Sinks:
        configs = tuple(
            dict.fromkeys(c for chain in listener.chains for c in chain.filter.access_logs)
        )
        known = self._sinks.get(listener.name)
        if known is not None and known[0] == configs:
            return known[1]
        if known is not None:
            for sink in known[1].values():
                sink.close()
        sinks = {config: AccessLogSink(config) for config in configs}
        self._sinks[listener.name] = (configs, sinks)
        return sinks

    def sinks(self) -> list[AccessLogSink]:
        return [sink for _, sinks in self._sinks.values() for sink in sinks.values()]

    def contexts_for(self, listener: Listener) -> tuple[Context, ...] | None:
        """The listener's contexts on the current config, one per filter chain; None
        while the routes of one of them are missing."""
        loop = asyncio.get_running_loop()
        if self._deadlines is None:
            self._deadlines = Deadlines(loop)
        sinks = self._sinks_for(listener)
        contexts = []
        for index, chain in enumerate(listener.chains):
            context = self._context(listener, index, chain, sinks, loop)
            if context is None:
                return None
            contexts.append(context)
        for key in [k for k in self._recorders if k[0] == listener.name]:
            if key[1] >= len(listener.chains):
                del self._recorders[key]
        return tuple(contexts)

    def _context(
        self,
        listener: Listener,
        index: int,
        chain: FilterChain,
        sinks: Sinks,
        loop: asyncio.AbstractEventLoop,
    ) -> Context | None:
        network_filter = chain.filter
        logs = tuple(sinks[config] for config in network_filter.access_logs)
        if isinstance(network_filter, TcpProxy):
            cluster = self.clusters.clusters.get(network_filter.cluster)
            host = (
                (cluster.config.service_host if cluster is not None else "")
                or service_from_cluster(network_filter.cluster)
                or network_filter.cluster
            )
            node, direction = self.node, listener.direction

            def labels_for(peer: WorkloadMetadata) -> PeerLabels:
                return peer_labels(node, direction, host, protocol="tcp", peer=peer)

            return TcpContext(
                network_filter,
                cluster,
                self.metrics,
                peer_labels(self.node, listener.direction, host, protocol="tcp"),
                logs,
                self.stats,
                own_principal=self.node.principal,
                exchange=self.tcp_exchange,
                labels_for=labels_for,
            )
        assert isinstance(network_filter, HttpConnectionManager)
        if network_filter.route_config is None:
            assert network_filter.rds_name is not None
            routes = self.routes.get(network_filter.rds_name)
            if routes is None:
                return None
            network_filter = dataclasses.replace(network_filter, route_config=routes)
        key = (listener.name, index)
        known = self._recorders.get(key)
        if known is None or known[0] != listener:
            recorder = HttpRecorder(
                self.node,
                listener.direction,
                network_filter.stat_prefix,
                self.metrics,
                self.stats,
                logs,
            )
            self._recorders[key] = (listener, recorder)
        else:
            recorder = known[1]
        assert self._deadlines is not None
        tracer = None
        record: Callable[[Stream], None] = recorder.record
        if network_filter.tracing is not None:
            from trellis.runtime.tracing import traced  # noqa: PLC0415 - only proxies that trace

            tracer = self._tracer(network_filter, listener, loop)
            record = traced(record, tracer.finish)
        return HttpContext(
            listener.name,
            network_filter,
            listener.direction,
            self.clusters,
            loop,
            self.rng,
            listener.per_connection_buffer_limit_bytes,
            record,
            self.note_retry,
            self._deadlines,
            tracer,
            exchange=self.exchange,
        )

    def _tracer(
        self, hcm: HttpConnectionManager, listener: Listener, loop: asyncio.AbstractEventLoop
    ) -> Tracer:
        # Imported here: a proxy whose connection managers do not trace never loads the
        # tracer, the exporter or the OTLP messages (~0.4 MiB of its memory budget).
        from trellis.runtime.trace_export import SpanExporter  # noqa: PLC0415
        from trellis.runtime.tracing import Tracer, service_name  # noqa: PLC0415

        config = hcm.tracing
        assert config is not None
        exporter = self.exporters.get(config.provider)
        if exporter is None:
            node = self.node
            exporter = self.exporters[config.provider] = SpanExporter(
                config.provider,
                service_name(node, config.provider.service_name),
                (("service.instance.id", node.id), ("service.namespace", node.namespace)),
                self.clusters,
                self.stats,
                loop,
            )
        return Tracer(config, listener.direction, self.node, exporter, self.rng)

    def refresh(self) -> None:
        """Rebuild every listener's context on the current routes and clusters."""
        for runtime in self.listeners.values():
            contexts = self.contexts_for(runtime.config)
            if contexts is not None:
                runtime.set_contexts(contexts)

    # -- listeners -------------------------------------------------------------------------

    async def add_static(self, listeners: tuple[Listener, ...]) -> None:
        self.static_listeners = frozenset(listener.name for listener in listeners)
        for listener in listeners:
            await self._start_listener(listener)

    async def _start_listener(self, listener: Listener) -> bool:
        contexts = self.contexts_for(listener)
        if contexts is None:
            return False  # warming: starts when its route configuration arrives
        runtime = ListenerRuntime(
            listener, contexts, self.budget, self.stats, self.clusters.secrets
        )
        await runtime.start()
        self.listeners[listener.name] = runtime
        log.info("listener %s on %s", listener.name, listener.address)
        return True

    async def apply_listeners(self, listeners: Mapping[str, Listener]) -> set[str]:
        """LDS state of the world; returns the route configurations they need."""
        for name in listeners:
            if name in self.static_listeners:
                raise ConfigError(f"LDS listener {name!r}: a static listener has that name")
        self._wanted_listeners = dict(listeners)
        for name in [n for n in self.listeners if n not in self.static_listeners]:
            if name not in listeners:
                log.info("listener %s removed", name)
                self.listeners.pop(name).drain()
        for name, listener in listeners.items():
            await self._install(name, listener)
        return {
            chain.filter.rds_name
            for listener in listeners.values()
            for chain in listener.chains
            if isinstance(chain.filter, HttpConnectionManager) and chain.filter.rds_name is not None
        }

    async def start_warmed(self) -> None:
        """Install listeners that were waiting for their routes."""
        for name, listener in self._wanted_listeners.items():
            await self._install(name, listener)

    async def _install(self, name: str, listener: Listener) -> None:
        """Run `listener` as `name`: in place when only its config changed, else anew.

        A listener whose routes have not arrived waits (Envoy's warming); the one
        it replaces keeps serving meanwhile.
        """
        current = self.listeners.get(name)
        if current is not None and current.config == listener:
            return
        contexts = self.contexts_for(listener)
        if contexts is None:
            return
        if current is not None and current.config.address == listener.address:
            await current.reconfigure(listener, contexts)
            return
        if current is not None:
            self.listeners.pop(name).drain()
        await self._start_listener(listener)

    # -- routes, clusters, endpoints -------------------------------------------------------

    def apply_routes(self, routes: Mapping[str, RouteConfig]) -> None:
        self.routes = dict(routes)
        self.refresh()

    def apply_clusters(self, clusters: Mapping[str, Cluster]) -> set[str]:
        """CDS state of the world; returns the EDS names the clusters need."""
        for name in clusters:
            if name in self.static_clusters:
                raise ConfigError(f"CDS cluster {name!r}: a static cluster has that name")
        live = self.clusters.clusters
        for name in list(self._dynamic_clusters):
            if name not in clusters:
                del self._dynamic_clusters[name]
                live.pop(name).close()
        for name, cluster in clusters.items():
            self._dynamic_clusters[name] = cluster
            effective = self._with_endpoints(cluster)
            if name in live:
                live[name].update(effective)
            else:
                live[name] = ClusterRuntime(effective, self.rng, secrets=self.clusters.secrets)
        self.refresh()
        return {c.eds_name for c in clusters.values() if c.eds_name is not None}

    def apply_endpoints(self, assignments: Mapping[str, tuple[Endpoint, ...]]) -> None:
        self.endpoints = dict(assignments)
        live = self.clusters.clusters
        for name, cluster in self._dynamic_clusters.items():
            if cluster.eds_name is not None:
                live[name].update(self._with_endpoints(cluster))

    # -- secrets -----------------------------------------------------------------------------

    def apply_secrets(self, secrets: Mapping[str, Secret]) -> None:
        """SDS: the secrets (trusted CAs) that listeners and clusters name."""
        store = self.clusters.secrets
        if store is None:
            raise ConfigError("this proxy does not use TLS secrets")
        store.set_ads(secrets)

    def ads_secret_names(self) -> set[str]:
        """The SDS secrets the current listeners and clusters take over ADS."""
        tls: list[CommonTls] = []
        for cluster in self.clusters.clusters.values():
            config = cluster.config
            sockets = [config.transport_socket, *(m.tls for m in config.transport_socket_matches)]
            tls.extend(s.common for s in sockets if s is not None)
        for listener in self._wanted_listeners.values():
            tls.extend(chain.tls.common for chain in listener.chains if chain.tls is not None)
        for runtime in self.listeners.values():
            tls.extend(c.tls.common for c in runtime.config.chains if c.tls is not None)
        return {
            ref.name
            for common in tls
            for ref in (common.certificate, common.validation)
            if ref is not None and ref.source is SecretSource.ADS
        }

    def _with_endpoints(self, cluster: Cluster) -> Cluster:
        if cluster.eds_name is None:
            return cluster
        return dataclasses.replace(cluster, endpoints=self.endpoints.get(cluster.eds_name, ()))
