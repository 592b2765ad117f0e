"""The ADS sessions without I/O: which resources each response carries."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from trellis.controlplane.ads_delta import DeltaSession
from trellis.controlplane.ads_session import AdsSession, Outgoing
from trellis.controlplane.ads_status import ProxyNode, SyncState
from trellis.controlplane.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE, Snapshot

NODE = ProxyNode(id="p")


def _mesh(ports: dict[str, int]) -> Snapshot:
    items: list[object] = []
    for name, port in ports.items():
        cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        items.append(cluster)
        assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        address = address_pb2.Address(socket_address=address_pb2.SocketAddress(port_value=port))
        assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(address)
        items.append(assignment)
    return Snapshot.of("v", items)  # type: ignore[arg-type]


def _sotw_names(out: Outgoing) -> list[str]:
    response = discovery_pb2.DiscoveryResponse.FromString(out.data)
    return [
        endpoint_pb2.ClusterLoadAssignment.FromString(r.value).cluster_name
        for r in response.resources
    ]


def _delta(out: Outgoing) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse.FromString(out.data)


def test_sotw_eds_resends_only_changed_assignments_and_all_after_a_restart() -> None:
    session = AdsSession(NODE, clock=lambda: 0.0)
    names = ["a", "b", "c"]
    session.receive(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT_TYPE, resource_names=names))
    [first] = session.responses(_mesh({"a": 1, "b": 2, "c": 3}))
    assert _sotw_names(first) == names
    ack = discovery_pb2.DiscoveryRequest(
        type_url=ENDPOINT_TYPE, resource_names=names, response_nonce=first.nonce
    )
    session.receive(ack)
    [second] = session.responses(_mesh({"a": 1, "b": 20, "c": 3}))
    assert _sotw_names(second) == ["b"]
    ack.response_nonce = second.nonce
    session.receive(ack)
    # A restarted type (no nonce) gets everything subscribed again.
    session.receive(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT_TYPE, resource_names=names))
    [third] = session.responses(_mesh({"a": 1, "b": 20, "c": 3}))
    assert _sotw_names(third) == names


def test_delta_wildcard_cds_sends_changes_and_removals_only() -> None:
    session = DeltaSession(NODE, clock=lambda: 0.0)
    session.receive(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER_TYPE))
    [first] = session.responses(_mesh({"a": 1, "b": 2}))
    assert [r.name for r in _delta(first).resources] == ["a", "b"]
    session.receive(
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER_TYPE, response_nonce=first.nonce)
    )
    snapshot = _mesh({"a": 1, "c": 3})
    [second] = session.responses(snapshot)
    response = _delta(second)
    assert [r.name for r in response.resources] == ["c"]
    assert list(response.removed_resources) == ["b"]
    assert session.status(snapshot)[0].state is SyncState.STALE  # until the ACK
    session.receive(
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER_TYPE, response_nonce=second.nonce)
    )
    assert session.responses(snapshot) == []
    assert session.status(snapshot)[0].state is SyncState.SYNCED


def test_delta_subscription_changes_count_even_with_a_stale_nonce() -> None:
    session = DeltaSession(NODE, clock=lambda: 0.0)
    snapshot = _mesh({"a": 1, "b": 2})
    session.receive(
        discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT_TYPE, resource_names_subscribe=["a"])
    )
    [first] = session.responses(snapshot)
    stale = discovery_pb2.DeltaDiscoveryRequest(
        type_url=ENDPOINT_TYPE, resource_names_subscribe=["b"], response_nonce="old"
    )
    assert session.receive(stale) is None and session.stale_requests == 1
    nack = discovery_pb2.DeltaDiscoveryRequest(
        type_url=ENDPOINT_TYPE,
        response_nonce=first.nonce,
        error_detail=status_pb2.Status(code=3, message="bad port"),
    )
    rejected = session.receive(nack)
    assert rejected is not None and rejected.message == "bad port"
    [second] = session.responses(snapshot)
    assert [r.name for r in _delta(second).resources] == ["b"]  # not "a" again


def test_delta_reconnect_skips_what_the_client_holds() -> None:
    snapshot = _mesh({"a": 1, "b": 2})
    held = {r.name: r.version for r in snapshot.get(ENDPOINT_TYPE)}
    held["gone"] = "0"
    session = DeltaSession(NODE, clock=lambda: 0.0)
    session.receive(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=ENDPOINT_TYPE,
            resource_names_subscribe=["a", "b", "gone"],
            initial_resource_versions=held,
        )
    )
    [only] = session.responses(snapshot)
    response = _delta(only)
    assert list(response.resources) == [] and list(response.removed_resources) == ["gone"]
