"""Dynamic config: the bootstrap's ADS settings and the resources that arrive over ADS.

Each xDS resource is checked against the same allowlist as a bootstrap and
converted with the same functions; errors name the resource (`LDS listener
"outbound": filter_chains[0]...`) so a NACK tells the control plane what is wrong.
Routes and TCP proxies are not checked against the known clusters: with CDS the
clusters may arrive later, and a route to a missing cluster answers 503 (NC).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.message import Message

from trellis.core.config import AdsConfig, Cluster, Endpoint, Listener, RouteConfig, VirtualHost
from trellis.core.tls import Secret
from trellis.xds.compile_cluster import cluster as compile_cluster
from trellis.xds.compile_cluster import endpoints as compile_endpoints
from trellis.xds.compile_listener import listener as compile_listener
from trellis.xds.compile_route import claim_domain
from trellis.xds.compile_route import route_config as compile_route_config
from trellis.xds.compile_route import virtual_host as compile_virtual_host
from trellis.xds.compile_tls import secret as compile_secret
from trellis.xds.convert import check_ads_source, duration
from trellis.xds.supported import check_supported
from trellis.xds.where import Where

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def ads_config(
    bootstrap: bootstrap_pb2.Bootstrap, clusters: Sequence[Cluster], where: Where
) -> AdsConfig | None:
    """The ADS stream a bootstrap asks for, or None for a static-only proxy.

    `ads_config.api_type` picks the protocol as in Envoy: `DELTA_GRPC` incremental
    xDS, `GRPC` state of the world (the supported-fields check refuses others).
    """
    if not bootstrap.HasField("dynamic_resources"):
        for cluster in clusters:
            if cluster.http2:
                raise where.at("static_resources").error(
                    f"cluster {cluster.name!r}: HTTP/2 upstreams are only for the ADS cluster"
                )
        return None
    dynamic = bootstrap.dynamic_resources
    here = where.at("dynamic_resources")
    if not dynamic.HasField("ads_config"):
        raise here.at("ads_config").error("ads_config is required for dynamic resources")
    api = dynamic.ads_config
    api_where = here.at("ads_config")
    if len(api.grpc_services) != 1 or not api.grpc_services[0].HasField("envoy_grpc"):
        raise api_where.at("grpc_services").error(
            "exactly one grpc_services entry with envoy_grpc is required"
        )
    name = api.grpc_services[0].envoy_grpc.cluster_name
    by_name = {c.name: c for c in clusters}
    target = by_name.get(name)
    at = api_where.at("grpc_services").item(0).at("envoy_grpc").at("cluster_name")
    if target is None:
        raise at.error(f"unknown static cluster {name!r}")
    if target.eds_name is not None or len(target.endpoints) != 1:
        raise at.error(f"cluster {name!r} must be STATIC with exactly one endpoint")
    for cluster in clusters:
        if cluster.http2 and cluster.name != name:
            raise where.at("static_resources").error(
                f"cluster {cluster.name!r}: HTTP/2 upstreams are only for the ADS cluster"
            )
    for field in ("lds_config", "cds_config"):
        if dynamic.HasField(field):
            check_ads_source(getattr(dynamic, field), here.at(field))
    fetch: float | None = 15.0
    if dynamic.HasField("lds_config"):
        fetch = duration(dynamic.lds_config, "initial_fetch_timeout", here.at("lds_config"), 15.0)
    return AdsConfig(
        cluster=name,
        address=target.endpoints[0].address,
        lds=dynamic.HasField("lds_config"),
        cds=dynamic.HasField("cds_config"),
        initial_fetch_timeout=fetch,  # 0s: no limit, as in Envoy
        delta=api.api_type == config_source_pb2.ApiConfigSource.DELTA_GRPC,
    )


def listener_resource(message: Message) -> Listener:
    assert isinstance(message, listener_pb2.Listener)
    source = f"LDS listener {message.name!r}"
    check_supported(message, source)
    return compile_listener(message, None, Where(source))


def route_resource(message: Message, *, vhds: bool = False) -> RouteConfig:
    """An RDS route configuration; `vhds`: whether it may take virtual hosts over VHDS
    (the proxy asks for them), which `vhds_route_config` then adds."""
    assert isinstance(message, route_pb2.RouteConfiguration)
    source = _rds_source(message.name)
    check_supported(message, source)
    return compile_route_config(message, None, Where(source), vhds=vhds)


def virtual_host_resource(message: Message) -> VirtualHost:
    """A VHDS virtual host; its resource name is its `name`."""
    assert isinstance(message, route_components_pb2.VirtualHost)
    source = _vhds_source(message.name)
    check_supported(message, source)
    return compile_virtual_host(message, Where(source))


def vhds_route_config(config: RouteConfig, hosts: Iterable[VirtualHost]) -> RouteConfig:
    """A VHDS route configuration as the proxy runs it: its own virtual hosts, then
    `hosts` (the VHDS ones under its name) in name order. Matching goes by domain, so
    the order only keeps dumps stable; a domain still belongs to one virtual host,
    and a clash is a ConfigError naming both."""
    added = tuple(sorted(hosts, key=lambda host: host.name))
    merged = config.virtual_hosts + added
    domains = [domain for host in merged for domain in host.domains]  # lower-cased
    if len(set(domains)) != len(domains):
        _name_the_clash(config, added)
    return dataclasses.replace(config, virtual_hosts=merged)


def _name_the_clash(config: RouteConfig, added: tuple[VirtualHost, ...]) -> None:
    """Raise the ConfigError naming both places of a domain used twice (the slow way,
    each domain with its place, only once a clash is known)."""
    seen: dict[str, Where] = {}
    own = Where(_rds_source(config.name)).at("virtual_hosts")
    for i, host in enumerate(config.virtual_hosts):
        for j, domain in enumerate(host.domains):
            claim_domain(domain, own.item(i).at("domains").item(j), seen)
    for host in added:
        where = Where(_vhds_source(host.name)).at("domains")
        for j, domain in enumerate(host.domains):
            claim_domain(domain, where.item(j), seen)


def _rds_source(name: str) -> str:
    return f"RDS route configuration {name!r}"


def _vhds_source(name: str) -> str:
    return f"VHDS virtual host {name!r}"


def cluster_resource(message: Message) -> Cluster:
    assert isinstance(message, cluster_pb2.Cluster)
    source = f"CDS cluster {message.name!r}"
    check_supported(message, source)
    compiled = compile_cluster(message, Where(source))
    if compiled.http2:
        raise Where(source).error("HTTP/2 upstreams are not supported")
    return compiled


def endpoint_resource(message: Message) -> tuple[Endpoint, ...]:
    assert isinstance(message, endpoint_pb2.ClusterLoadAssignment)
    source = f"EDS load assignment {message.cluster_name!r}"
    check_supported(message, source)
    return compile_endpoints(message, Where(source))


def secret_resource(message: Message) -> Secret:
    assert isinstance(message, secret_pb2.Secret)
    source = f"SDS secret {message.name!r}"
    check_supported(message, source)
    return compile_secret(message, Where(source))[1]
