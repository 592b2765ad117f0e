"""Which Envoy fields Trellis implements, and a check that rejects the rest.

The allowlist is data: message full name -> field names Trellis honours. A field
that is set but not listed is an error naming its path, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from trellis.xds.supported_rbac import NETWORK_RBAC_TYPE, RBAC_SUPPORTED_FIELDS, RBAC_TYPE
from trellis.xds.supported_tls import (
    TLS_SUPPORTED_ANY_TYPES,
    TLS_SUPPORTED_FIELDS,
    TLS_SUPPORTED_VALUES,
)
from trellis.xds.type_modules import import_type
from trellis.xds.where import Where

_CORE = "envoy.config.core.v3."
_ROUTE = "envoy.config.route.v3."
_CLUSTER = "envoy.config.cluster.v3."
_ENDPOINT = "envoy.config.endpoint.v3."
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3."
_TCP = "envoy.extensions.filters.network.tcp_proxy.v3."
_UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_MATCHER = "envoy.type.matcher.v3."

_HEADER_MUTATIONS = (
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
)

HCM_TYPE = _HCM + "HttpConnectionManager"
TCP_PROXY_TYPE = _TCP + "TcpProxy"
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
FILE_LOG_TYPE = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_LOG_TYPE = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
OPENTELEMETRY_TYPE = "envoy.config.trace.v3.OpenTelemetryConfig"
PREVIOUS_HOSTS_TYPE = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
UPSTREAM_HTTP_OPTIONS_TYPE = _UPSTREAM_HTTP
DOWNSTREAM_CONNECTIONS_TYPE = (
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
DOWNSTREAM_CONNECTIONS_NAME = "envoy.resource_monitors.global_downstream_max_connections"

SUPPORTED_FIELDS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # bootstrap
        "envoy.config.bootstrap.v3.Bootstrap": frozenset(
            {"node", "static_resources", "dynamic_resources", "admin", "overload_manager"}
        ),
        "envoy.config.bootstrap.v3.Bootstrap.DynamicResources": frozenset(
            {"ads_config", "lds_config", "cds_config"}
        ),
        _CORE + "ApiConfigSource": frozenset(
            {"api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"}
        ),
        _CORE + "GrpcService": frozenset({"envoy_grpc", "timeout"}),
        _CORE + "GrpcService.EnvoyGrpc": frozenset({"cluster_name"}),
        _CORE + "ConfigSource": frozenset(
            {"ads", "api_config_source", "resource_api_version", "initial_fetch_timeout"}
        ),
        _CORE + "AggregatedConfigSource": frozenset(),
        "envoy.config.overload.v3.OverloadManager": frozenset({"resource_monitors"}),
        "envoy.config.overload.v3.ResourceMonitor": frozenset({"name", "typed_config"}),
        DOWNSTREAM_CONNECTIONS_TYPE: frozenset({"max_active_downstream_connections"}),
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources": frozenset(
            {"listeners", "clusters", "secrets"}
        ),
        "envoy.config.bootstrap.v3.Admin": frozenset({"address"}),
        _CORE + "Node": frozenset({"id", "cluster", "metadata"}),
        _CORE + "Address": frozenset({"socket_address", "pipe"}),
        _CORE + "Pipe": frozenset({"path"}),  # `mode` is for servers; none listen on pipes
        _CORE + "SocketAddress": frozenset({"protocol", "address", "port_value"}),
        # listeners
        "envoy.config.listener.v3.Listener": frozenset(
            {
                "name",
                "address",
                "filter_chains",
                "traffic_direction",
                "per_connection_buffer_limit_bytes",
                "stat_prefix",
                "listener_filters",
                "use_original_dst",
            }
        ),
        "envoy.config.listener.v3.FilterChain": frozenset(
            {"name", "filters", "filter_chain_match", "transport_socket"}
        ),
        "envoy.config.listener.v3.FilterChainMatch": frozenset(
            {"destination_port", "prefix_ranges", "transport_protocol"}
        ),
        _CORE + "CidrRange": frozenset({"address_prefix", "prefix_len"}),
        "envoy.config.listener.v3.Filter": frozenset({"name", "typed_config"}),
        HCM_TYPE: frozenset(
            {
                "codec_type",
                "stat_prefix",
                "route_config",
                "http_filters",
                "common_http_protocol_options",
                "http_protocol_options",
                "generate_request_id",
                "use_remote_address",
                "skip_xff_append",
                "max_request_headers_kb",
                "request_headers_timeout",
                "stream_idle_timeout",
                "request_timeout",
                "drain_timeout",
                "access_log",
                "upgrade_configs",
                "proxy_100_continue",
                "rds",
                "tracing",
            }
        ),
        # tracing (trellis.xds.compile_tracing): OpenTelemetry over OTLP gRPC or HTTP
        _HCM + "HttpConnectionManager.Tracing": frozenset(
            {
                "provider",
                "random_sampling",
                "client_sampling",
                "overall_sampling",
                "spawn_upstream_span",
                "max_path_tag_length",
            }
        ),
        "envoy.config.trace.v3.Tracing.Http": frozenset({"name", "typed_config"}),
        OPENTELEMETRY_TYPE: frozenset({"grpc_service", "http_service", "service_name"}),
        _CORE + "HttpService": frozenset({"http_uri"}),
        _CORE + "HttpUri": frozenset({"uri", "cluster", "timeout"}),
        _HCM + "Rds": frozenset({"config_source", "route_config_name"}),
        _HCM + "HttpConnectionManager.UpgradeConfig": frozenset({"upgrade_type", "enabled"}),
        _HCM + "HttpFilter": frozenset({"name", "typed_config"}),
        ROUTER_TYPE: frozenset(),
        _CORE + "HttpProtocolOptions": frozenset({"idle_timeout", "max_headers_count"}),
        _CORE + "Http1ProtocolOptions": frozenset({"allow_absolute_url", "accept_http_10"}),
        TCP_PROXY_TYPE: frozenset({"stat_prefix", "cluster", "idle_timeout", "access_log"}),
        # access logs
        "envoy.config.accesslog.v3.AccessLog": frozenset({"name", "typed_config"}),
        FILE_LOG_TYPE: frozenset({"path", "log_format"}),
        STDOUT_LOG_TYPE: frozenset({"log_format"}),
        _CORE + "SubstitutionFormatString": frozenset({"json_format", "text_format_source"}),
        _CORE + "DataSource": frozenset({"inline_string", "inline_bytes"}),
        # routes
        _ROUTE + "RouteConfiguration": frozenset(
            {"name", "virtual_hosts", "vhds", *_HEADER_MUTATIONS}
        ),
        _ROUTE + "Vhds": frozenset({"config_source"}),  # ads + resource_api_version V3
        _ROUTE + "VirtualHost": frozenset({"name", "domains", "routes", *_HEADER_MUTATIONS}),
        _ROUTE + "Route": frozenset(
            {
                "name",
                "match",
                "route",
                "redirect",
                "direct_response",
                "metadata",
                *_HEADER_MUTATIONS,
            }
        ),
        # Metadata only labels a route (Istio marks its VirtualService there).
        _CORE + "Metadata": frozenset({"filter_metadata"}),
        _ROUTE + "RouteMatch": frozenset(
            {"prefix", "path", "safe_regex", "case_sensitive", "headers"}
        ),
        _ROUTE + "HeaderMatcher": frozenset(
            {
                "name",
                "string_match",
                "present_match",
                "invert_match",
                "treat_missing_header_as_empty",
                "exact_match",
                "prefix_match",
                "suffix_match",
                "contains_match",
                "safe_regex_match",
            }
        ),
        _MATCHER + "StringMatcher": frozenset(
            {"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"}
        ),
        _MATCHER + "RegexMatcher": frozenset({"google_re2", "regex"}),
        _MATCHER + "RegexMatcher.GoogleRE2": frozenset(),
        _ROUTE + "RouteAction": frozenset(
            {
                "cluster",
                "weighted_clusters",
                "timeout",
                "retry_policy",
                "prefix_rewrite",
                "host_rewrite_literal",
            }
        ),
        _ROUTE + "WeightedCluster": frozenset({"clusters", "total_weight"}),
        _ROUTE + "WeightedCluster.ClusterWeight": frozenset({"name", "weight", *_HEADER_MUTATIONS}),
        _ROUTE + "RetryPolicy": frozenset(
            {
                "retry_on",
                "num_retries",
                "per_try_timeout",
                "retry_back_off",
                "retriable_status_codes",
                "retry_host_predicate",
                "host_selection_retry_max_attempts",
            }
        ),
        _ROUTE + "RetryPolicy.RetryBackOff": frozenset({"base_interval", "max_interval"}),
        _ROUTE + "RetryPolicy.RetryHostPredicate": frozenset({"name", "typed_config"}),
        PREVIOUS_HOSTS_TYPE: frozenset(),
        _ROUTE + "RedirectAction": frozenset(
            {
                "scheme_redirect",
                "https_redirect",
                "host_redirect",
                "port_redirect",
                "path_redirect",
                "prefix_rewrite",
                "response_code",
                "strip_query",
            }
        ),
        _ROUTE + "DirectResponseAction": frozenset({"status", "body"}),
        _CORE + "HeaderValueOption": frozenset(
            {"header", "append", "append_action", "keep_empty_value"}
        ),
        _CORE + "HeaderValue": frozenset({"key", "value"}),
        # clusters
        _CLUSTER + "Cluster": frozenset(
            {
                "name",
                "type",
                "connect_timeout",
                "lb_policy",
                "least_request_lb_config",
                "load_assignment",
                "eds_cluster_config",
                "circuit_breakers",
                "common_http_protocol_options",
                "typed_extension_protocol_options",
                "outlier_detection",
                "common_lb_config",
                "transport_socket",
                "transport_socket_matches",
                "metadata",
            }
        ),
        _CLUSTER + "Cluster.LeastRequestLbConfig": frozenset({"choice_count"}),
        # Consecutive-error ejection only; the success-rate and failure-percentage
        # enforcements are accepted so that they can be switched off (checked: 0).
        _CLUSTER + "OutlierDetection": frozenset(
            {
                "consecutive_5xx",
                "consecutive_gateway_failure",
                "enforcing_consecutive_5xx",
                "enforcing_consecutive_gateway_failure",
                "interval",
                "base_ejection_time",
                "max_ejection_time",
                "max_ejection_time_jitter",
                "max_ejection_percent",
                "always_eject_one_host",
                "enforcing_success_rate",
                "enforcing_failure_percentage",
            }
        ),
        _CLUSTER + "Cluster.CommonLbConfig": frozenset({"healthy_panic_threshold"}),
        "envoy.type.v3.Percent": frozenset({"value"}),
        _CLUSTER + "CircuitBreakers": frozenset({"thresholds"}),
        _CLUSTER + "CircuitBreakers.Thresholds": frozenset(
            {"priority", "max_connections", "max_pending_requests", "max_requests", "max_retries"}
        ),
        _ENDPOINT + "ClusterLoadAssignment": frozenset({"cluster_name", "endpoints"}),
        # A locality and its weight are accepted; as in Envoy, locality weights only
        # matter with locality-weighted balancing, which Trellis does not implement.
        _ENDPOINT + "LocalityLbEndpoints": frozenset(
            {"lb_endpoints", "locality", "load_balancing_weight"}
        ),
        _CORE + "Locality": frozenset({"region", "zone", "sub_zone"}),
        _ENDPOINT + "LbEndpoint": frozenset({"endpoint", "load_balancing_weight", "metadata"}),
        _ENDPOINT + "Endpoint": frozenset({"address"}),
        _UPSTREAM_HTTP: frozenset({"common_http_protocol_options", "explicit_http_config"}),
        _UPSTREAM_HTTP + ".ExplicitHttpConfig": frozenset(
            {"http_protocol_options", "http2_protocol_options"}
        ),
        _CLUSTER + "Cluster.EdsClusterConfig": frozenset({"eds_config", "service_name"}),
        **RBAC_SUPPORTED_FIELDS,
        **TLS_SUPPORTED_FIELDS,
    }
)

# Enum fields whose values are restricted: (message, field) -> allowed value names.
SUPPORTED_ENUM_VALUES: Mapping[tuple[str, str], frozenset[str]] = MappingProxyType(
    {
        (_CORE + "SocketAddress", "protocol"): frozenset({"TCP"}),
        (HCM_TYPE, "codec_type"): frozenset({"AUTO", "HTTP1"}),
        (_CLUSTER + "Cluster", "type"): frozenset({"STATIC", "EDS", "ORIGINAL_DST"}),
        (_CORE + "ApiConfigSource", "api_type"): frozenset({"GRPC", "DELTA_GRPC"}),
        (_CORE + "ApiConfigSource", "transport_api_version"): frozenset({"V3"}),
        (_CORE + "ConfigSource", "resource_api_version"): frozenset({"V3"}),
        (_CLUSTER + "Cluster", "lb_policy"): frozenset(
            {"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "CLUSTER_PROVIDED"}
        ),
        (_CLUSTER + "CircuitBreakers.Thresholds", "priority"): frozenset({"DEFAULT"}),
        **TLS_SUPPORTED_VALUES,
    }
)

# `Any` fields: (message, field) -> message types they may hold.
SUPPORTED_ANY_TYPES: Mapping[tuple[str, str], frozenset[str]] = MappingProxyType(
    {
        ("envoy.config.listener.v3.Filter", "typed_config"): frozenset(
            {HCM_TYPE, TCP_PROXY_TYPE, NETWORK_RBAC_TYPE}
        ),
        (_HCM + "HttpFilter", "typed_config"): frozenset({ROUTER_TYPE, RBAC_TYPE}),
        ("envoy.config.trace.v3.Tracing.Http", "typed_config"): frozenset({OPENTELEMETRY_TYPE}),
        ("envoy.config.accesslog.v3.AccessLog", "typed_config"): frozenset(
            {FILE_LOG_TYPE, STDOUT_LOG_TYPE}
        ),
        (_ROUTE + "RetryPolicy.RetryHostPredicate", "typed_config"): frozenset(
            {PREVIOUS_HOSTS_TYPE}
        ),
        ("envoy.config.overload.v3.ResourceMonitor", "typed_config"): frozenset(
            {DOWNSTREAM_CONNECTIONS_TYPE}
        ),
        (_CLUSTER + "Cluster", "typed_extension_protocol_options"): frozenset(
            {UPSTREAM_HTTP_OPTIONS_TYPE}
        ),
        **TLS_SUPPORTED_ANY_TYPES,
    }
)

# Messages taken whole: their contents are read by the compiler, not walked.
LEAF_MESSAGES: frozenset[str] = frozenset(
    {
        "google.protobuf.Duration",
        "google.protobuf.BoolValue",
        "google.protobuf.UInt32Value",
        "google.protobuf.Struct",
    }
)

_ANY = "google.protobuf.Any"


def check_supported(msg: Message, source: str) -> None:
    """Raise `ConfigError` naming the first set field Trellis does not implement."""
    _walk(msg, Where(source))


def unpack_any(value: AnyProto, allowed: frozenset[str], where: Where) -> Message:
    """Unpack an `Any` whose type must be one of `allowed`."""
    type_name = value.TypeName()
    if not type_name:
        raise where.error('"@type" is required')
    if type_name not in allowed:
        names = ", ".join(sorted(allowed)) or "none"
        raise where.error(f"type {type_name} is not supported here (supported: {names})")
    import_type(type_name)  # extension messages are loaded when a config names them
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        raise where.error(f"unknown type {type_name}") from None
    inner = message_factory.GetMessageClass(descriptor)()
    if not value.Unpack(inner):
        raise where.error(f"cannot decode {type_name}")
    return inner


def _walk(msg: Message, where: Where) -> None:
    name = msg.DESCRIPTOR.full_name
    allowed = SUPPORTED_FIELDS.get(name, frozenset())
    for field, value in msg.ListFields():
        here = where.at(field.name)
        if field.name not in allowed:
            raise here.error(f"field is not supported by Trellis (in {name})")
        key = (name, field.name)
        if field.type == FieldDescriptor.TYPE_ENUM:
            _check_enum(field, value, key, here)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _walk_field(field, value, key, here)


def _check_enum(field: FieldDescriptor, value: Any, key: tuple[str, str], where: Where) -> None:
    allowed = SUPPORTED_ENUM_VALUES.get(key)
    if allowed is None:
        return
    assert field.enum_type is not None
    numbers = value if isinstance(value, list | tuple) else [value]
    for number in numbers:
        enum_value = field.enum_type.values_by_number.get(number)
        label = enum_value.name if enum_value is not None else str(number)
        if label not in allowed:
            names = ", ".join(sorted(allowed))
            raise where.error(f"value {label} is not supported (supported: {names})")


def _walk_field(field: FieldDescriptor, value: Any, key: tuple[str, str], where: Where) -> None:
    assert field.message_type is not None
    if field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        if value_field.type != FieldDescriptor.TYPE_MESSAGE:
            return
        for map_key, item in value.items():
            _walk_value(item, key, where.key(str(map_key)))
    elif field.is_repeated:
        for index, item in enumerate(value):
            _walk_value(item, key, where.item(index))
    else:
        _walk_value(value, key, where)


def _walk_value(msg: Message, key: tuple[str, str], where: Where) -> None:
    full_name = msg.DESCRIPTOR.full_name
    if full_name == _ANY:
        assert isinstance(msg, AnyProto)
        _walk(unpack_any(msg, SUPPORTED_ANY_TYPES.get(key, frozenset()), where), where)
    elif full_name not in LEAF_MESSAGES:
        _walk(msg, where)
