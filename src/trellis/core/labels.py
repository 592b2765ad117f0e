"""Which Istio labels a request gets: from the node identity, the target and the peer."""

from __future__ import annotations

import dataclasses

from trellis.core.config import NodeIdentity, TrafficDirection
from trellis.core.metrics import PeerLabels
from trellis.core.peer_metadata import UNKNOWN, UNKNOWN_PEER, WorkloadMetadata

DNS_DOMAIN = "cluster.local"


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


def qualify_service(host: str, namespace: str) -> str:
    """A service host as Istio reports it: `name` and `name.NAMESPACE` (the short forms a
    client in `namespace` may use) and `name.ns.svc` become the FQDN
    `name.ns.svc.cluster.local`; anything else (an FQDN, an IP, an outside name) stays."""
    if not host or UNKNOWN in (host, namespace):
        return host
    parts = host.split(".")
    if len(parts) == 1 and not host[0].isdigit() and ":" not in host:
        return f"{host}.{namespace}.svc.{DNS_DOMAIN}"
    if len(parts) == 2 and parts[1] == namespace:
        return f"{host}.svc.{DNS_DOMAIN}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.{DNS_DOMAIN}"
    return host


def peer_labels(
    node: NodeIdentity,
    direction: TrafficDirection,
    service_host: str,
    *,
    protocol: str = "http",
    security: str = "unknown",
    peer: WorkloadMetadata | None = None,
) -> PeerLabels:
    """The labels of a request handled by this proxy.

    Inbound listeners report as the destination, everything else as the source
    (Istio's `reporter`). This proxy's own workload fills one side; the peer's
    workload (`peer`, from the metadata exchange) the other, "unknown" without
    it. Principals stay "unknown" until the connection is authenticated with
    mTLS (`with_peer_identity`).
    """
    inbound = direction is TrafficDirection.INBOUND
    if inbound:
        service_host = qualify_service(service_host, node.namespace)
    name, namespace = (
        split_service(service_host, node.trust_domain) if service_host else ("unknown", "unknown")
    )
    service = service_host or "unknown"
    other = peer if peer is not None else UNKNOWN_PEER
    if inbound:
        return PeerLabels(
            reporter="destination",
            source_workload=other.workload_name,
            source_canonical_service=other.canonical_service,
            source_canonical_revision=other.canonical_revision,
            source_workload_namespace=other.namespace,
            source_app=other.app,
            source_version=other.version,
            source_cluster=other.cluster_id,
            destination_workload=node.workload_name,
            destination_workload_namespace=node.namespace,
            destination_app=node.app,
            destination_version=node.version,
            destination_canonical_service=node.canonical_service,
            destination_canonical_revision=node.canonical_revision,
            destination_service=service,
            destination_service_name=name,
            destination_service_namespace=namespace if namespace != "unknown" else node.namespace,
            destination_cluster=node.cluster_id,
            request_protocol=protocol,
            connection_security_policy="none" if security == "unknown" else security,
        )
    return PeerLabels(
        reporter="source",
        source_workload=node.workload_name,
        source_canonical_service=node.canonical_service,
        source_canonical_revision=node.canonical_revision,
        source_workload_namespace=node.namespace,
        source_app=node.app,
        source_version=node.version,
        source_cluster=node.cluster_id,
        destination_workload=other.workload_name,
        destination_workload_namespace=other.namespace,
        destination_app=other.app,
        destination_version=other.version,
        destination_canonical_service=other.canonical_service,
        destination_canonical_revision=other.canonical_revision,
        destination_service=service,
        destination_service_name=name,
        destination_service_namespace=namespace,
        destination_cluster=other.cluster_id,
        request_protocol=protocol,
        connection_security_policy=security,
    )


def principal_namespace(principal: str) -> str:
    """The namespace in a SPIFFE ID `spiffe://TD/ns/NS/sa/SA`; "unknown" otherwise."""
    parts = principal.split("/")
    if len(parts) == 7 and parts[0] == "spiffe:" and parts[3] == "ns" and parts[5] == "sa":
        return parts[4] or UNKNOWN
    return UNKNOWN


def with_peer_identity(labels: PeerLabels, principal: str, own_principal: str) -> PeerLabels:
    """`labels` for a connection whose peer proved `principal` over mTLS: the client's
    identity for the destination reporter (and `mutual_tls`), the server's for the
    source reporter (whose security policy Istio leaves `unknown`).

    A peer that did not tell its workload (TCP, or a client without the metadata
    exchange) still has its namespace in its principal: that fills the peer's
    `*_workload_namespace`.
    """
    if labels.reporter == "destination":
        namespace = labels.source_workload_namespace
        return dataclasses.replace(
            labels,
            source_principal=principal,
            destination_principal=own_principal,
            connection_security_policy="mutual_tls",
            source_workload_namespace=(
                principal_namespace(principal) if namespace == UNKNOWN else namespace
            ),
        )
    namespace = labels.destination_workload_namespace
    return dataclasses.replace(
        labels,
        source_principal=own_principal,
        destination_principal=principal,
        destination_workload_namespace=(
            principal_namespace(principal) if namespace == UNKNOWN else namespace
        ),
    )
