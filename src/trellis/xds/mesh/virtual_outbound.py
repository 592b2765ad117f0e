"""What transparent capture's `virtualOutbound` listener matches, and its two special
clusters (Istio's outbound traffic policy ALLOW_ANY, the default).

iptables sends every outbound TCP connection of the workload to one listener,
which sorts them by original destination (Envoy's filter chain match:
destination port, then destination address):
- a TCP (non-HTTP) service port with an address: the port and the service's
  addresses (ServiceEntry `addresses`, else the virtual IP the control plane
  gave the host) -> a TCP proxy to `outbound|PORT||HOST`, mTLS when the
  endpoints have sidecars, like any other outbound cluster;
- the port of any HTTP service -> the HTTP connection manager with the
  `outbound` routes (HTTP is routed by `Host`, not by address, so one chain
  per port number serves every HTTP service on it);
- the sidecar's own outbound port -> `BlackHoleCluster`: a connection sent
  there directly would otherwise be passed through to this listener again;
- anything else -> a TCP proxy to `PassthroughCluster`, an ORIGINAL_DST
  cluster: the connection goes where the application sent it (a database
  outside the mesh, TLS to an external host, a service without an address).

Without a protocol sniffer, HTTP is recognised by port: HTTP sent to a port
no HTTP service uses passes through untouched (and unmetered as HTTP), and
non-HTTP bytes sent to an HTTP service's port meet the connection manager.
A TCP service without an address (wildcard hosts, `resolution: NONE`
without endpoints) is passed through to wherever its name resolved.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from trellis.core.addresses import IpNetwork
from trellis.xds.mesh.build import MAX_UINT32, duration
from trellis.xds.mesh.names import outbound_cluster
from trellis.xds.mesh.registry import Service
from trellis.xds.protos import cluster_pb2

PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
PASSTHROUGH_CHAIN = "PassthroughFilterChain"
BLACKHOLE_CHAIN = "virtualOutbound-blackhole"
_CONNECT_TIMEOUT = 10.0  # Istio's MeshConfig.connectTimeout


@dataclass(frozen=True, slots=True)
class TcpServicePort:
    """One TCP service port with addresses: its filter chain in `virtualOutbound`."""

    port: int
    prefixes: tuple[IpNetwork, ...]
    cluster: str


@dataclass(frozen=True, slots=True)
class OutboundPorts:
    """The chains `virtualOutbound` has besides the blackhole and passthrough ones:
    the port numbers of HTTP services (sorted) and the TCP service ports."""

    http: tuple[int, ...] = ()
    tcp: tuple[TcpServicePort, ...] = ()


NO_OUTBOUND_PORTS = OutboundPorts()


def service_prefixes(service: Service, vips: Mapping[str, str]) -> tuple[IpNetwork, ...]:
    """The destination addresses of `service`: its ServiceEntry's `addresses` (IPs or
    CIDR blocks), else its host's virtual IP in `vips`, else none."""
    addresses = service.entry.spec.addresses
    if addresses:
        found = (ipaddress.ip_network(address, strict=False) for address in addresses)
        return tuple(dict.fromkeys(found))
    vip = vips.get(service.host)
    return (ipaddress.ip_network(vip),) if vip else ()


def outbound_ports(services: Iterable[Service], vips: Mapping[str, str]) -> OutboundPorts:
    """The chains for the services a proxy sees (`Registry.services`: by host).

    An address and port already taken by an earlier service stays with it (Istio
    also keeps one service per address and port, the oldest).
    """
    http: set[int] = set()
    tcp: list[TcpServicePort] = []
    taken: set[tuple[int, IpNetwork]] = set()
    for service in services:
        prefixes: tuple[IpNetwork, ...] | None = None
        for port in service.ports:
            if port.is_http:
                http.add(port.number)
                continue
            if prefixes is None:
                prefixes = service_prefixes(service, vips)
            free = tuple(prefix for prefix in prefixes if (port.number, prefix) not in taken)
            if not free:
                continue
            taken.update((port.number, prefix) for prefix in free)
            cluster = outbound_cluster(service.host, port.number)
            tcp.append(TcpServicePort(port.number, free, cluster))
    return OutboundPorts(tuple(sorted(http)), tuple(tcp))


def passthrough_cluster() -> cluster_pb2.Cluster:
    """`PassthroughCluster`: each connection to its original destination, unlimited."""
    cluster = cluster_pb2.Cluster(
        name=PASSTHROUGH_CLUSTER,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration(_CONNECT_TIMEOUT),
    )
    thresholds = cluster.circuit_breakers.thresholds.add()
    for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        getattr(thresholds, field).value = MAX_UINT32
    return cluster


def blackhole_cluster() -> cluster_pb2.Cluster:
    """`BlackHoleCluster`: no endpoints, so every connection to it is closed."""
    return cluster_pb2.Cluster(
        name=BLACKHOLE_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(_CONNECT_TIMEOUT),
    )
