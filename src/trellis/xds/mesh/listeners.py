"""Listeners (LDS): where the proxy takes the workload's outbound and inbound traffic.

Explicit mode:
- `outbound` on the outbound address and port: an HTTP connection manager for
  absolute-form HTTP_PROXY requests, its routes over RDS (`outbound`);
- `inbound_<PORT>` on the workload's address and each of its ports: HTTP ports
  get a connection manager with one inline virtual host `*` forwarding to
  `inbound|PORT||` (after the RBAC HTTP filters of the AuthorizationPolicies
  that apply, `trellis.xds.mesh.authz`), other ports a TCP proxy to that
  cluster (after the policies' RBAC network filters).

Transparent mode (Istio's `virtualOutbound`/`virtualInbound` on 0.0.0.0:15001
and :15006 with `use_original_dst`): outbound, a TCP proxy per TCP service
address and port, the connection manager with the `outbound` routes over RDS
for HTTP service ports, and the rest passed through to its original
destination (`trellis.xds.mesh.virtual_outbound`); inbound, one filter
chain per workload port matched by `destination_port`, each with that port's
own network filters as above. `trellis proxy` and Envoy both consume it: the
proxy reads each connection's original destination (SO_ORIGINAL_DST) and
matches the chains against it.

With mesh mTLS (`trellis.xds.mesh.mtls.InboundMtls`) each inbound port's
PeerAuthentication mode decides its chains: STRICT one TLS chain
(`transport_protocol: tls`), PERMISSIVE a TLS and a plaintext
(`raw_buffer`) chain, both behind the TLS inspector, DISABLE the single
plaintext chain of before. In transparent mode these matches are added to the
port's `destination_port` match (chains `inbound|PORT||` and
`inbound|PORT||mtls`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2 as core_base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from trellis.xds.mesh.access_log import NO_PROXY_LOGS, ListenerLogs, ProxyLogs
from trellis.xds.mesh.authz import NO_AUTHZ, InboundAuthz
from trellis.xds.mesh.build import ads_source, boolean, duration, pack, socket_address, u32
from trellis.xds.mesh.model import CaptureMode, ProxyIdentity, TranslateOptions
from trellis.xds.mesh.mtls import InboundMtls
from trellis.xds.mesh.names import (
    DEFAULT_ROUTE_NAME,
    OUTBOUND_ROUTE_NAME,
    inbound_cluster,
    inbound_listener,
)
from trellis.xds.mesh.registry import InboundPort
from trellis.xds.mesh.tracing import NO_TRACING, ProxyTracing, Tracing
from trellis.xds.mesh.virtual_outbound import (
    BLACKHOLE_CHAIN,
    BLACKHOLE_CLUSTER,
    NO_OUTBOUND_PORTS,
    PASSTHROUGH_CHAIN,
    PASSTHROUGH_CLUSTER,
    OutboundPorts,
)
from trellis.xds.protos import (
    http_connection_manager_pb2,
    listener_pb2,
    router_pb2,
    tcp_proxy_pb2,
)

HCM_NAME = "envoy.filters.network.http_connection_manager"
TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
ROUTER_NAME = "envoy.filters.http.router"
OUTBOUND_LISTENER = "outbound"
VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"
WILDCARD = "0.0.0.0"
_OUTBOUND = core_base_pb2.TrafficDirection.OUTBOUND
_INBOUND = core_base_pb2.TrafficDirection.INBOUND


def listeners(
    proxy: ProxyIdentity,
    options: TranslateOptions,
    ports: Sequence[InboundPort],
    authz: InboundAuthz = NO_AUTHZ,
    mtls: InboundMtls | None = None,
    logs: ProxyLogs = NO_PROXY_LOGS,
    tracing: ProxyTracing = NO_TRACING,
    outbound: OutboundPorts = NO_OUTBOUND_PORTS,
) -> list[listener_pb2.Listener]:
    """The outbound listener and the inbound listener(s) for `ports`.

    `authz`: the RBAC filters inbound HTTP goes through before the router, and
    inbound TCP before the TCP proxy; `mtls`: with mesh mTLS, how each port
    terminates it (None: plaintext); `logs`: the access logs of every connection
    manager and TCP proxy, outbound and inbound; `tracing`: the `tracing` of the
    outbound and of the inbound connection managers; `outbound`: the service
    ports transparent capture's outbound listener sorts connections by.
    """
    inbound = _Inbound(authz, mtls, logs.inbound, tracing.inbound)
    if options.capture_mode is CaptureMode.TRANSPARENT:
        result = [_virtual_outbound(options, outbound, logs.outbound, tracing.outbound)]
        if ports:
            result.append(_virtual_inbound(options, ports, inbound))
        return result
    result = [_explicit_outbound(options, logs.outbound, tracing.outbound)]
    address = options.inbound_address or proxy.address
    result += [_explicit_inbound(address, item, inbound) for item in ports]
    return result


@dataclass(frozen=True, slots=True)
class _Inbound:
    """What every inbound listener of a proxy carries besides its port."""

    authz: InboundAuthz
    mtls: InboundMtls | None
    logs: ListenerLogs
    tracing: Tracing | None


def _router() -> http_connection_manager_pb2.HttpFilter:
    return http_connection_manager_pb2.HttpFilter(
        name=ROUTER_NAME, typed_config=pack(router_pb2.Router())
    )


def _outbound_hcm(stat_prefix: str) -> http_connection_manager_pb2.HttpConnectionManager:
    hcm = http_connection_manager_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix, http_filters=[_router()]
    )
    hcm.rds.route_config_name = OUTBOUND_ROUTE_NAME
    hcm.rds.config_source.CopyFrom(ads_source())
    hcm.http_protocol_options.allow_absolute_url.CopyFrom(boolean(True))
    return hcm


def _filter(
    config: http_connection_manager_pb2.HttpConnectionManager | tcp_proxy_pb2.TcpProxy,
    logs: ListenerLogs,
    tracing: Tracing | None = None,
) -> listener_components_pb2.Filter:
    if isinstance(config, tcp_proxy_pb2.TcpProxy):
        config.access_log.extend(logs.tcp)
        return listener_components_pb2.Filter(name=TCP_PROXY_NAME, typed_config=pack(config))
    config.access_log.extend(logs.http)
    if tracing is not None:
        config.tracing.CopyFrom(tracing)
    return listener_components_pb2.Filter(name=HCM_NAME, typed_config=pack(config))


def _explicit_outbound(
    options: TranslateOptions, logs: ListenerLogs, tracing: Tracing | None
) -> listener_pb2.Listener:
    host, port = options.outbound_address, options.outbound_port
    listener = listener_pb2.Listener(
        name=OUTBOUND_LISTENER,
        address=socket_address(host, port),
        traffic_direction=_OUTBOUND,
    )
    hcm = _outbound_hcm(f"outbound_{host}_{port}")
    listener.filter_chains.add().filters.append(_filter(hcm, logs, tracing))
    return listener


def inbound_route_config(port: int) -> route_pb2.RouteConfiguration:
    """Everything to the application: one virtual host `*`, one route, no timeout."""
    cluster = inbound_cluster(port)
    config = route_pb2.RouteConfiguration(name=cluster)
    host = config.virtual_hosts.add(name=f"inbound|http|{port}", domains=["*"])
    route = host.routes.add(name=DEFAULT_ROUTE_NAME, match=rc.RouteMatch(prefix="/"))
    route.route.cluster = cluster
    route.route.timeout.CopyFrom(duration(0))
    return config


def _inbound_filters(
    address: str, item: InboundPort, inbound: _Inbound
) -> list[listener_components_pb2.Filter]:
    stat_prefix = f"inbound_{address}_{item.port}"
    if not item.http:
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=inbound_cluster(item.port))
        return [*inbound.authz.tcp, _filter(proxy, inbound.logs)]
    hcm = http_connection_manager_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        http_filters=[*inbound.authz.http, _router()],
        route_config=inbound_route_config(item.port),
    )
    return [_filter(hcm, inbound.logs, inbound.tracing)]


def _explicit_inbound(address: str, item: InboundPort, inbound: _Inbound) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=inbound_listener(item.port),
        address=socket_address(address, item.port),
        traffic_direction=_INBOUND,
    )
    network_filters = _inbound_filters(address, item, inbound)
    if inbound.mtls is None:
        listener.filter_chains.add().filters.extend(network_filters)
    else:
        inbound.mtls.add_chains(listener, network_filters, item.port, name="")
    return listener


def _virtual_outbound(
    options: TranslateOptions,
    outbound: OutboundPorts,
    logs: ListenerLogs,
    tracing: Tracing | None,
) -> listener_pb2.Listener:
    """Istio's `virtualOutbound`: TCP services by address and port, HTTP by port, the
    sidecar's own port to the blackhole, the rest passed through."""
    own_port = options.outbound_port
    listener = listener_pb2.Listener(
        name=VIRTUAL_OUTBOUND,
        address=socket_address(WILDCARD, own_port),
        traffic_direction=_OUTBOUND,
        use_original_dst=boolean(True),
    )
    for service in outbound.tcp:
        chain = listener.filter_chains.add(name=service.cluster)
        chain.filter_chain_match.destination_port.CopyFrom(u32(service.port))
        for prefix in service.prefixes:
            chain.filter_chain_match.prefix_ranges.add(
                address_prefix=str(prefix.network_address), prefix_len=u32(prefix.prefixlen)
            )
        chain.filters.append(_tcp_proxy_to(service.cluster, logs))
    for port in outbound.http:
        chain = listener.filter_chains.add(name=f"{WILDCARD}_{port}")
        chain.filter_chain_match.destination_port.CopyFrom(u32(port))
        hcm = _outbound_hcm(f"outbound_{WILDCARD}_{port}")
        chain.filters.append(_filter(hcm, logs, tracing))
    # Envoy never falls back from a port's chains to the portless ones: a TCP service
    # port needs its own passthrough chain for the addresses no service has.
    tcp_only = sorted({item.port for item in outbound.tcp} - set(outbound.http))
    for only in (*tcp_only, None):
        passthrough = listener.filter_chains.add(name=PASSTHROUGH_CHAIN)
        if only is not None:
            passthrough.name = f"{PASSTHROUGH_CHAIN}_{only}"
            passthrough.filter_chain_match.destination_port.CopyFrom(u32(only))
        passthrough.filters.append(_tcp_proxy_to(PASSTHROUGH_CLUSTER, logs))
    blackhole = listener.filter_chains.add(name=BLACKHOLE_CHAIN)
    blackhole.filter_chain_match.destination_port.CopyFrom(u32(own_port))
    blackhole.filters.append(_tcp_proxy_to(BLACKHOLE_CLUSTER, logs))
    return listener


def _tcp_proxy_to(cluster: str, logs: ListenerLogs) -> listener_components_pb2.Filter:
    """A TCP proxy to `cluster`, named after it in its stats (Istio's stat prefix)."""
    return _filter(tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster), logs)


def _virtual_inbound(
    options: TranslateOptions, ports: Sequence[InboundPort], inbound: _Inbound
) -> listener_pb2.Listener:
    address = options.inbound_address or WILDCARD
    listener = listener_pb2.Listener(
        name=VIRTUAL_INBOUND,
        address=socket_address(address, options.inbound_port),
        traffic_direction=_INBOUND,
        use_original_dst=boolean(True),
    )
    for item in ports:
        network_filters = _inbound_filters(WILDCARD, item, inbound)
        name = inbound_cluster(item.port)
        if inbound.mtls is not None:
            inbound.mtls.add_chains(
                listener, network_filters, item.port, name, destination_port=item.port
            )
            continue
        chain = listener.filter_chains.add(name=name)
        chain.filter_chain_match.destination_port.CopyFrom(u32(item.port))
        chain.filters.extend(network_filters)
    return listener
