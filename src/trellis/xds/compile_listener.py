"""Listeners, their filter chains and network filters: an HTTP connection manager,
or a TCP proxy after any number of network RBAC filters, per chain."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2 as core_base_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as format_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)

from trellis.core.accesslog import AccessLogFormatter
from trellis.core.addresses import IpNetwork
from trellis.core.authz import AuthzConfig
from trellis.core.config import (
    AccessLogConfig,
    FilterChain,
    HttpConnectionManager,
    Listener,
    NetworkFilter,
    TcpProxy,
    TrafficDirection,
)
from trellis.core.filter_chain import MatchKey, match_keys
from trellis.errors import ConfigError
from trellis.xds.compile_rbac import http_filter_chain, network_filter_chain
from trellis.xds.compile_route import route_config
from trellis.xds.compile_tls import chain_transport
from trellis.xds.compile_tracing import tracing
from trellis.xds.convert import check_ads_source, duration, socket_address, wrapped, wrapped_bool
from trellis.xds.supported import (
    FILE_LOG_TYPE,
    HCM_TYPE,
    STDOUT_LOG_TYPE,
    TCP_PROXY_TYPE,
    unpack_any,
)
from trellis.xds.supported_rbac import NETWORK_RBAC_TYPE
from trellis.xds.supported_tls import TLS_INSPECTOR_TYPE
from trellis.xds.where import Where

if TYPE_CHECKING:  # loaded when a config names them (trellis.xds.type_modules)
    from envoy.extensions.access_loggers.file.v3 import file_pb2
    from envoy.extensions.access_loggers.stream.v3 import stream_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_MAX_REQUEST_HEADERS_KB = 60
DEFAULT_MAX_HEADERS_COUNT = 100  # Envoy's default
MAX_REQUEST_HEADERS_KB = 8192
DEFAULT_BUFFER_LIMIT = 1024 * 1024
MAX_PORT = 65535
_NETWORK_FILTERS = frozenset({HCM_TYPE, TCP_PROXY_TYPE})
_ACCESS_LOGGERS = frozenset({FILE_LOG_TYPE, STDOUT_LOG_TYPE})


def listener(
    config: listener_pb2.Listener, clusters: frozenset[str] | None, where: Where
) -> Listener:
    """Convert a listener: its filter chains, each with its match, TLS and network filters."""
    if not config.HasField("address"):
        raise where.at("address").error("address is required")
    address = socket_address(config.address, where.at("address"))
    if not config.filter_chains:
        raise where.at("filter_chains").error("at least one filter chain is required")
    for i, item in enumerate(config.listener_filters):
        here = where.at("listener_filters").item(i).at("typed_config")
        if not item.HasField("typed_config"):
            raise here.error("typed_config is required (only the TLS inspector is supported)")
        unpack_any(item.typed_config, frozenset({TLS_INSPECTOR_TYPE}), here)
    return Listener(
        name=config.name or f"{address.host}_{address.port}",
        address=address,
        chains=_filter_chains(config.filter_chains, clusters, where.at("filter_chains")),
        direction=TrafficDirection(core_base_pb2.TrafficDirection.Name(config.traffic_direction)),
        per_connection_buffer_limit_bytes=wrapped(
            config, "per_connection_buffer_limit_bytes", DEFAULT_BUFFER_LIMIT
        ),
        use_original_dst=wrapped_bool(config, "use_original_dst", False),
    )


def _filter_chains(
    chains: Sequence[listener_components_pb2.FilterChain],
    clusters: frozenset[str] | None,
    where: Where,
) -> tuple[FilterChain, ...]:
    """Each chain's match (`destination_port`, `prefix_ranges`, `transport_protocol`),
    TLS and filters; like Envoy, two chains matching the same (port, prefix,
    protocol) are an error."""
    result = []
    seen: dict[MatchKey, int] = {}
    for i, chain in enumerate(chains):
        here = where.item(i)
        protocol, tls = chain_transport(chain, here)
        match = chain.filter_chain_match
        compiled = FilterChain(
            filter=_network_filter(chain, clusters, here),
            name=chain.name,
            destination_port=_destination_port(match, here),
            prefix_ranges=_prefix_ranges(match, here.at("filter_chain_match")),
            transport_protocol=protocol,
            tls=tls,
        )
        for key in match_keys(compiled):
            if key in seen:
                raise here.at("filter_chain_match").error(
                    f"filter chains {seen[key]} and {i} have the same match"
                )
            seen[key] = i
        result.append(compiled)
    return tuple(result)


def _prefix_ranges(
    match: listener_components_pb2.FilterChainMatch, where: Where
) -> tuple[IpNetwork, ...]:
    """The destination address blocks, IPv4 or IPv6; host bits beyond `prefix_len` are
    dropped, as Envoy does. Listed twice is listed once."""
    result: dict[IpNetwork, None] = {}
    for i, cidr in enumerate(match.prefix_ranges):
        here = where.at("prefix_ranges").item(i)
        try:
            address = ipaddress.ip_address(cidr.address_prefix)
        except ValueError:
            raise here.at("address_prefix").error(
                f"{cidr.address_prefix!r} is not an IPv4 or IPv6 address"
            ) from None
        length = wrapped(cidr, "prefix_len", 0)
        if length > address.max_prefixlen:
            raise here.at("prefix_len").error(
                f"must be 0-{address.max_prefixlen} for {address}, got {length}"
            )
        result[ipaddress.ip_network(f"{address}/{length}", strict=False)] = None
    return tuple(result)


def _destination_port(match: listener_components_pb2.FilterChainMatch, where: Where) -> int | None:
    if not match.HasField("destination_port"):
        return None
    port = match.destination_port.value
    if not 1 <= port <= MAX_PORT:
        raise (
            where.at("filter_chain_match")
            .at("destination_port")
            .error(f"must be 1-{MAX_PORT}, got {port}")
        )
    return int(port)


def _network_filter(
    chain: listener_components_pb2.FilterChain, clusters: frozenset[str] | None, where: Where
) -> NetworkFilter:
    """The chain's last filter (the connection manager or the TCP proxy), with the
    network RBAC filters before it (TCP proxy only)."""
    filters = chain.filters
    if not filters:
        raise where.at("filters").error(
            "a network filter is required (http_connection_manager or tcp_proxy)"
        )
    last = len(filters) - 1
    for i, item in enumerate(filters[:last]):
        if item.HasField("typed_config") and item.typed_config.TypeName() != NETWORK_RBAC_TYPE:
            raise (
                where.at("filters")
                .item(i)
                .error(
                    "only envoy.filters.network.rbac filters may come before the last "
                    "network filter (the http_connection_manager or tcp_proxy)"
                )
            )
    here = where.at("filters").item(last).at("typed_config")
    if not filters[last].HasField("typed_config"):
        raise here.error("typed_config is required")
    inner = unpack_any(filters[last].typed_config, _NETWORK_FILTERS, here)
    if inner.DESCRIPTOR.full_name == TCP_PROXY_TYPE:
        authz = network_filter_chain(filters[:last], where.at("filters"))
        return tcp_proxy(cast("tcp_proxy_pb2.TcpProxy", inner), clusters, here, authz)
    if last:
        raise (
            where.at("filters")
            .item(0)
            .error(
                "envoy.filters.network.rbac is supported before tcp_proxy only "
                "(an HTTP connection manager takes envoy.filters.http.rbac in http_filters)"
            )
        )
    return http_connection_manager(inner, clusters, here)


def http_connection_manager(
    hcm: http_connection_manager_pb2.HttpConnectionManager,
    clusters: frozenset[str] | None,
    where: Where,
) -> HttpConnectionManager:
    """Convert an HTTP connection manager (inline route_config or RDS over ADS) and the router."""
    if not hcm.stat_prefix:
        raise where.at("stat_prefix").error("stat_prefix is required")
    specifier = hcm.WhichOneof("route_specifier")
    inline = None
    rds_name = None
    if specifier == "route_config":
        inline = route_config(hcm.route_config, clusters, where.at("route_config"))
    elif specifier == "rds":
        check_ads_source(hcm.rds.config_source, where.at("rds").at("config_source"))
        rds_name = hcm.rds.route_config_name
        if not rds_name:
            raise where.at("rds").at("route_config_name").error("route_config_name is required")
    else:
        raise where.at("route_config").error("route_config or rds is required")
    authz = http_filter_chain(hcm.http_filters, where.at("http_filters"))
    max_headers_kb = wrapped(hcm, "max_request_headers_kb", DEFAULT_MAX_REQUEST_HEADERS_KB)
    if not 0 < max_headers_kb <= MAX_REQUEST_HEADERS_KB:
        raise where.at("max_request_headers_kb").error(
            f"must be 1-{MAX_REQUEST_HEADERS_KB}, got {max_headers_kb}"
        )
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    max_headers = DEFAULT_MAX_HEADERS_COUNT
    if hcm.HasField("common_http_protocol_options"):
        common = hcm.common_http_protocol_options
        here = where.at("common_http_protocol_options")
        idle_timeout = duration(common, "idle_timeout", here, DEFAULT_IDLE_TIMEOUT)
        max_headers = wrapped(common, "max_headers_count", DEFAULT_MAX_HEADERS_COUNT)
        if max_headers < 1:
            raise here.at("max_headers_count").error(f"must be at least 1, got {max_headers}")
    drain_timeout = duration(hcm, "drain_timeout", where, 5.0)
    return HttpConnectionManager(
        stat_prefix=hcm.stat_prefix,
        route_config=inline,
        rds_name=rds_name,
        allow_absolute_url=wrapped_bool(hcm.http_protocol_options, "allow_absolute_url", True),
        generate_request_id=wrapped_bool(hcm, "generate_request_id", True),
        use_remote_address=wrapped_bool(hcm, "use_remote_address", False),
        skip_xff_append=hcm.skip_xff_append,
        max_request_headers_bytes=max_headers_kb * 1024,
        max_request_headers_count=max_headers,
        idle_timeout=idle_timeout,
        request_headers_timeout=duration(hcm, "request_headers_timeout", where, None),
        stream_idle_timeout=duration(hcm, "stream_idle_timeout", where, 300.0),
        request_timeout=duration(hcm, "request_timeout", where, None),
        drain_timeout=drain_timeout or 0.0,
        access_logs=access_logs(hcm.access_log, where.at("access_log")),
        proxy_100_continue=hcm.proxy_100_continue,
        accept_http_10=hcm.http_protocol_options.accept_http_10,
        upgrade_types=_upgrade_types(hcm, where.at("upgrade_configs")),
        authz=authz,
        tracing=(
            tracing(hcm.tracing, clusters, where.at("tracing")) if hcm.HasField("tracing") else None
        ),
    )


def _upgrade_types(
    hcm: http_connection_manager_pb2.HttpConnectionManager, where: Where
) -> frozenset[str]:
    """Upgrade types the connection manager allows (Envoy matches them case-insensitively)."""
    allowed: set[str] = set()
    for i, config in enumerate(hcm.upgrade_configs):
        upgrade_type = config.upgrade_type.strip().lower()
        if not upgrade_type:
            raise where.item(i).at("upgrade_type").error("upgrade_type is required")
        if upgrade_type == "connect":
            raise where.item(i).at("upgrade_type").error("CONNECT is not supported")
        if wrapped_bool(config, "enabled", True):
            allowed.add(upgrade_type)
    return frozenset(allowed)


def tcp_proxy(
    proxy: tcp_proxy_pb2.TcpProxy,
    clusters: frozenset[str] | None,
    where: Where,
    authz: AuthzConfig | None = None,
) -> TcpProxy:
    """Convert a TCP proxy to one known cluster (`authz`: the RBAC filters before it)."""
    if not proxy.stat_prefix:
        raise where.at("stat_prefix").error("stat_prefix is required")
    if not proxy.cluster:
        raise where.at("cluster").error("cluster is required")
    if clusters is not None and proxy.cluster not in clusters:
        raise where.at("cluster").error(f"unknown cluster {proxy.cluster!r}")
    return TcpProxy(
        stat_prefix=proxy.stat_prefix,
        cluster=proxy.cluster,
        idle_timeout=duration(proxy, "idle_timeout", where, DEFAULT_IDLE_TIMEOUT),
        access_logs=access_logs(proxy.access_log, where.at("access_log")),
        authz=authz,
    )


def access_logs(
    logs: Sequence[accesslog_pb2.AccessLog], where: Where
) -> tuple[AccessLogConfig, ...]:
    """Convert file and stdout access loggers."""
    result = []
    for i, log in enumerate(logs):
        here = where.item(i).at("typed_config")
        if not log.HasField("typed_config"):
            raise here.error("typed_config is required")
        inner = cast(
            "file_pb2.FileAccessLog | stream_pb2.StdoutAccessLog",
            unpack_any(log.typed_config, _ACCESS_LOGGERS, here),
        )
        path = None
        if inner.DESCRIPTOR.full_name == FILE_LOG_TYPE:
            path = cast("file_pb2.FileAccessLog", inner).path
            if not path:
                raise here.at("path").error("path is required")
        json_format, text_format = None, None
        if inner.HasField("log_format"):
            json_format, text_format = _log_format(inner.log_format, here.at("log_format"))
        try:
            AccessLogFormatter.from_config(text_format, json_format)
        except ConfigError as exc:
            raise here.at("log_format").error(str(exc)) from None
        result.append(AccessLogConfig(path, json_format, text_format))
    return tuple(result)


def _log_format(
    log_format: format_pb2.SubstitutionFormatString, where: Where
) -> tuple[tuple[tuple[str, str], ...] | None, str | None]:
    kind = log_format.WhichOneof("format")
    if kind == "json_format":
        pairs = []
        fields = log_format.json_format.fields
        for key in sorted(fields):
            if fields[key].WhichOneof("kind") != "string_value":
                raise where.at("json_format").key(key).error("values must be strings")
            pairs.append((key, fields[key].string_value))
        return tuple(pairs), None
    if kind == "text_format_source":
        source = log_format.text_format_source
        here = where.at("text_format_source")
        if source.WhichOneof("specifier") == "inline_string":
            return None, source.inline_string
        if source.WhichOneof("specifier") == "inline_bytes":
            try:
                return None, bytes(source.inline_bytes).decode()
            except UnicodeDecodeError:
                raise here.at("inline_bytes").error("must be UTF-8") from None
        raise here.error("inline_string is required")
    return None, None
