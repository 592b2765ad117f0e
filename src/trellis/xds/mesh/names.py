"""Names shared by the control plane and the proxies: type URLs and Istio's cluster names.

Cluster names follow Istio's `BuildSubsetKey`: `outbound|PORT|SUBSET|HOST` for a
service port (the subset part empty for the whole service) and `inbound|PORT||`
for a workload's own port. The names are what `proxy-config`, access logs and
metrics show, so an Istio user reads them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

_TYPE_PREFIX = "type.googleapis.com/"
LISTENER_TYPE = _TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = _TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = _TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = _TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
# In the order a management server sends them (SDS first, CDS before EDS, LDS before RDS).
RESOURCE_TYPES = (SECRET_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)

OUTBOUND_ROUTE_NAME = "outbound"
DEFAULT_ROUTE_NAME = "default"  # Istio's name for the route built without a VirtualService


class Direction(Enum):
    """Which side of the workload a cluster serves."""

    OUTBOUND = "outbound"
    INBOUND = "inbound"


@dataclass(frozen=True, slots=True)
class ClusterKey:
    """The parts of an Istio cluster name."""

    direction: Direction
    port: int
    subset: str = ""
    host: str = ""

    def __str__(self) -> str:
        return f"{self.direction.value}|{self.port}|{self.subset}|{self.host}"


def outbound_cluster(host: str, port: int, subset: str = "") -> str:
    """`outbound|PORT|SUBSET|HOST`, e.g. `outbound|9080|v1|reviews.default.svc.cluster.local`."""
    return str(ClusterKey(Direction.OUTBOUND, port, subset, host))


def inbound_cluster(port: int) -> str:
    """`inbound|PORT||`: the workload's own port, reached on the application's address."""
    return str(ClusterKey(Direction.INBOUND, port))


def parse_cluster(name: str) -> ClusterKey | None:
    """The parts of an Istio-style cluster name, or None if `name` is not one."""
    parts = name.split("|")
    if len(parts) != 4:
        return None
    direction, port, subset, host = parts
    if direction not in {"outbound", "inbound"} or not port.isdigit():
        return None
    key = ClusterKey(Direction(direction), int(port), subset, host)
    return key if str(key) == name else None


def inbound_listener(port: int) -> str:
    """The explicit-mode inbound listener for one workload port."""
    return f"inbound_{port}"
