"""Resources for proxyless gRPC clients: grpcio (or grpc-go, grpc-java) with `GRPC_XDS_BOOTSTRAP`.

A gRPC channel to `xds:///NAME` asks for the Listener named exactly `NAME`, follows
its HttpConnectionManager to the RouteConfiguration over RDS, picks the virtual host
whose domains contain `NAME`, and resolves clusters over CDS and EDS. What it
implements is listed in grpc's `doc/grpc_xds_features.md`; this generator emits
the shapes Istio's proxyless generator (`pilot/pkg/networking/grpcgen`) sends.

Which nodes (`is_grpc_node`): node metadata `GENERATOR: grpc` (Istio's convention,
set in the client's bootstrap) decides when present; otherwise a user agent naming
gRPC (`gRPC C-core ...`, `gRPC Go`, `gRPC Java`) marks a proxyless client.

Listeners (LDS), one per service port of protocol GRPC or HTTP2 (the ports that
can carry gRPC; an HTTP/1.1 port cannot): `api_listener`s named `HOST:PORT` for
every name a client in the proxy's namespace may use (`routes.service_names`:
the FQDN, `name.namespace`, `name.namespace.svc`, and the bare `name` from the
same namespace), plus the portless names for the service's lowest such port. A
name taken by an earlier (host, port) is left out. Each listener's HCM takes the
RouteConfiguration `FQDN:PORT` over ADS and has the router filter only.

Routes (RDS): one virtual host whose domains are all those names; the routes of
the VirtualService (matches as for sidecars: path prefix/exact/regex, headers,
case sensitivity), to one cluster or weighted clusters, else a default route to
`outbound|PORT||HOST`. As gRPC supports them:
- `timeout` becomes `max_stream_duration` (gRPC reads no other route timeout);
- retries keep the gRPC-status conditions gRPC implements (`cancelled`,
  `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`) and
  `num_retries`; HTTP-level conditions (`5xx`, `gateway-error`, status codes,
  ...) are dropped because a gRPC call sees no HTTP error status, and
  connection failures and refused streams are retried by gRPC on its own.
  Without `retries`, Istio's default (2 retries) keeps `unavailable,cancelled`.
  A policy left with no condition is omitted;
- `retries.perTryTimeout`, `redirect`, `directResponse`, `rewrite`, `headers`
  and `queryParams` are errors naming the field: gRPC clients cannot do them.

Clusters (CDS): an EDS cluster per service port and DestinationRule subset, as
for sidecars, with only what gRPC reads: `lb_policy` (ROUND_ROBIN by default,
gRPC's own default, where sidecars get LEAST_REQUEST) and one circuit-breaker
limit, `max_requests` (`http2MaxRequests`, Istio's default 2^32-1; gRPC's own
default would be 1024). A `loadBalancer.simple` is passed on as the Envoy policy
of that name: gRPC NACKs a policy its version does not implement (grpcio has no
RANDOM; LEAST_REQUEST depends on the language), and the NACK with its reason is
what `trellis proxy-status` shows. Connect timeouts, the other circuit-breaker
limits, idle timeouts and `outlierDetection` (gRPC has no consecutive-error
ejection) are not sent: gRPC would ignore them.

Endpoints (EDS): as for sidecars, with the locality set (empty) and given weight
1, without which gRPC drops the endpoints.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from trellis.api.destination_rule import HTTPSettings, SimpleLB
from trellis.api.networking import (
    HTTPMatchRequest,
    HTTPRetry,
    HTTPRoute,
    ServicePort,
    VirtualService,
)
from trellis.api.services import labels_match
from trellis.xds.mesh.build import MAX_UINT32, ads_source, duration, pack, u32
from trellis.xds.mesh.carried import first_uncarried
from trellis.xds.mesh.clusters import eds_cluster, outbound_policies
from trellis.xds.mesh.endpoints import outbound_assignments
from trellis.xds.mesh.errors import unsupported
from trellis.xds.mesh.http_route import RouteBuilder
from trellis.xds.mesh.listeners import ROUTER_NAME
from trellis.xds.mesh.model import MeshConfig, ProxyIdentity
from trellis.xds.mesh.names import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    outbound_cluster,
)
from trellis.xds.mesh.policy import EffectivePolicy
from trellis.xds.mesh.registry import Registry, Service
from trellis.xds.mesh.retry import DEFAULT_ATTEMPTS, DEFAULT_RETRY_ON, GRPC_ONLY_CONDITIONS
from trellis.xds.mesh.routes import service_names
from trellis.xds.mesh.translate import Resources, Translator, source_label_selectors
from trellis.xds.protos import cluster_pb2, http_connection_manager_pb2, listener_pb2, router_pb2

GENERATOR_KEY = "GENERATOR"
GRPC_GENERATOR = "grpc"
GRPC_PORT_PROTOCOLS = frozenset({"GRPC", "HTTP2"})
_GRPC_USER_AGENT = re.compile(r"\bgrpc\b", re.IGNORECASE)
_LB_POLICIES = {
    SimpleLB.UNSPECIFIED: cluster_pb2.Cluster.ROUND_ROBIN,
    SimpleLB.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    SimpleLB.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    SimpleLB.RANDOM: cluster_pb2.Cluster.RANDOM,
}
_CLIENTS = "proxyless gRPC clients"


def is_grpc_node(metadata: Mapping[str, object], user_agent: str) -> bool:
    """Whether a node is a proxyless gRPC client (metadata GENERATOR, else its user agent)."""
    generator = metadata.get(GENERATOR_KEY)
    if generator is not None:
        return str(generator).strip().lower() == GRPC_GENERATOR
    return _GRPC_USER_AGENT.search(user_agent) is not None


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every gRPC client of one namespace (and the same relevant labels) gets alike."""

    listeners: dict[str, Message]
    routes: dict[str, Message]
    clusters: dict[str, Message]
    assignments: dict[str, Message]


class GrpcTranslator:
    """Translates one `MeshConfig` for many proxyless gRPC clients, sharing what they can.

    Results depend only on the client's namespace and on which VirtualService
    `sourceLabels` its labels satisfy; clients share message objects: treat
    them as read-only. Build a new one when the config changes.
    """

    def __init__(self, config: MeshConfig) -> None:
        self.uncarried = first_uncarried(config)
        self.config = config
        self._selectors = source_label_selectors(config)
        self._shared: dict[tuple[str, tuple[bool, ...]], _Shared] = {}

    def translate(
        self, proxy: ProxyIdentity, requested_listeners: Collection[str] | None = None
    ) -> Resources:
        """LDS, RDS, CDS and EDS for the gRPC client `proxy`.

        With `requested_listeners`, only those listeners (and the route
        configurations they name) are included; clusters and endpoints are
        always all. Raises `UnsupportedConfigError` naming the resource and
        field for config gRPC clients cannot carry out.
        """
        if self.uncarried is not None:
            raise self.uncarried
        shared = self._for(proxy)
        listeners = shared.listeners
        routes = shared.routes
        if requested_listeners is not None:
            wanted = set(requested_listeners)
            listeners = {name: item for name, item in listeners.items() if name in wanted}
            used = {_route_name(item) for item in listeners.values()}
            routes = {name: item for name, item in routes.items() if name in used}
        return {
            CLUSTER_TYPE: dict(shared.clusters),
            ENDPOINT_TYPE: dict(shared.assignments),
            LISTENER_TYPE: dict(listeners),
            ROUTE_TYPE: dict(routes),
        }

    def _for(self, proxy: ProxyIdentity) -> _Shared:
        selected = tuple(labels_match(selector, proxy.labels) for selector in self._selectors)
        key = (proxy.namespace, selected)
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = _build(
                Registry(self.config, proxy.namespace, dict(proxy.labels))
            )
        return shared


def translate_grpc(
    source: GrpcTranslator | Translator | MeshConfig,
    proxy: ProxyIdentity,
    requested_listeners: Collection[str] | None = None,
) -> Resources:
    """The resources of one proxyless gRPC client (see `GrpcTranslator.translate`)."""
    if isinstance(source, GrpcTranslator):
        translator = source
    else:
        translator = GrpcTranslator(source.config if isinstance(source, Translator) else source)
    return translator.translate(proxy, requested_listeners)


def _build(registry: Registry) -> _Shared:
    listeners: dict[str, Message] = {}
    routes: dict[str, Message] = {}
    for service in registry.services:
        ports = [port for port in service.ports if port.protocol in GRPC_PORT_PROTOCOLS]
        portless = ports[0].number if ports else 0
        for port in ports:
            names = [
                name
                for name in _listener_names(service, port.number, registry.namespace, portless)
                if name not in listeners
            ]
            if not names:
                continue
            route_name = f"{service.host}:{port.number}"
            routes[route_name] = _route_config(registry, service, port, route_name, names)
            for name in names:
                listeners[name] = _api_listener(name, route_name)
    clusters: dict[str, Message] = {cluster.name: cluster for cluster in _clusters(registry)}
    assignments: dict[str, Message] = {
        item.cluster_name: _with_locality(item) for item in outbound_assignments(registry)
    }
    return _Shared(
        listeners=_sorted(listeners),
        routes=_sorted(routes),
        clusters=_sorted(clusters),
        assignments=_sorted(assignments),
    )


def _sorted(items: dict[str, Message]) -> dict[str, Message]:
    return {name: items[name] for name in sorted(items)}


def _listener_names(service: Service, port: int, namespace: str, portless: int) -> list[str]:
    names = []
    for name in service_names(service.host, namespace):
        names.append(f"{name}:{port}")
        if port == portless:
            names.append(name)
    return names


def _api_listener(name: str, route_name: str) -> listener_pb2.Listener:
    hcm = http_connection_manager_pb2
    manager = hcm.HttpConnectionManager(
        rds=hcm.Rds(config_source=ads_source(), route_config_name=route_name)
    )
    manager.http_filters.add(name=ROUTER_NAME, typed_config=pack(router_pb2.Router()))
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager))
    )


def _route_name(listener: Message) -> str:
    assert isinstance(listener, listener_pb2.Listener)
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.api_listener.api_listener.Unpack(manager)
    return str(manager.rds.route_config_name)


def _route_config(
    registry: Registry, service: Service, port: ServicePort, name: str, domains: list[str]
) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name=name)
    host = config.virtual_hosts.add(name=name, domains=domains)
    virtual_service = registry.virtual_service(service)
    built: list[rc.Route] = []
    if virtual_service is not None:
        built = _GrpcRouteBuilder(registry, virtual_service, port.number).routes()
    if not built:
        built = [_default_route(outbound_cluster(service.host, port.number))]
    host.routes.extend(built)
    return config


def _default_route(cluster: str) -> rc.Route:
    route = rc.Route(name="default", match=rc.RouteMatch(prefix="/"))
    route.route.cluster = cluster
    policy = _retry_policy(DEFAULT_ATTEMPTS, DEFAULT_RETRY_ON)
    if policy is not None:
        route.route.retry_policy.CopyFrom(policy)
    return route


class _GrpcRouteBuilder(RouteBuilder):
    """The sidecar's route matching, with the actions gRPC clients implement."""

    def _match(self, match: HTTPMatchRequest | None, path: str) -> rc.RouteMatch:
        if match is not None and match.query_params:
            raise unsupported(self.service, f"{path}.queryParams", f"not supported by {_CLIENTS}")
        return super()._match(match, path)

    def _route(
        self, rule: HTTPRoute, match: HTTPMatchRequest | None, path: str, match_path: str
    ) -> rc.Route:
        for field, present in (
            ("redirect", rule.redirect is not None),
            ("directResponse", rule.direct_response is not None),
            ("rewrite", rule.rewrite is not None),
            ("headers", rule.headers is not None),
        ):
            if present:
                raise unsupported(self.service, f"{path}.{field}", f"not supported by {_CLIENTS}")
        name = rule.name
        if match is not None and match.name:
            name = f"{name}.{match.name}"
        route = rc.Route(name=name, match=self._match(match, match_path))
        action = route.route
        if rule.timeout:
            action.max_stream_duration.max_stream_duration.CopyFrom(duration(rule.timeout))
        destinations = [
            (i, item) for i, item in enumerate(rule.route) if item.weight or len(rule.route) == 1
        ]
        for i, item in destinations:
            if item.headers is not None:
                raise unsupported(
                    self.service, f"{path}.route[{i}].headers", f"not supported by {_CLIENTS}"
                )
        if len(rule.route) == 1:
            action.cluster = self._cluster(rule.route[0].destination)
        else:
            for _, item in destinations:
                action.weighted_clusters.clusters.add(
                    name=self._cluster(item.destination), weight=u32(item.weight)
                )
        policy = _grpc_retry_policy(rule.retries, self.service, f"{path}.retries")
        if policy is not None:
            action.retry_policy.CopyFrom(policy)
        return route


def _grpc_retry_policy(
    retries: HTTPRetry | None, service: VirtualService, path: str
) -> rc.RetryPolicy | None:
    if retries is None:
        return _retry_policy(DEFAULT_ATTEMPTS, DEFAULT_RETRY_ON)
    if retries.attempts <= 0:
        return None
    if retries.per_try_timeout is not None:
        raise unsupported(
            service, f"{path}.perTryTimeout", f"per-try timeouts are not supported by {_CLIENTS}"
        )
    if retries.retry_remote_localities:
        raise unsupported(service, f"{path}.retryRemoteLocalities", f"not supported by {_CLIENTS}")
    conditions = retries.retry_on_conditions if retries.retry_on else DEFAULT_RETRY_ON
    return _retry_policy(retries.attempts, conditions)


def _retry_policy(attempts: int, conditions: Collection[str]) -> rc.RetryPolicy | None:
    kept = [condition for condition in conditions if condition in GRPC_ONLY_CONDITIONS]
    if not kept:
        return None
    return rc.RetryPolicy(retry_on=",".join(dict.fromkeys(kept)), num_retries=u32(attempts))


def _clusters(registry: Registry) -> Iterator[cluster_pb2.Cluster]:
    for name, policy, _ in outbound_policies(registry):
        yield _eds_cluster(name, policy)


def _eds_cluster(name: str, policy: EffectivePolicy) -> cluster_pb2.Cluster:
    cluster = eds_cluster(name, policy, _LB_POLICIES)
    pool = policy.connection_pool
    http = pool.http if pool is not None and pool.http is not None else HTTPSettings()
    limit = http.http2_max_requests if http.http2_max_requests else MAX_UINT32
    cluster.circuit_breakers.thresholds.add().max_requests.value = limit
    return cluster


def _with_locality(
    assignment: endpoint_pb2.ClusterLoadAssignment,
) -> endpoint_pb2.ClusterLoadAssignment:
    """gRPC ignores a locality without `locality` or without a weight."""
    for locality in assignment.endpoints:
        locality.locality.SetInParent()
        if not locality.HasField("load_balancing_weight"):
            locality.load_balancing_weight.value = 1
    return assignment
