"""The mesh-wide access log (Istio's `meshConfig.accessLogFile`): one line per request
or TCP connection on every sidecar listener, to a file or stdout.

JSON lines carry Istio's default JSON fields plus what Trellis adds: the
trace id (Envoy's `%TRACE_ID%`, when the connection manager traces), the peer
identities and the RBAC decision with the policy and rule that made it (`no
ALLOW policy matched` when none did). TEXT uses Envoy's
default format. Every HTTP connection manager and TCP proxy the translation
builds gets it (`trellis.xds.mesh.listeners`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from google.protobuf import struct_pb2

from trellis.xds.mesh.build import pack

FILE_LOGGER = "envoy.access_loggers.file"
_RBAC = "%DYNAMIC_METADATA(envoy.filters.http.rbac:"
_NETWORK_RBAC = "%DYNAMIC_METADATA(envoy.filters.network.rbac:"

# Istio's default JSON access log fields (its `EnvoyJSONLogFormatIstio`), in order, and the
# trace id (which Istio's default lacks).
_ISTIO_JSON = (
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("trace_id", "%TRACE_ID%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("downstream_peer_principal", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("upstream_peer_principal", "%UPSTREAM_PEER_URI_SAN%"),
)
_HTTP_AUTHZ = (
    ("authz", _RBAC + "enforced_engine_result)%"),
    ("authz_policy", _RBAC + "enforced_effective_policy_id)%"),
)
_TCP_AUTHZ = (
    ("authz", _NETWORK_RBAC + "enforced_engine_result)%"),
    ("authz_policy", _NETWORK_RBAC + "enforced_effective_policy_id)%"),
)


class LogEncoding(enum.Enum):
    """Istio's `meshConfig.accessLogEncoding`."""

    JSON = "JSON"
    TEXT = "TEXT"


@dataclass(frozen=True, slots=True)
class MeshAccessLog:
    """Where every sidecar writes its access log (`/dev/stdout` for its standard output)."""

    path: str = "/dev/stdout"
    encoding: LogEncoding = LogEncoding.JSON


def _logger(settings: MeshAccessLog, tcp: bool) -> accesslog_pb2.AccessLog:
    config = file_pb2.FileAccessLog(path=settings.path)
    if settings.encoding is LogEncoding.JSON:
        fields = (*_ISTIO_JSON, *(_TCP_AUTHZ if tcp else _HTTP_AUTHZ))
        json_format = struct_pb2.Struct()
        json_format.update(dict(fields))
        config.log_format.CopyFrom(
            substitution_format_string_pb2.SubstitutionFormatString(json_format=json_format)
        )
    return accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=pack(config))


@dataclass(frozen=True, slots=True)
class ListenerLogs:
    """The access logs every connection manager (`http`) and TCP proxy (`tcp`) gets."""

    http: tuple[accesslog_pb2.AccessLog, ...] = ()
    tcp: tuple[accesslog_pb2.AccessLog, ...] = ()


NO_LOGS = ListenerLogs()


@dataclass(frozen=True, slots=True)
class ProxyLogs:
    """One proxy's access logs: on its outbound listener (Telemetry's CLIENT side) and on
    its inbound listeners (SERVER)."""

    outbound: ListenerLogs = NO_LOGS
    inbound: ListenerLogs = NO_LOGS

    @classmethod
    def both(cls, logs: ListenerLogs) -> ProxyLogs:
        return cls(logs, logs)


NO_PROXY_LOGS = ProxyLogs()


def listener_logs(settings: MeshAccessLog | None) -> ListenerLogs:
    """The loggers for `settings` (none without), built once per mesh config."""
    if settings is None:
        return NO_LOGS
    return ListenerLogs(http=(_logger(settings, tcp=False),), tcp=(_logger(settings, tcp=True),))
