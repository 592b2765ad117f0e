"""An HTTP connection manager's `tracing`: sampling and the OpenTelemetry provider.

Envoy's `HttpConnectionManager.Tracing` with `provider` set to
`envoy.tracers.opentelemetry` (`envoy.config.trace.v3.OpenTelemetryConfig`):
OTLP over gRPC to an `envoy_grpc` cluster, or OTLP/HTTP (protobuf) to the
`http_uri` of an `http_service`. Which fields are accepted at all is
`trellis.xds.supported`'s business; this checks what the accepted ones say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)

from trellis.core.tracing import TracingConfig, TracingProvider, check_percent
from trellis.xds.convert import duration, wrapped, wrapped_bool
from trellis.xds.supported import OPENTELEMETRY_TYPE, unpack_any
from trellis.xds.where import Where

if TYPE_CHECKING:  # loaded when a config names it (trellis.xds.type_modules)
    from envoy.config.trace.v3 import opentelemetry_pb2

DEFAULT_EXPORT_TIMEOUT = 5.0
DEFAULT_MAX_PATH_TAG_LENGTH = 256  # Envoy's default
_PERCENTS = ("random_sampling", "client_sampling", "overall_sampling")


def tracing(
    config: http_connection_manager_pb2.HttpConnectionManager.Tracing,
    clusters: frozenset[str] | None,
    where: Where,
) -> TracingConfig:
    """Convert `tracing`; the provider is required (Trellis has no default tracer)."""
    if not config.HasField("provider"):
        raise where.at("provider").error(
            "provider is required (envoy.tracers.opentelemetry with an OpenTelemetryConfig)"
        )
    here = where.at("provider").at("typed_config")
    if not config.provider.HasField("typed_config"):
        raise here.error("typed_config is required")
    inner = cast(
        "opentelemetry_pb2.OpenTelemetryConfig",
        unpack_any(config.provider.typed_config, frozenset({OPENTELEMETRY_TYPE}), here),
    )
    percents = {}
    for name in _PERCENTS:
        value = getattr(config, name).value if config.HasField(name) else 100.0
        try:
            percents[name] = check_percent(value)
        except ValueError as exc:
            raise where.at(name).at("value").error(str(exc)) from None
    max_path = wrapped(config, "max_path_tag_length", DEFAULT_MAX_PATH_TAG_LENGTH)
    if max_path < 1:
        raise where.at("max_path_tag_length").error(f"must be at least 1, got {max_path}")
    return TracingConfig(
        provider=_provider(inner, clusters, here),
        spawn_upstream_span=wrapped_bool(config, "spawn_upstream_span", False),
        max_path_tag_length=max_path,
        **percents,
    )


def _provider(
    config: opentelemetry_pb2.OpenTelemetryConfig, clusters: frozenset[str] | None, where: Where
) -> TracingProvider:
    has_grpc = config.HasField("grpc_service")
    has_http = config.HasField("http_service")
    if has_grpc == has_http:
        raise where.error("exactly one of grpc_service and http_service is required")
    if has_grpc:
        here = where.at("grpc_service")
        if not config.grpc_service.HasField("envoy_grpc"):
            raise here.at("envoy_grpc").error("envoy_grpc is required")
        cluster = config.grpc_service.envoy_grpc.cluster_name
        _check_cluster(cluster, clusters, here.at("envoy_grpc").at("cluster_name"))
        timeout = duration(config.grpc_service, "timeout", here, DEFAULT_EXPORT_TIMEOUT)
        return TracingProvider(
            cluster=cluster,
            grpc=True,
            timeout=timeout or DEFAULT_EXPORT_TIMEOUT,
            service_name=config.service_name,
        )
    here = where.at("http_service").at("http_uri")
    uri = config.http_service.http_uri
    from urllib.parse import urlsplit  # noqa: PLC0415 - only OTLP/HTTP: the sidecar saves 0.35 MiB

    parts = urlsplit(uri.uri)
    if parts.scheme != "http" or not parts.netloc:
        raise here.at("uri").error(
            f"must be an http:// URL such as http://collector:4318/v1/traces, got {uri.uri!r}"
        )
    _check_cluster(uri.cluster, clusters, here.at("cluster"))
    timeout = duration(uri, "timeout", here, DEFAULT_EXPORT_TIMEOUT)
    path = parts.path or "/v1/traces"
    return TracingProvider(
        cluster=uri.cluster,
        grpc=False,
        path=path + (f"?{parts.query}" if parts.query else ""),
        authority=parts.netloc,
        timeout=timeout or DEFAULT_EXPORT_TIMEOUT,
        service_name=config.service_name,
    )


def _check_cluster(name: str, clusters: frozenset[str] | None, where: Where) -> None:
    if not name:
        raise where.error("the collector's cluster is required")
    if clusters is not None and name not in clusters:
        raise where.error(f"unknown cluster {name!r}")
