"""Mesh-wide tracing (Istio's `meshConfig.defaultConfig.tracing` with an
OpenTelemetry provider): every sidecar connection manager records spans and
sends them over OTLP/gRPC to one collector.

The control plane gives each proxy a STATIC cluster for the collector
(`COLLECTOR_CLUSTER`) and sets `tracing` on every HTTP connection
manager of its listeners: `envoy.tracers.opentelemetry` with that cluster and
the mesh's sampling percentage (Istio's default is 1%; the demo uses 100%).
Telemetry resources change the percentage, or turn span reporting off, per
mesh, namespace, workload and side (`trellis.xds.mesh.telemetry`); the
listeners are built with each side's `tracing` (`ProxyTracing`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from trellis.core.peer_metadata import canonical_service
from trellis.errors import ConfigError
from trellis.xds.mesh.build import duration, pack, socket_address
from trellis.xds.protos import (
    cluster_pb2,
    http_connection_manager_pb2,
    opentelemetry_pb2,
)

if TYPE_CHECKING:
    from trellis.xds.mesh.model import ProxyIdentity

COLLECTOR_CLUSTER = "trellis-otel-collector"
OPENTELEMETRY_TRACER = "envoy.tracers.opentelemetry"
DEFAULT_SAMPLING = 1.0  # Istio's mesh default
_EXPORT_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 5.0
_MAX_PORT = 65535


UNIX_PREFIX = "unix:"


@dataclass(frozen=True, slots=True)
class MeshTracing:
    """Where every sidecar sends spans (an IP and port of an OTLP/gRPC collector, or
    with `path` a Unix socket, e.g. the control plane's own) and the percentage of new
    traces it samples."""

    host: str
    port: int
    sampling: float = DEFAULT_SAMPLING
    path: str | None = None
    """A Unix socket instead of host and port: it reaches across network namespaces."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sampling <= 100.0:
            raise ConfigError(
                f"must be between 0 and 100, got {self.sampling}", path="tracing.sampling"
            )
        if self.path is not None:
            if not self.path.startswith("/"):
                raise ConfigError(
                    f"the collector's socket path must be absolute, got {self.path!r}",
                    path="tracing.address",
                )
            return
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ConfigError(
                f"the collector address must be an IP address, got {self.host!r}",
                path="tracing.host",
            ) from None
        if not 1 <= self.port <= _MAX_PORT:
            raise ConfigError(f"must be 1-{_MAX_PORT}, got {self.port}", path="tracing.port")

    @classmethod
    def parse(cls, address: str, sampling: float = DEFAULT_SAMPLING) -> MeshTracing:
        """From `HOST:PORT` (`[V6]:PORT` for IPv6) or `unix:PATH`."""
        if address.startswith(UNIX_PREFIX):
            return cls("", 0, sampling, address[len(UNIX_PREFIX) :])
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"expected HOST:PORT, got {address!r}", path="tracing.address")
        return cls(host.removeprefix("[").removesuffix("]"), int(port), sampling)


def collector_cluster(settings: MeshTracing) -> cluster_pb2.Cluster:
    """The collector's STATIC cluster. The proxy's span exporter speaks gRPC (HTTP/2)
    to it by itself, so the cluster carries no HTTP/2 protocol options (which
    `trellis proxy` keeps for the ADS cluster)."""
    cluster = cluster_pb2.Cluster(
        name=COLLECTOR_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(_CONNECT_TIMEOUT),
    )
    # (built here, not with `endpoints.load_assignment`: that module needs the model)
    assignment = cluster.load_assignment
    assignment.cluster_name = COLLECTOR_CLUSTER
    endpoint = assignment.endpoints.add().lb_endpoints.add()
    if settings.path is not None:
        endpoint.endpoint.address.pipe.path = settings.path
    else:
        endpoint.endpoint.address.CopyFrom(socket_address(settings.host, settings.port))
    return cluster


def tracing_service_name(proxy: ProxyIdentity) -> str:
    """Istio's span service name: `<canonical service>.<namespace>` (the canonical
    service from its label, else `app`, else the workload's name)."""
    return f"{canonical_service(proxy.labels, proxy.workload_name)}.{proxy.namespace}"


def hcm_tracing(
    settings: MeshTracing, service_name: str = "", sampling: float | None = None
) -> http_connection_manager_pb2.HttpConnectionManager.Tracing:
    """The `tracing` of a sidecar connection manager (`sampling`: the percentage of new
    traces sampled, default the mesh's)."""
    provider = opentelemetry_pb2.OpenTelemetryConfig(service_name=service_name)
    provider.grpc_service.envoy_grpc.cluster_name = COLLECTOR_CLUSTER
    provider.grpc_service.timeout.CopyFrom(duration(_EXPORT_TIMEOUT))
    tracing = http_connection_manager_pb2.HttpConnectionManager.Tracing()
    tracing.provider.name = OPENTELEMETRY_TRACER
    tracing.provider.typed_config.CopyFrom(pack(provider))
    tracing.random_sampling.value = settings.sampling if sampling is None else sampling
    return tracing


Tracing: TypeAlias = http_connection_manager_pb2.HttpConnectionManager.Tracing


@dataclass(frozen=True, slots=True)
class ProxyTracing:
    """One proxy's tracing: of its outbound connection manager (Telemetry's CLIENT side)
    and of its inbound ones (SERVER); None: that side does not trace."""

    outbound: Tracing | None = None
    inbound: Tracing | None = None


NO_TRACING = ProxyTracing()
