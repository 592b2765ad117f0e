"""Static clusters: endpoints, load balancing, circuit breakers, upstream idle timeout,
outlier detection and the panic threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from trellis.core.config import (
    CircuitBreakerThresholds,
    Cluster,
    Endpoint,
    LbPolicy,
    OutlierDetection,
)
from trellis.xds.compile_tls import endpoint_metadata, socket_matches, upstream_transport
from trellis.xds.convert import (
    check_ads_source,
    duration,
    endpoint_address,
    positive_duration,
    wrapped,
    wrapped_bool,
)
from trellis.xds.supported import UPSTREAM_HTTP_OPTIONS_TYPE, unpack_any
from trellis.xds.where import Where

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 3600.0
_DEFAULT_THRESHOLDS = CircuitBreakerThresholds()
_DEFAULT_OUTLIER = OutlierDetection()
_DEFAULT_PANIC_THRESHOLD = 50.0
# Ejection types Trellis does not implement: accepted only when switched off.
_OFF_ONLY = ("enforcing_success_rate", "enforcing_failure_percentage")


def clusters(configs: Sequence[cluster_pb2.Cluster], where: Where) -> tuple[Cluster, ...]:
    """Convert the static clusters; names must be unique."""
    seen: dict[str, str] = {}
    result = []
    for i, config in enumerate(configs):
        here = where.item(i)
        compiled = cluster(config, here)
        if compiled.name in seen:
            raise here.at("name").error(
                f"cluster {compiled.name!r} is already defined at {seen[compiled.name]}"
            )
        seen[compiled.name] = here.path
        result.append(compiled)
    return tuple(result)


def cluster(config: cluster_pb2.Cluster, where: Where) -> Cluster:
    """Convert one STATIC, EDS or ORIGINAL_DST cluster."""
    if not config.name:
        raise where.at("name").error("name is required")
    original_dst = _original_dst(config, where)
    policy = LbPolicy.ROUND_ROBIN  # unused by ORIGINAL_DST: the cluster picks the host
    if not original_dst:
        policy = LbPolicy(cluster_pb2.Cluster.LbPolicy.Name(config.lb_policy))
    choice_count = 2
    if config.HasField("least_request_lb_config"):
        here = where.at("least_request_lb_config")
        if policy is not LbPolicy.LEAST_REQUEST:
            raise here.error("least_request_lb_config needs lb_policy LEAST_REQUEST")
        choice_count = wrapped(config.least_request_lb_config, "choice_count", 2)
        if choice_count < 2:
            raise here.at("choice_count").error("choice_count must be at least 2")
    idle_timeout, http2 = _protocol_options(config, where)
    eds_name = None
    if config.type == cluster_pb2.Cluster.EDS:
        if config.HasField("load_assignment"):
            raise where.at("load_assignment").error("an EDS cluster takes its endpoints from EDS")
        here = where.at("eds_cluster_config")
        check_ads_source(config.eds_cluster_config.eds_config, here.at("eds_config"))
        eds_name = config.eds_cluster_config.service_name or config.name
    elif config.HasField("eds_cluster_config"):
        raise where.at("eds_cluster_config").error("only for clusters of type EDS")
    return Cluster(
        name=config.name,
        endpoints=_endpoints(config, where),
        lb_policy=policy,
        connect_timeout=positive_duration(
            config, "connect_timeout", where, DEFAULT_CONNECT_TIMEOUT
        ),
        thresholds=_thresholds(config, where),
        idle_timeout=idle_timeout,
        least_request_choice_count=choice_count,
        eds_name=eds_name,
        http2=http2,
        outlier_detection=_outlier_detection(config, where),
        healthy_panic_threshold=_panic_threshold(config, where),
        transport_socket=(
            upstream_transport(config.transport_socket, where.at("transport_socket"))
            if config.HasField("transport_socket")
            else None
        ),
        transport_socket_matches=socket_matches(
            config.transport_socket_matches, where.at("transport_socket_matches")
        ),
        original_dst=original_dst,
        service_host=_service_host(config, where),
    )


def _service_host(config: cluster_pb2.Cluster, where: Where) -> str:
    """The first host in Istio's `filter_metadata.istio.services` ("" when absent)."""
    istio = config.metadata.filter_metadata.get("istio")
    if istio is None or "services" not in istio.fields:
        return ""
    here = where.at("metadata").at("filter_metadata").at("istio").at("services")
    services = istio.fields["services"]
    if services.WhichOneof("kind") != "list_value":
        raise here.error("must be a list of {host, name, namespace}")
    hosts = []
    for index, item in enumerate(services.list_value.values):
        fields = item.struct_value.fields if item.WhichOneof("kind") == "struct_value" else {}
        host = fields.get("host")
        if host is None or host.WhichOneof("kind") != "string_value":
            raise here.item(index).at("host").error("must be a string")
        hosts.append(host.string_value)
    return hosts[0] if hosts else ""


def _original_dst(config: cluster_pb2.Cluster, where: Where) -> bool:
    """Whether `config` is an ORIGINAL_DST cluster, checking what Envoy requires of one:
    lb_policy CLUSTER_PROVIDED (and only there) and no endpoints of its own."""
    provided = config.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    if config.type != cluster_pb2.Cluster.ORIGINAL_DST:
        if provided:
            raise where.at("lb_policy").error("CLUSTER_PROVIDED is only for type ORIGINAL_DST")
        return False
    if not provided:
        raise where.at("lb_policy").error("an ORIGINAL_DST cluster needs CLUSTER_PROVIDED")
    for field in ("load_assignment", "eds_cluster_config", "outlier_detection"):
        if config.HasField(field):
            raise where.at(field).error(
                "not supported on an ORIGINAL_DST cluster (its hosts are the connections' "
                "original destinations)"
            )
    return True


def _endpoints(config: cluster_pb2.Cluster, where: Where) -> tuple[Endpoint, ...]:
    if not config.HasField("load_assignment"):
        return ()
    return endpoints(config.load_assignment, where.at("load_assignment"))


def endpoints(assignment: endpoint_pb2.ClusterLoadAssignment, here: Where) -> tuple[Endpoint, ...]:
    """The endpoints of a load assignment (inline, or an EDS resource)."""
    if not assignment.cluster_name:
        raise here.at("cluster_name").error("cluster_name is required")
    result = []
    for i, locality in enumerate(assignment.endpoints):
        locality_where = here.at("endpoints").item(i)
        for j, lb_endpoint in enumerate(locality.lb_endpoints):
            at = locality_where.at("lb_endpoints").item(j)
            if not lb_endpoint.HasField("endpoint") or not lb_endpoint.endpoint.HasField("address"):
                raise at.at("endpoint").at("address").error("address is required")
            address = endpoint_address(
                lb_endpoint.endpoint.address, at.at("endpoint").at("address")
            )
            weight = wrapped(lb_endpoint, "load_balancing_weight", 1)
            if weight < 1:
                raise at.at("load_balancing_weight").error("weight must be at least 1")
            metadata = endpoint_metadata(lb_endpoint.metadata, at.at("metadata"))
            result.append(Endpoint(address, weight, metadata))
    return tuple(result)


def _thresholds(config: cluster_pb2.Cluster, where: Where) -> CircuitBreakerThresholds:
    thresholds = config.circuit_breakers.thresholds
    if not thresholds:
        return _DEFAULT_THRESHOLDS
    if len(thresholds) > 1:
        raise (
            where.at("circuit_breakers")
            .at("thresholds")
            .item(1)
            .error("only one set of thresholds (priority DEFAULT) is supported")
        )
    limits = thresholds[0]
    default = _DEFAULT_THRESHOLDS
    return CircuitBreakerThresholds(
        max_connections=wrapped(limits, "max_connections", default.max_connections),
        max_pending_requests=wrapped(limits, "max_pending_requests", default.max_pending_requests),
        max_requests=wrapped(limits, "max_requests", default.max_requests),
        max_retries=wrapped(limits, "max_retries", default.max_retries),
    )


def _protocol_options(config: cluster_pb2.Cluster, where: Where) -> tuple[float | None, bool]:
    """The upstream idle timeout, and whether the cluster speaks HTTP/2 (the ADS cluster)."""
    options_where = where.at("typed_extension_protocol_options")
    typed = config.typed_extension_protocol_options
    if config.HasField("common_http_protocol_options"):
        if typed:
            raise where.at("common_http_protocol_options").error(
                "use either this deprecated field or typed_extension_protocol_options, not both"
            )
        return _common_idle(config.common_http_protocol_options, where), False
    idle: float | None = DEFAULT_IDLE_TIMEOUT
    http2 = False
    for key in sorted(typed):
        here = options_where.key(key)
        if key != UPSTREAM_HTTP_OPTIONS_TYPE:
            raise here.error(f"only {UPSTREAM_HTTP_OPTIONS_TYPE} is supported")
        options = unpack_any(typed[key], frozenset({UPSTREAM_HTTP_OPTIONS_TYPE}), here)
        assert isinstance(options, http_protocol_options_pb2.HttpProtocolOptions)
        http2 = _check_explicit_config(options, here)
        if options.HasField("common_http_protocol_options"):
            idle = _common_idle(options.common_http_protocol_options, here)
    return idle, http2


def _common_idle(options: protocol_pb2.HttpProtocolOptions, where: Where) -> float | None:
    here = where.at("common_http_protocol_options")
    if options.HasField("max_headers_count"):
        raise here.at("max_headers_count").error(
            "is supported on the HTTP connection manager (requests), not on clusters"
        )
    return duration(options, "idle_timeout", here, 3600.0)


def _check_explicit_config(
    options: http_protocol_options_pb2.HttpProtocolOptions, where: Where
) -> bool:
    """True for `http2_protocol_options: {}` (allowed only on the ADS cluster, checked later)."""
    if not options.HasField("explicit_http_config"):
        return False
    here = where.at("explicit_http_config")
    explicit = options.explicit_http_config
    if explicit.HasField("http2_protocol_options"):
        if explicit.http2_protocol_options.ListFields():
            field = explicit.http2_protocol_options.ListFields()[0][0].name
            raise here.at("http2_protocol_options").at(field).error("not supported")
        return True
    if not explicit.HasField("http_protocol_options"):
        raise here.error("explicit_http_config must select http_protocol_options (HTTP/1.1)")
    if explicit.http_protocol_options.ListFields():
        field = explicit.http_protocol_options.ListFields()[0][0].name
        raise (
            here.at("http_protocol_options")
            .at(field)
            .error("upstream HTTP/1.1 options are not supported")
        )
    return False


def _outlier_detection(config: cluster_pb2.Cluster, where: Where) -> OutlierDetection | None:
    """The consecutive-error subset, Envoy's defaults for what is unset."""
    if not config.HasField("outlier_detection"):
        return None
    here = where.at("outlier_detection")
    outlier = config.outlier_detection
    for name in _OFF_ONLY:
        if wrapped(outlier, name, 0) != 0:
            raise here.at(name).error(
                "only 0 is supported: Trellis implements consecutive-error ejection only"
            )
    default = _DEFAULT_OUTLIER
    base = positive_duration(outlier, "base_ejection_time", here, default.base_ejection_time)
    longest = positive_duration(
        outlier, "max_ejection_time", here, max(default.max_ejection_time, base)
    )
    if longest < base:
        raise here.at("max_ejection_time").error(
            "max_ejection_time cannot be smaller than base_ejection_time"
        )
    return OutlierDetection(
        consecutive_5xx=wrapped(outlier, "consecutive_5xx", default.consecutive_5xx),
        consecutive_gateway_failure=wrapped(
            outlier, "consecutive_gateway_failure", default.consecutive_gateway_failure
        ),
        interval=positive_duration(outlier, "interval", here, default.interval),
        base_ejection_time=base,
        max_ejection_time=longest,
        max_ejection_time_jitter=duration(outlier, "max_ejection_time_jitter", here, 0.0) or 0.0,
        always_eject_one_host=wrapped_bool(outlier, "always_eject_one_host", False),
        max_ejection_percent=_percent(outlier, "max_ejection_percent", here),
        enforcing_consecutive_5xx=_percent(outlier, "enforcing_consecutive_5xx", here),
        enforcing_consecutive_gateway_failure=_percent(
            outlier, "enforcing_consecutive_gateway_failure", here
        ),
    )


def _percent(outlier: outlier_detection_pb2.OutlierDetection, name: str, where: Where) -> int:
    value = wrapped(outlier, name, getattr(_DEFAULT_OUTLIER, name))
    if value > 100:
        raise where.at(name).error(f"a percentage must be at most 100, got {value}")
    return value


def _panic_threshold(config: cluster_pb2.Cluster, where: Where) -> float:
    """`common_lb_config.healthy_panic_threshold`, rounded to a whole percent as Envoy does."""
    common = config.common_lb_config
    if not config.HasField("common_lb_config") or not common.HasField("healthy_panic_threshold"):
        return _DEFAULT_PANIC_THRESHOLD
    value = common.healthy_panic_threshold.value
    if not 0.0 <= value <= 100.0:  # also false for NaN
        raise (
            where.at("common_lb_config")
            .at("healthy_panic_threshold")
            .at("value")
            .error(f"a percentage must be between 0 and 100, got {value}")
        )
    return float(math.floor(value + 0.5))
