"""The Envoy message modules a bootstrap may use.

Importing this module loads their descriptors into protobuf's default pool, which
is what lets `google.protobuf.Any` fields (`typed_config`) name these types.
"""

from __future__ import annotations

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

__all__ = [
    "base_pb2",
    "bootstrap_pb2",
    "cluster_pb2",
    "downstream_connections_pb2",
    "file_pb2",
    "http_connection_manager_pb2",
    "http_protocol_options_pb2",
    "http_rbac_pb2",
    "listener_pb2",
    "network_rbac_pb2",
    "opentelemetry_pb2",
    "previous_hosts_pb2",
    "raw_buffer_pb2",
    "rbac_pb2",
    "route_components_pb2",
    "route_pb2",
    "router_pb2",
    "secret_pb2",
    "stream_pb2",
    "tcp_proxy_pb2",
    "tls_inspector_pb2",
    "tls_pb2",
]
