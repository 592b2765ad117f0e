"""Endpoints (EDS): a endpoint_pb2.ClusterLoadAssignment for every EDS cluster, possibly empty.

A service port's endpoints are the WorkloadEntries its ServiceEntry's
`workloadSelector` selects (same namespace), or its inline `endpoints`; a
subset keeps those carrying all of the subset's labels. The port is the
workload's `ports[<port name>]`, else the service port's `targetPort`, else
its number; the weight is the workload's `weight` (0 means 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from trellis.xds.mesh.build import socket_address, u32
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


def _assignment(name: str, instances: Iterable[Instance]) -> endpoint_pb2.ClusterLoadAssignment:
    return load_assignment(
        name, ((socket_address(item.address, item.port), item.weight) for item in instances)
    )


def outbound_assignments(registry: Registry) -> Iterator[endpoint_pb2.ClusterLoadAssignment]:
    """The endpoints of every outbound cluster `clusters.outbound_clusters` builds."""
    for service in registry.services:
        rule = registry.destination_rule(service)
        for port in service.ports:
            instances = registry.instances(service, port)
            yield _assignment(outbound_cluster(service.host, port.number), instances)
            if rule is None:
                continue
            for subset in rule.spec.subsets:
                name = outbound_cluster(service.host, port.number, subset.name)
                yield _assignment(name, subset_instances(instances, subset.labels))
