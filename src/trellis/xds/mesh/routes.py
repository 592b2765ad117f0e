"""The outbound RouteConfiguration: one virtual host per HTTP service port.

Virtual host `HOST:PORT` answers to the names a client in the proxy's
namespace may use (Istio's `GenerateAltVirtualHosts` for `*.svc.cluster.local`):
the FQDN; `<name>.<namespace>` and `<name>.<namespace>.svc` from any
namespace; the bare `<name>` only from the service's own namespace. Each
name is listed with `:PORT`; without a port only on the service's port 80,
or on its lowest port when it has no port 80 (a client omits the port only
for 80, and one route configuration serves every port). A name already taken
by a virtual host earlier in (host, port) order is left out, so every domain
is unique.

Routes: the VirtualService for the host (`http_route`), else (also when none
of its matches applies to this port or proxy) Istio's `default` route to
`outbound|PORT||HOST` with no timeout and the default retry policy.

Hosts of a VirtualService that are not services of the registry get no
virtual host (Istio's port-80 special case is not copied), and `tcp` rules
are not translated: the explicit-mode listener carries HTTP only.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from trellis.api.hosts import CLUSTER_DOMAIN
from trellis.api.networking import ServicePort
from trellis.xds.mesh.build import duration
from trellis.xds.mesh.http_route import RouteBuilder
from trellis.xds.mesh.names import DEFAULT_ROUTE_NAME, OUTBOUND_ROUTE_NAME, outbound_cluster
from trellis.xds.mesh.registry import Registry, Service
from trellis.xds.mesh.retry import default_retry_policy


def outbound_route_config(registry: Registry) -> route_pb2.RouteConfiguration:
    """The RouteConfiguration the outbound listener takes over RDS."""
    config = route_pb2.RouteConfiguration(name=OUTBOUND_ROUTE_NAME)
    taken: set[str] = set()
    for service in registry.services:
        portless = _portless_port(service)
        for port in service.ports:
            if not port.is_http:
                continue
            domains = [
                domain
                for domain in _domains(service, port.number, registry.namespace, portless)
                if domain not in taken
            ]
            taken.update(domains)
            if not domains:
                continue
            host = config.virtual_hosts.add(name=f"{service.host}:{port.number}")
            host.domains.extend(domains)
            host.routes.extend(_routes(registry, service, port))
    return config


def _portless_port(service: Service) -> int:
    numbers = [port.number for port in service.ports if port.is_http]
    if not numbers:
        return 0
    return 80 if 80 in numbers else min(numbers)


def service_names(host: str, proxy_namespace: str) -> list[str]:
    """The names a client in `proxy_namespace` may use for `host`, FQDN first."""
    names = [host]
    suffix = "." + CLUSTER_DOMAIN
    if host.endswith(suffix) and not host.startswith("*"):
        parts = host[: -len(suffix)].split(".")
        if len(parts) == 2:
            name, namespace = parts
            if namespace == proxy_namespace:
                names.append(name)
            names += [f"{name}.{namespace}", f"{name}.{namespace}.svc"]
    return names


def _domains(service: Service, port: int, proxy_namespace: str, portless: int) -> list[str]:
    domains = []
    for name in service_names(service.host, proxy_namespace):
        if port == portless:
            domains.append(name)
        domains.append(f"{name}:{port}")
    return domains


def _routes(registry: Registry, service: Service, port: ServicePort) -> list[rc.Route]:
    virtual_service = registry.virtual_service(service)
    if virtual_service is not None:
        routes = RouteBuilder(registry, virtual_service, port.number).routes()
        if routes:
            return routes
    return [default_route(outbound_cluster(service.host, port.number))]


def default_route(cluster: str) -> rc.Route:
    """Istio's route for a service without a VirtualService."""
    route = rc.Route(name=DEFAULT_ROUTE_NAME, match=rc.RouteMatch(prefix="/"))
    route.route.cluster = cluster
    route.route.timeout.CopyFrom(duration(0))
    policy = default_retry_policy()
    if policy is not None:
        route.route.retry_policy.CopyFrom(policy)
    return route
