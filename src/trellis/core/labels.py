"""Which Istio labels a request gets: derived from the node identity and the target."""

from __future__ import annotations

import dataclasses

from trellis.core.config import NodeIdentity, TrafficDirection
from trellis.core.metrics import PeerLabels


def service_from_cluster(cluster_name: str) -> str | None:
    """The service host in an Istio-style cluster name (`outbound|80|v1|cart.ns.svc...`)."""
    parts = cluster_name.split("|")
    if len(parts) == 4 and parts[0] in ("outbound", "inbound") and parts[3]:
        return parts[3]
    return None


def split_service(host: str, trust_domain: str = "cluster.local") -> tuple[str, str]:
    """(name, namespace) of a Kubernetes-style service host; the host itself otherwise."""
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        return parts[0], parts[1]
    return host, "unknown"


def peer_labels(
    node: NodeIdentity,
    direction: TrafficDirection,
    service_host: str,
    *,
    protocol: str = "http",
    security: str = "unknown",
) -> PeerLabels:
    """The labels of a request handled by this proxy.

    Inbound listeners report as the destination, everything else as the source
    (Istio's `reporter`). Principals stay "unknown" until the connection is
    authenticated with mTLS; the peer's workload until peers exchange metadata.
    """
    name, namespace = (
        split_service(service_host, node.trust_domain) if service_host else ("unknown", "unknown")
    )
    service = service_host or "unknown"
    if direction is TrafficDirection.INBOUND:
        return PeerLabels(
            reporter="destination",
            destination_workload=node.workload_name,
            destination_workload_namespace=node.namespace,
            destination_app=node.app,
            destination_version=node.version,
            destination_canonical_service=node.app,
            destination_canonical_revision=node.version if node.version != "unknown" else "latest",
            destination_service=service,
            destination_service_name=name,
            destination_service_namespace=namespace if namespace != "unknown" else node.namespace,
            request_protocol=protocol,
            connection_security_policy="none" if security == "unknown" else security,
        )
    return PeerLabels(
        reporter="source",
        source_workload=node.workload_name,
        source_workload_namespace=node.namespace,
        source_app=node.app,
        source_version=node.version,
        source_canonical_service=node.app,
        source_canonical_revision=node.version if node.version != "unknown" else "latest",
        destination_service=service,
        destination_service_name=name,
        destination_service_namespace=namespace,
        request_protocol=protocol,
        connection_security_policy=security,
    )


def with_peer_identity(labels: PeerLabels, principal: str, own_principal: str) -> PeerLabels:
    """`labels` for a connection whose peer proved `principal` over mTLS: the client's
    identity for the destination reporter (and `mutual_tls`), the server's for the
    source reporter (whose security policy Istio leaves `unknown`)."""
    if labels.reporter == "destination":
        return dataclasses.replace(
            labels,
            source_principal=principal,
            destination_principal=own_principal,
            connection_security_policy="mutual_tls",
        )
    return dataclasses.replace(
        labels, source_principal=own_principal, destination_principal=principal
    )
