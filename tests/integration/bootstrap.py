"""Builders for Envoy v3 Bootstrap documents (plain dicts, Envoy's JSON field names)."""

from __future__ import annotations

import random
import socket
from typing import Any

Json = dict[str, Any]

HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
PREVIOUS_HOSTS = {
    "name": "envoy.retry_host_predicates.previous_hosts",
    "typed_config": {
        "@type": "type.googleapis.com/"
        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
    },
}

NODE = {
    "id": "sidecar~127.0.0.1~web-1.default~default.svc.cluster.local",
    "cluster": "web",
    "metadata": {
        "WORKLOAD_NAME": "web",
        "NAMESPACE": "default",
        "SERVICE_ACCOUNT": "web-sa",
        "LABELS": {"app": "web", "version": "v1"},
    },
}


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nothing listens on right now, for the proxy to bind.

    Picked at random below the kernel's ephemeral range, so it cannot collide with
    the upstream servers (port 0) or outgoing connections, and two calls in a row
    rarely return the same port (binding port 0 twice can).
    """
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(50):
            port = random.randrange(10000, low)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


def address(port: int, host: str = "127.0.0.1") -> Json:
    return {"socket_address": {"address": host, "port_value": port}}


def cluster(
    name: str,
    ports: list[int] | list[tuple[int, int]],
    *,
    lb_policy: str = "ROUND_ROBIN",
    connect_timeout: str = "1s",
    **extra: Any,
) -> Json:
    """A STATIC cluster; `ports` are plain ports or (port, weight) pairs."""
    lb_endpoints = []
    for item in ports:
        port, weight = item if isinstance(item, tuple) else (item, 1)
        lb_endpoints.append(
            {"endpoint": {"address": address(port)}, "load_balancing_weight": weight}
        )
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": lb_policy,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
        **extra,
    }


def thresholds(**limits: int) -> Json:
    return {"thresholds": [limits]}


def route(cluster_name: str, prefix: str = "/", **action: Any) -> Json:
    """A route to one cluster by path prefix; `action` adds RouteAction fields."""
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster_name, **action}}


def virtual_host(
    name: str, routes: list[Json], domains: list[str] | None = None, **extra: Any
) -> Json:
    return {"name": name, "domains": domains or ["*"], "routes": routes, **extra}


def http_listener(
    name: str,
    port: int,
    virtual_hosts: list[Json],
    *,
    direction: str | None = None,
    **hcm: Any,
) -> Json:
    """A listener with an HTTP connection manager and an inline route config."""
    typed: Json = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "route_config": {"name": name, "virtual_hosts": virtual_hosts},
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
        **hcm,
    }
    listener: Json = {
        "name": name,
        "address": address(port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": typed}
                ]
            }
        ],
    }
    if direction is not None:
        listener["traffic_direction"] = direction
    return listener


def tcp_listener(name: str, port: int, cluster_name: str, **tcp: Any) -> Json:
    typed = {"@type": TCP_PROXY_TYPE, "stat_prefix": name, "cluster": cluster_name, **tcp}
    return {
        "name": name,
        "address": address(port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": typed}]}
        ],
    }


def bootstrap(
    admin_port: int,
    listeners: list[Json],
    clusters: list[Json],
    *,
    node: Json | None = None,
    **extra: Any,
) -> Json:
    return {
        "node": node if node is not None else NODE,
        "admin": {"address": address(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        **extra,
    }


def simple_http(
    admin_port: int,
    listen_port: int,
    upstream_ports: list[int],
    *,
    route_action: Json | None = None,
    cluster_extra: Json | None = None,
    hcm_extra: Json | None = None,
    lb_policy: str = "ROUND_ROBIN",
    direction: str | None = None,
) -> Json:
    """One HTTP listener routing everything to cluster `backend`."""
    vhost = virtual_host("all", [route("backend", **(route_action or {}))])
    listener = http_listener("http", listen_port, [vhost], direction=direction, **(hcm_extra or {}))
    clus = cluster("backend", upstream_ports, lb_policy=lb_policy, **(cluster_extra or {}))
    return bootstrap(admin_port, [listener], [clus])


def xds_bootstrap(node: Json, admin_port: int, ads_port: int, api_type: str = "GRPC") -> Json:
    """A bootstrap that takes everything but the ADS cluster from a control plane
    (`api_type` DELTA_GRPC: incremental xDS)."""
    return {
        "node": node,
        "admin": {"address": address(admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [cluster("xds-grpc", [ads_port])]},
    }
