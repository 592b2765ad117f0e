"""Who a proxy is: its bootstrap `node`, read with Istio's node metadata keys.

`WORKLOAD_NAME`, `NAMESPACE`, `SERVICE_ACCOUNT`, `TRUST_DOMAIN`, `CLUSTER_ID`
and `NAME` are strings; `LABELS` (the workload's labels) and `ANNOTATIONS`
(its annotations) are mappings of strings. The canonical service and revision
follow Istio's injector: `service.istio.io/canonical-name` (`-revision`), else
`app.kubernetes.io/name` (`version`), else `app` (`version`), else the workload
name ("latest"). The annotations `prometheus.io/port` and `prometheus.io/path`
name the application's metrics endpoint, which the sidecar merges into its own
(Istio's metrics merging); `prometheus.io/scrape: "false"` turns that off.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2 as core_base_pb2
from google.protobuf import struct_pb2

from trellis.core.config import AppMetrics, NodeIdentity
from trellis.core.peer_metadata import canonical_service
from trellis.xds.where import Where

DEFAULT_TRUST_DOMAIN = "cluster.local"
UNKNOWN = "unknown"
PORT_ANNOTATION = "prometheus.io/port"
PATH_ANNOTATION = "prometheus.io/path"
SCRAPE_ANNOTATION = "prometheus.io/scrape"


def node_identity(node: core_base_pb2.Node, where: Where) -> NodeIdentity:
    """Read the node id, cluster and Istio-style metadata keys."""
    metadata = where.at("metadata")
    fields = node.metadata.fields
    labels = _mapping(fields, "LABELS", metadata)
    annotations = _mapping(fields, "ANNOTATIONS", metadata)
    workload = _text(fields, "WORKLOAD_NAME", metadata, UNKNOWN)
    app = labels.get("app") or UNKNOWN
    version = labels.get("version") or UNKNOWN
    service = canonical_service(labels, workload)
    canonical_revision = (
        labels.get("service.istio.io/canonical-revision")
        or labels.get("app.kubernetes.io/version")
        or labels.get("version")
        or "latest"
    )
    return NodeIdentity(
        id=node.id,
        cluster=node.cluster,
        workload_name=workload,
        namespace=_text(fields, "NAMESPACE", metadata, UNKNOWN),
        service_account=_text(fields, "SERVICE_ACCOUNT", metadata, UNKNOWN),
        app=app,
        version=version,
        trust_domain=_text(fields, "TRUST_DOMAIN", metadata, DEFAULT_TRUST_DOMAIN),
        canonical_service=service,
        canonical_revision=canonical_revision,
        cluster_id=_text(fields, "CLUSTER_ID", metadata, UNKNOWN),
        instance=_text(fields, "NAME", metadata, ""),
        app_metrics=app_metrics(annotations, metadata.key("ANNOTATIONS")),
    )


def app_metrics(annotations: dict[str, str], where: Where) -> AppMetrics | None:
    """The application's metrics endpoint its annotations declare, if any."""
    port_text = annotations.get(PORT_ANNOTATION)
    if port_text is None or annotations.get(SCRAPE_ANNOTATION, "true").lower() == "false":
        return None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise where.key(PORT_ANNOTATION).error(f"expected a port 1-65535, got {port_text!r}")
    path = annotations.get(PATH_ANNOTATION) or "/metrics"
    if not path.startswith("/") or any(c in path for c in " \r\n"):
        raise where.key(PATH_ANNOTATION).error(f"expected a path starting with '/', got {path!r}")
    return AppMetrics(int(port_text), path)


def _mapping(fields: Mapping[str, struct_pb2.Value], key: str, where: Where) -> dict[str, str]:
    if key not in fields:
        return {}
    value = fields[key]
    if value.WhichOneof("kind") != "struct_value":
        raise where.key(key).error(f"{key} must be a mapping")
    inner = value.struct_value.fields
    return {name: _text(inner, name, where.key(key), "") for name in inner}


def _text(fields: Mapping[str, struct_pb2.Value], key: str, where: Where, default: str) -> str:
    if key not in fields:
        return default
    value = fields[key]
    if value.WhichOneof("kind") != "string_value":
        raise where.key(key).error(f"{key} must be a string")
    return value.string_value or default
