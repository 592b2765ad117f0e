"""Mesh config + registry -> the xDS resources of one proxy, and the check before publishing.

`translate` is pure and deterministic: the same inputs give equal messages
in the same (sorted) order, so a caller can hash or diff them to find which
proxies changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from trellis.api.hosts import is_ip
from trellis.api.networking import ServiceEntry
from trellis.api.services import labels_match
from trellis.api.telemetry import Telemetry, WorkloadMode
from trellis.core.addresses import SocketAddress
from trellis.errors import ConfigError, TrellisError
from trellis.xds.compile import addresses_overlap
from trellis.xds.mesh.access_log import (
    NO_LOGS,
    ListenerLogs,
    MeshAccessLog,
    ProxyLogs,
    listener_logs,
)
from trellis.xds.mesh.authz import InboundAuthz, inbound_authz, selected_policies
from trellis.xds.mesh.carried import first_uncarried
from trellis.xds.mesh.clusters import inbound_cluster_for, outbound_clusters
from trellis.xds.mesh.endpoints import outbound_assignments
from trellis.xds.mesh.errors import InconsistentSnapshotError
from trellis.xds.mesh.listeners import listeners
from trellis.xds.mesh.model import CaptureMode, MeshConfig, ProxyIdentity, TranslateOptions
from trellis.xds.mesh.mtls import AutoMtls, InboundMtls, downstream_tls_socket, root_ca_secret
from trellis.xds.mesh.names import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    RESOURCE_TYPES,
    ROUTE_TYPE,
    SECRET_TYPE,
)
from trellis.xds.mesh.registry import InboundPort, Registry, inbound_ports
from trellis.xds.mesh.routes import outbound_route_config
from trellis.xds.mesh.telemetry import (
    ENVOY_PROVIDER,
    TracingSettings,
    access_log_providers,
    telemetry_levels,
    tracing_settings,
)
from trellis.xds.mesh.tracing import (
    COLLECTOR_CLUSTER,
    NO_TRACING,
    ProxyTracing,
    Tracing,
    collector_cluster,
    hcm_tracing,
    tracing_service_name,
)
from trellis.xds.mesh.virtual_outbound import (
    NO_OUTBOUND_PORTS,
    OutboundPorts,
    blackhole_cluster,
    outbound_ports,
    passthrough_cluster,
)
from trellis.xds.protos import cluster_pb2, http_connection_manager_pb2
from trellis.xds.supported import HCM_TYPE

Resources = dict[str, dict[str, Message]]
"""Type URL -> resource name -> message (Listener, RouteConfiguration, ...)."""

_DEFAULT_OPTIONS = TranslateOptions()


@dataclass(frozen=True, slots=True, eq=False)
class SharedOutbound:
    """What every proxy of one namespace (and the same relevant labels) gets alike.

    One object per translation group: callers may cache what they derive from
    it by identity for as long as they hold it.
    """

    clusters: dict[str, Message]
    assignments: dict[str, Message]
    routes: dict[str, Message]
    ports: OutboundPorts = NO_OUTBOUND_PORTS  # what transparent capture's outbound matches


@dataclass(frozen=True, slots=True)
class ProxyResources:
    """One proxy's resources: those shared with its group, and its own.

    `secrets` (SDS: the mesh's `ROOTCA`, empty without mesh mTLS) are the same
    objects for every proxy of one translation.
    """

    shared: SharedOutbound
    inbound_clusters: dict[str, Message]
    listeners: dict[str, Message]
    secrets: Mapping[str, Message] = field(default_factory=dict)

    def flatten(self) -> Resources:
        """Type URL -> name -> message, every name sorted (no Secret type when none)."""
        clusters = {**self.shared.clusters, **self.inbound_clusters}
        resources: Resources = {
            CLUSTER_TYPE: {name: clusters[name] for name in sorted(clusters)},
            ENDPOINT_TYPE: dict(self.shared.assignments),
            LISTENER_TYPE: dict(self.listeners),
            ROUTE_TYPE: dict(self.shared.routes),
        }
        if self.secrets:
            resources[SECRET_TYPE] = dict(self.secrets)
        return resources


def source_label_selectors(config: MeshConfig) -> tuple[dict[str, str], ...]:
    """The distinct VirtualService `sourceLabels` selectors: which of them a proxy's
    labels satisfy is all that its labels change about its routes."""
    return tuple(
        dict(selector)
        for selector in sorted(
            {
                tuple(sorted(match.source_labels.items()))
                for vs in config.virtual_services
                for rule in vs.spec.http
                for match in rule.match
                if match.source_labels
            }
        )
    )


class Translator:
    """Translates one `MeshConfig` for many proxies, sharing what they have in common.

    Outbound clusters, endpoints and routes depend only on the proxy's
    namespace and on which VirtualService `sourceLabels` its labels satisfy,
    so they are built once per such group; listeners and inbound clusters
    are built per proxy. Proxies share message objects:
    treat the results as read-only. Build a new Translator when the config
    changes. With `config.tls` (the mesh CA) sidecars get mTLS
    (`trellis.xds.mesh.mtls`) and the `ROOTCA` secret.
    """

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        tls = config.tls
        self.uncarried = first_uncarried(config, mtls=tls is not None)
        self._mtls = AutoMtls(tls, config.peer_authentications) if tls is not None else None
        self._mesh_logs = ProxyLogs.both(listener_logs(config.access_log))
        self._provider_logs = listener_logs(config.access_log or MeshAccessLog())
        # Access logs by the providers each side has on (Telemetry); most proxies share one.
        self._logs: dict[tuple[frozenset[str] | None, frozenset[str] | None], ProxyLogs] = {}
        self._tracing: dict[tuple[str, TracingSettings, TracingSettings], ProxyTracing] = {}
        tracing = config.tracing
        self._collector = collector_cluster(tracing) if tracing is not None else None
        self._downstream_tls = downstream_tls_socket(tls.trust_domain) if tls is not None else None
        self.secrets: Mapping[str, Message] = (
            {} if tls is None else _by_name([root_ca_secret(tls)], lambda m: m.name)
        )
        self._selectors = source_label_selectors(config)
        self._passthrough = _by_name([passthrough_cluster(), blackhole_cluster()], lambda m: m.name)
        self._shared: dict[tuple[str, tuple[bool, ...]], SharedOutbound] = {}
        # ServiceEntries with a workloadSelector, by namespace and by one of their
        # selector's labels: a proxy only looks at those its own labels can match.
        self._selecting: dict[tuple[str, str, str], list[ServiceEntry]] = {}
        for entry in config.service_entries:
            selector = entry.spec.workload_selector
            if selector is None:
                continue
            label = min(selector.labels.items(), default=("", ""))
            self._selecting.setdefault((entry.metadata.namespace, *label), []).append(entry)
        # RBAC filters by the set of AuthorizationPolicies that apply (most proxies share one).
        self._authz: dict[tuple[tuple[str, str, str], ...], InboundAuthz] = {}

    def _inbound_authz(self, proxy: ProxyIdentity) -> InboundAuthz:
        """The inbound RBAC filters of `proxy` (none when no AuthorizationPolicy applies)."""
        chosen = selected_policies(
            self.config.authorization_policies, proxy.namespace, proxy.labels
        )
        key = tuple(policy.key for policy in chosen)
        authz = self._authz.get(key)
        if authz is None:
            authz = self._authz[key] = inbound_authz(chosen)
        return authz

    def _proxy_tracing(self, proxy: ProxyIdentity, levels: list[Telemetry]) -> ProxyTracing:
        """The `tracing` of `proxy`'s connection managers: the mesh's collector and
        sampling, with what Telemetry (`levels`) changes per side; none without the
        collector. Proxies with the same service name and settings share one."""
        mesh = self.config.tracing
        if mesh is None:
            return NO_TRACING
        service = tracing_service_name(proxy)
        client = tracing_settings(levels, WorkloadMode.CLIENT)
        server = tracing_settings(levels, WorkloadMode.SERVER)
        key = (service, client, server)
        tracing = self._tracing.get(key)
        if tracing is None:

            def side(settings: TracingSettings) -> Tracing | None:
                if settings.disable_span_reporting:
                    return None
                return hcm_tracing(mesh, service, settings.random_sampling_percentage)

            tracing = self._tracing[key] = ProxyTracing(side(client), side(server))
        return tracing

    def _proxy_logs(self, levels: list[Telemetry]) -> ProxyLogs:
        """The access logs of a proxy's listeners: the mesh's, unless Telemetry (`levels`)
        says otherwise."""
        if not levels:
            return self._mesh_logs
        key = (
            access_log_providers(levels, WorkloadMode.CLIENT),
            access_log_providers(levels, WorkloadMode.SERVER),
        )
        logs = self._logs.get(key)
        if logs is None:
            logs = self._logs[key] = ProxyLogs(
                self._side_logs(key[0], self._mesh_logs.outbound),
                self._side_logs(key[1], self._mesh_logs.inbound),
            )
        return logs

    def _side_logs(self, providers: frozenset[str] | None, default: ListenerLogs) -> ListenerLogs:
        if providers is None:
            return default
        return self._provider_logs if ENVOY_PROVIDER in providers else NO_LOGS

    def _selecting_entries(self, proxy: ProxyIdentity) -> list[ServiceEntry]:
        """The ServiceEntries whose selector may select the proxy (`inbound_ports` checks)."""
        index = self._selecting
        found = list(index.get((proxy.namespace, "", ""), ()))
        for label in proxy.labels.items():
            found.extend(index.get((proxy.namespace, *label), ()))
        return found

    def translate(
        self, proxy: ProxyIdentity, options: TranslateOptions = _DEFAULT_OPTIONS
    ) -> Resources:
        """Build the LDS, RDS, CDS and EDS resources for `proxy` (see `translate_parts`)."""
        return self.translate_parts(proxy, options).flatten()

    def translate_parts(
        self, proxy: ProxyIdentity, options: TranslateOptions = _DEFAULT_OPTIONS
    ) -> ProxyResources:
        """Build the LDS, RDS, CDS and EDS resources for `proxy`, shared and own apart.

        Raises `UnsupportedConfigError` (a `ConfigError` naming the resource
        and field) for valid Istio config the Trellis proxy cannot carry out,
        and `ConfigError` for options that would make the proxy forward to
        itself or bind a listener on a name rather than an address.
        """
        if self.uncarried is not None:
            raise self.uncarried
        outbound = self._outbound(proxy)
        ports = inbound_ports(self._selecting_entries(proxy), proxy)
        _check_ports(proxy, options, ports)
        inbound = _by_name(
            (
                inbound_cluster_for(
                    item.port, options.app_address, options.app_port(item.port), item.services
                )
                for item in ports
            ),
            lambda m: m.name,
        )
        clash = inbound.keys() & outbound.clusters.keys()
        if clash:
            raise TrellisError(f"bug: inbound and outbound clusters share names {sorted(clash)}")
        mtls = None
        if self._mtls is not None and self._downstream_tls is not None:
            modes = self._mtls.mtls_of(proxy.namespace, proxy.labels)
            mtls = InboundMtls(modes, self._downstream_tls)
        authz = self._inbound_authz(proxy)
        levels = telemetry_levels(self.config.telemetries, proxy.namespace, proxy.labels)
        tracing = self._proxy_tracing(proxy, levels)
        built = listeners(
            proxy,
            options,
            ports,
            authz,
            mtls,
            self._proxy_logs(levels),
            tracing,
            self._outbound_ports(outbound, options.outbound_port),
        )
        if self._collector is not None and tracing != NO_TRACING:
            inbound[COLLECTOR_CLUSTER] = self._collector  # the proxy's own cluster too
        if options.capture_mode is CaptureMode.TRANSPARENT:
            inbound.update(self._passthrough)  # what virtualOutbound's fallbacks name
        return ProxyResources(
            shared=outbound,
            inbound_clusters=inbound,
            listeners=_by_name(built, lambda m: m.name),
            secrets=self.secrets,
        )

    def _outbound(self, proxy: ProxyIdentity) -> SharedOutbound:
        selected = tuple(labels_match(selector, proxy.labels) for selector in self._selectors)
        key = (proxy.namespace, selected)
        shared = self._shared.get(key)
        if shared is None:
            registry = Registry(self.config, proxy.namespace, dict(proxy.labels))
            mtls = self._mtls
            shared = SharedOutbound(
                clusters=_by_name(outbound_clusters(registry, mtls), lambda m: m.name),
                assignments=_by_name(
                    outbound_assignments(registry, mtls), lambda m: m.cluster_name
                ),
                routes=_by_name([outbound_route_config(registry)], lambda m: m.name),
                ports=outbound_ports(registry.services, self.config.service_vips),
            )
            self._shared[key] = shared
        return shared

    @staticmethod
    def _outbound_ports(shared: SharedOutbound, own_port: int) -> OutboundPorts:
        """The group's outbound ports without the proxy's own capture port (the
        blackhole chain's)."""
        ports = shared.ports
        if own_port not in ports.http and all(item.port != own_port for item in ports.tcp):
            return ports
        return OutboundPorts(
            tuple(port for port in ports.http if port != own_port),
            tuple(item for item in ports.tcp if item.port != own_port),
        )


def translate(
    config: MeshConfig, proxy: ProxyIdentity, options: TranslateOptions = _DEFAULT_OPTIONS
) -> Resources:
    """Build the LDS, RDS, CDS and EDS resources for `proxy` (see `Translator.translate`)."""
    return Translator(config).translate(proxy, options)


def _by_name(messages: Iterable[Any], name: Any) -> dict[str, Message]:
    found: dict[str, Message] = {}
    for message in messages:
        key = name(message)
        if key in found:
            raise TrellisError(f"bug: two {message.DESCRIPTOR.name} resources named {key!r}")
        found[key] = message
    return {key: found[key] for key in sorted(found)}


def _check_ports(
    proxy: ProxyIdentity, options: TranslateOptions, ports: Sequence[InboundPort]
) -> None:
    if options.capture_mode is not CaptureMode.EXPLICIT:
        return
    inbound_host = options.inbound_address or proxy.address
    if ports and not is_ip(inbound_host):
        raise ConfigError(
            f"the workload address {inbound_host!r} is not an IP address; set "
            "TranslateOptions.inbound_address to bind the inbound listeners",
            source=f"workload {proxy.namespace}/{proxy.workload_name}",
        )
    outbound = SocketAddress(options.outbound_address, options.outbound_port)
    app_host = options.app_address
    for item in ports:
        inbound = SocketAddress(inbound_host, item.port)
        where = f"workload {proxy.namespace}/{proxy.workload_name} port {item.port}"
        if addresses_overlap(inbound, outbound):
            raise ConfigError(
                f"the inbound listener {inbound} overlaps the outbound listener {outbound}",
                source=where,
            )
        app = SocketAddress(app_host, options.app_port(item.port))
        if addresses_overlap(inbound, app):
            raise ConfigError(
                f"the application address {app} is the proxy's own inbound listener; "
                "give the application another port (TranslateOptions.app_ports)",
                source=where,
            )


def referenced_names(
    resources: Mapping[str, Mapping[str, Message]],
) -> tuple[frozenset[str], frozenset[str]]:
    """(RouteConfiguration names the listeners take over RDS, cluster names fed by EDS)."""
    routes: set[str] = set()
    for listener in resources.get(LISTENER_TYPE, {}).values():
        for chain in listener.filter_chains:  # type: ignore[attr-defined]
            for network_filter in chain.filters:
                if network_filter.typed_config.TypeName() != HCM_TYPE:
                    continue
                hcm = http_connection_manager_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                if hcm.WhichOneof("route_specifier") == "rds":
                    routes.add(hcm.rds.route_config_name)
    endpoints: set[str] = set()
    for cluster in resources.get(CLUSTER_TYPE, {}).values():
        assert isinstance(cluster, cluster_pb2.Cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            endpoints.add(cluster.eds_cluster_config.service_name or cluster.name)
    return frozenset(routes), frozenset(endpoints)


def check_consistent(resources: Mapping[str, Mapping[str, Message]]) -> None:
    """Raise `InconsistentSnapshotError` unless every RDS and EDS name referenced exists."""
    routes, endpoints = referenced_names(resources)
    missing_routes = tuple(sorted(routes - set(resources.get(ROUTE_TYPE, {}))))
    missing_endpoints = tuple(sorted(endpoints - set(resources.get(ENDPOINT_TYPE, {}))))
    if missing_routes or missing_endpoints:
        raise InconsistentSnapshotError(missing_routes, missing_endpoints)


def to_dicts(resources: Mapping[str, Mapping[str, Message]]) -> dict[str, dict[str, Any]]:
    """The resources as protobuf JSON dicts (proto field names), types and names sorted."""
    return {
        type_url: {
            name: json_format.MessageToDict(message, preserving_proto_field_name=True)
            for name, message in sorted(resources.get(type_url, {}).items())
        }
        for type_url in RESOURCE_TYPES
        if type_url in resources
    }
