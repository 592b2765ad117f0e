"""Control-plane translation: Istio networking config -> Envoy xDS resources per proxy.

Control-plane only: it reads `trellis.api` (pydantic) models, so the proxy
process must never import this package.
"""

from __future__ import annotations

from trellis.xds.mesh.access_log import LogEncoding, MeshAccessLog
from trellis.xds.mesh.errors import InconsistentSnapshotError, UnsupportedConfigError
from trellis.xds.mesh.grpc import GrpcTranslator, is_grpc_node, translate_grpc
from trellis.xds.mesh.model import (
    CaptureMode,
    MeshConfig,
    MeshTls,
    ProxyIdentity,
    TranslateOptions,
)
from trellis.xds.mesh.names import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    RESOURCE_TYPES,
    ROUTE_TYPE,
    SECRET_TYPE,
    inbound_cluster,
    outbound_cluster,
    parse_cluster,
)
from trellis.xds.mesh.translate import (
    ProxyResources,
    Resources,
    SharedOutbound,
    Translator,
    check_consistent,
    referenced_names,
    to_dicts,
    translate,
)

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "LISTENER_TYPE",
    "RESOURCE_TYPES",
    "ROUTE_TYPE",
    "SECRET_TYPE",
    "CaptureMode",
    "GrpcTranslator",
    "InconsistentSnapshotError",
    "LogEncoding",
    "MeshAccessLog",
    "MeshConfig",
    "MeshTls",
    "ProxyIdentity",
    "ProxyResources",
    "Resources",
    "SharedOutbound",
    "TranslateOptions",
    "Translator",
    "UnsupportedConfigError",
    "check_consistent",
    "inbound_cluster",
    "is_grpc_node",
    "outbound_cluster",
    "parse_cluster",
    "referenced_names",
    "to_dicts",
    "translate",
    "translate_grpc",
]
