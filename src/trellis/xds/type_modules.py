"""Which generated module defines each extension message a config may name in an `Any`.

`google.protobuf.Any` fields (`typed_config`) can be read only once the message they
name is in protobuf's default pool, which is what importing its `_pb2` module does.
The proxy imports the module of an extension (RBAC, TCP proxy, access loggers,
OpenTelemetry, ...) only when a config names its type, so that a sidecar holds only
the messages its config uses (all of them cost ~0.4 MiB of its memory budget). The
control plane, which builds every kind, imports them all through `trellis.xds.protos`.

A name not listed here is left to the pool: an unknown type is then reported where it
is used, as before.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

_EXT = "envoy.extensions."

# Message full name -> the module that defines it (the messages every proxy needs, the
# connection manager, router and TLS contexts, are listed too: importing them is free).
TYPE_MODULES: Mapping[str, str] = MappingProxyType(
    {
        _EXT + "filters.network.http_connection_manager.v3.HttpConnectionManager": _EXT
        + "filters.network.http_connection_manager.v3.http_connection_manager_pb2",
        _EXT + "filters.network.tcp_proxy.v3.TcpProxy": _EXT
        + "filters.network.tcp_proxy.v3.tcp_proxy_pb2",
        _EXT + "filters.network.rbac.v3.RBAC": _EXT + "filters.network.rbac.v3.rbac_pb2",
        _EXT + "filters.http.rbac.v3.RBAC": _EXT + "filters.http.rbac.v3.rbac_pb2",
        _EXT + "filters.http.router.v3.Router": _EXT + "filters.http.router.v3.router_pb2",
        _EXT + "filters.listener.tls_inspector.v3.TlsInspector": _EXT
        + "filters.listener.tls_inspector.v3.tls_inspector_pb2",
        _EXT + "access_loggers.file.v3.FileAccessLog": _EXT + "access_loggers.file.v3.file_pb2",
        _EXT + "access_loggers.stream.v3.StdoutAccessLog": _EXT
        + "access_loggers.stream.v3.stream_pb2",
        "envoy.config.trace.v3.OpenTelemetryConfig": "envoy.config.trace.v3.opentelemetry_pb2",
        _EXT + "retry.host.previous_hosts.v3.PreviousHostsPredicate": _EXT
        + "retry.host.previous_hosts.v3.previous_hosts_pb2",
        _EXT + "resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig": _EXT
        + "resource_monitors.downstream_connections.v3.downstream_connections_pb2",
        _EXT + "upstreams.http.v3.HttpProtocolOptions": _EXT
        + "upstreams.http.v3.http_protocol_options_pb2",
        _EXT + "transport_sockets.tls.v3.UpstreamTlsContext": _EXT
        + "transport_sockets.tls.v3.tls_pb2",
        _EXT + "transport_sockets.tls.v3.DownstreamTlsContext": _EXT
        + "transport_sockets.tls.v3.tls_pb2",
        _EXT + "transport_sockets.raw_buffer.v3.RawBuffer": _EXT
        + "transport_sockets.raw_buffer.v3.raw_buffer_pb2",
    }
)

_TYPE_KEY = "@type"


def import_type(full_name: str) -> None:
    """Load the module defining the message `full_name` (no-op for other names)."""
    module = TYPE_MODULES.get(full_name)
    if module is not None:
        importlib.import_module(module)


def import_types_named(data: object) -> None:
    """Load the modules of the types decoded YAML/JSON names in its `"@type"` keys,
    before `json_format` parses it (it resolves `Any` types in the default pool)."""
    pending = [data]
    while pending:  # bounded: each value of the decoded document is visited once
        item = pending.pop()
        if isinstance(item, dict):
            type_url = item.get(_TYPE_KEY)
            if isinstance(type_url, str):
                import_type(type_url.rpartition("/")[2])
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
