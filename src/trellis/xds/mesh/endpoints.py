"""Endpoints (EDS): a endpoint_pb2.ClusterLoadAssignment for every EDS cluster, possibly empty.

A service port's endpoints are the WorkloadEntries its ServiceEntry's
`workloadSelector` selects (same namespace), or its inline `endpoints`; a
subset keeps those carrying all of the subset's labels. The port is the
workload's `ports[<port name>]`, else the service port's `targetPort`, else
its number; the weight is the workload's `weight` (0 means 1). With mesh
mTLS, an endpoint whose sidecar takes mTLS carries the metadata
`envoy.transport_socket_match: {tlsMode: istio}` (`trellis.xds.mesh.mtls`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from trellis.xds.mesh.build import socket_address, u32
from trellis.xds.mesh.mtls import AutoMtls, mark_endpoint
from trellis.xds.mesh.names import outbound_cluster
from trellis.xds.mesh.registry import Instance, Registry, subset_instances


def load_assignment(
    name: str, endpoints: Iterable[tuple[address_pb2.Address, int]]
) -> endpoint_pb2.ClusterLoadAssignment:
    """One locality holding `(address, weight)` endpoints; no locality when there are none."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=address),
            load_balancing_weight=u32(weight),
        )
        for address, weight in endpoints
    ]
    if lb_endpoints:
        assignment.endpoints.add().lb_endpoints.extend(lb_endpoints)
    return assignment


def _assignment(
    name: str, instances: Sequence[Instance], mtls: AutoMtls | None
) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = load_assignment(
        name, ((socket_address(item.address, item.port), item.weight) for item in instances)
    )
    if mtls is not None and instances:
        for item, endpoint in zip(instances, assignment.endpoints[0].lb_endpoints, strict=True):
            if mtls.accepts(item):
                mark_endpoint(endpoint.metadata)
    return assignment


def outbound_assignments(
    registry: Registry, mtls: AutoMtls | None = None
) -> Iterator[endpoint_pb2.ClusterLoadAssignment]:
    """The endpoints of every outbound cluster `clusters.outbound_clusters` builds; with
    `mtls`, those with a sidecar taking mTLS are marked for its `tlsMode-istio` match."""
    for service in registry.services:
        rule = registry.destination_rule(service)
        for port in service.ports:
            instances = registry.instances(service, port)
            yield _assignment(outbound_cluster(service.host, port.number), instances, mtls)
            if rule is None:
                continue
            for subset in rule.spec.subsets:
                name = outbound_cluster(service.host, port.number, subset.name)
                yield _assignment(name, subset_instances(instances, subset.labels), mtls)
