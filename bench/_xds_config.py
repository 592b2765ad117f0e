"""The mesh config the xDS benchmark stores, and the changes it applies, as Istio documents.

`services` ServiceEntries in one namespace, each selecting one WorkloadEntry;
every `vs_every`-th service also has a VirtualService splitting its traffic
between itself and the next service. Everything is a plain dict, exactly what
`trellis apply -f` would read from YAML; nothing here touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trellis.xds import vhds

NAMESPACE = "bench"
PORT = 8080
NETWORKING = "networking.istio.io/v1"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
VIRTUAL_HOST_TYPE = vhds.VIRTUAL_HOST_TYPE
OUTBOUND_ROUTE = "outbound"  # the RouteConfiguration every explicit-mode proxy gets

Document = dict[str, Any]
Watch = tuple[tuple[str, str], ...]
"""(type URL, resource name) pairs a client must see changed before it counts as updated."""


@dataclass(frozen=True, slots=True)
class Change:
    """One measured change: the documents to apply and what every proxy must receive."""

    kind: str  # "vs-weight" or "new-service"
    documents: tuple[Document, ...]
    watch: Watch
    description: str


def service_name(index: int) -> str:
    return f"svc-{index:04d}"


def host(name: str) -> str:
    return f"{name}.{NAMESPACE}.svc.cluster.local"


def outbound_cluster(name: str) -> str:
    """Istio's cluster name for the service's port, no subset."""
    return f"outbound|{PORT}||{host(name)}"


def virtual_host(name: str) -> str:
    """The name the translator gives the service's virtual host in `outbound`."""
    return f"{host(name)}:{PORT}"


def route_watch(name: str, *, use_vhds: bool) -> tuple[str, str]:
    """What changes in a proxy's routes when service `name`'s routes change: its
    virtual host as a VHDS resource, or else the whole `outbound` configuration."""
    if use_vhds:
        return (VIRTUAL_HOST_TYPE, vhds.resource_name(OUTBOUND_ROUTE, virtual_host(name)))
    return (ROUTE_TYPE, OUTBOUND_ROUTE)


def workload_name(index: int) -> str:
    return f"{service_name(index)}-0"


def workload_address(index: int) -> str:
    """A unique 10.x.y.z address per workload (never contacted)."""
    n = index + 1
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def _meta(name: str) -> dict[str, str]:
    return {"name": name, "namespace": NAMESPACE}


def service_entry(name: str) -> Document:
    return {
        "apiVersion": NETWORKING,
        "kind": "ServiceEntry",
        "metadata": _meta(name),
        "spec": {
            "hosts": [host(name)],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": PORT, "name": "http", "protocol": "HTTP"}],
            "workloadSelector": {"labels": {"app": name}},
        },
    }


def workload_entry(name: str, workload: str, address: str) -> Document:
    return {
        "apiVersion": NETWORKING,
        "kind": "WorkloadEntry",
        "metadata": _meta(workload),
        "spec": {
            "address": address,
            "labels": {"app": name, "version": "v1"},
            "serviceAccount": name,
        },
    }


def virtual_service(name: str, other: str, weight: int) -> Document:
    """`weight` percent to `name`, the rest to `other`."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight {weight} is not a percentage")
    return {
        "apiVersion": NETWORKING,
        "kind": "VirtualService",
        "metadata": _meta(name),
        "spec": {
            "hosts": [host(name)],
            "http": [
                {
                    "name": "split",
                    "route": [
                        {"destination": {"host": host(name)}, "weight": weight},
                        {"destination": {"host": host(other)}, "weight": 100 - weight},
                    ],
                    "timeout": "5s",
                }
            ],
        },
    }


def split_services(services: int, vs_every: int) -> list[int]:
    """Indexes of the services that have a VirtualService (at least one)."""
    if services < 2:
        raise ValueError("the benchmark needs at least 2 services")
    return list(range(0, services, max(1, vs_every))) or [0]


def mesh(services: int, vs_every: int = 10, weight: int = 90) -> list[Document]:
    """The stored config: ServiceEntry + WorkloadEntry per service, some VirtualServices."""
    docs: list[Document] = []
    for index in range(services):
        name = service_name(index)
        docs.append(service_entry(name))
        docs.append(workload_entry(name, workload_name(index), workload_address(index)))
    for index in split_services(services, vs_every):
        docs.append(
            virtual_service(service_name(index), service_name((index + 1) % services), weight)
        )
    return docs


def weight_for(round_no: int) -> int:
    """A weight that differs from the stored 90 and from the previous round's."""
    return 80 - (round_no % 40)


def weight_change(services: int, round_no: int, *, use_vhds: bool = False) -> Change:
    """Shift the split of the first VirtualService: only its routes change (with VHDS:
    one virtual host)."""
    name, other = service_name(0), service_name(1 % services)
    weight = weight_for(round_no)
    return Change(
        kind="vs-weight",
        documents=(virtual_service(name, other, weight),),
        watch=(route_watch(name, use_vhds=use_vhds),),
        description=f"VirtualService {NAMESPACE}/{name}: weights {weight}/{100 - weight}",
    )


def new_service_name(round_no: int) -> str:
    return f"new-{round_no:03d}"


def new_service(services: int, round_no: int, *, use_vhds: bool = False) -> Change:
    """A new ServiceEntry with its WorkloadEntry: a cluster, endpoints and a virtual host
    (with VHDS: that one new virtual host, else the whole `outbound` configuration)."""
    name = new_service_name(round_no)
    index = services + round_no
    return Change(
        kind="new-service",
        documents=(
            service_entry(name),
            workload_entry(name, f"{name}-0", workload_address(index)),
        ),
        watch=(
            (CLUSTER_TYPE, outbound_cluster(name)),
            (ENDPOINT_TYPE, outbound_cluster(name)),
            route_watch(name, use_vhds=use_vhds),
        ),
        description=f"ServiceEntry + WorkloadEntry {NAMESPACE}/{name}",
    )


def node_metadata(index: int, services: int) -> dict[str, Any]:
    """Node metadata of simulated proxy `index`: the sidecar of one service's workload.

    Proxies beyond the number of services have no WorkloadEntry (outbound only).
    """
    if index < services:
        name = service_name(index)
        return {
            "WORKLOAD_NAME": workload_name(index),
            "NAMESPACE": NAMESPACE,
            "SERVICE_ACCOUNT": name,
            "LABELS": {"app": name, "version": "v1"},
        }
    return {"WORKLOAD_NAME": f"client-{index}", "NAMESPACE": NAMESPACE}


def node_id(index: int) -> str:
    return f"sidecar~bench~proxy-{index:04d}.{NAMESPACE}"
