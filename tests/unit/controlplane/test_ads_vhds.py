"""VHDS on the delta session: virtual hosts as resources of their own, without I/O."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from trellis.controlplane.ads_delta import DeltaSession
from trellis.controlplane.ads_session import Outgoing
from trellis.controlplane.ads_status import ProxyNode, SyncState
from trellis.controlplane.snapshot import ROUTE_TYPE, Snapshot
from trellis.xds.vhds import VHDS_CLIENT_FEATURE, VIRTUAL_HOST_TYPE

VHDS_NODE = ProxyNode(id="p", client_features=(VHDS_CLIENT_FEATURE,))


def _routes(clusters: dict[str, str], *, name: str = "outbound") -> Snapshot:
    """One route configuration with a virtual host per entry (host -> cluster)."""
    config = route_pb2.RouteConfiguration(name=name)
    for host, cluster in clusters.items():
        route = route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"),
            route=route_components_pb2.RouteAction(cluster=cluster),
        )
        config.virtual_hosts.add(name=host, domains=[host], routes=[route])
    return Snapshot.of("v", [config])


def _delta(out: Outgoing) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse.FromString(out.data)


def _request(type_url: str, **fields: object) -> discovery_pb2.DeltaDiscoveryRequest:
    return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, **fields)


def _ack(session: DeltaSession, out: Outgoing) -> None:
    assert session.receive(_request(out.type_url, response_nonce=out.nonce)) is None


def _hosts(out: Outgoing) -> dict[str, str]:
    """Resource name -> the cluster its one route goes to."""
    found = {}
    for entry in _delta(out).resources:
        host = route_components_pb2.VirtualHost.FromString(entry.resource.value)
        assert host.name == entry.name
        found[entry.name] = host.routes[0].route.cluster
    return found


def _subscribed(session: DeltaSession, snapshot: Snapshot) -> Outgoing:
    """Subscribe to the route configuration, then to its virtual hosts; the VHDS response."""
    session.receive(_request(ROUTE_TYPE, resource_names_subscribe=["outbound"]))
    [rds] = session.responses(snapshot)
    _ack(session, rds)
    session.receive(_request(VIRTUAL_HOST_TYPE, resource_names_subscribe=["outbound"]))
    [vhds] = session.responses(snapshot)
    return vhds


def test_a_vhds_client_gets_the_route_configuration_without_its_virtual_hosts() -> None:
    session = DeltaSession(VHDS_NODE, clock=lambda: 0.0)
    session.receive(_request(ROUTE_TYPE, resource_names_subscribe=["outbound"]))
    [rds] = session.responses(_routes({"a": "ca", "b": "cb"}))
    [entry] = _delta(rds).resources
    config = route_pb2.RouteConfiguration.FromString(entry.resource.value)
    assert config.name == "outbound" and not config.virtual_hosts
    assert config.vhds.config_source.HasField("ads")


def test_a_client_without_the_feature_keeps_whole_route_configurations() -> None:
    session = DeltaSession(ProxyNode(id="p"), clock=lambda: 0.0)
    session.receive(_request(ROUTE_TYPE, resource_names_subscribe=["outbound"]))
    [rds] = session.responses(_routes({"a": "ca", "b": "cb"}))
    config = route_pb2.RouteConfiguration.FromString(_delta(rds).resources[0].resource.value)
    assert [host.name for host in config.virtual_hosts] == ["a", "b"]
    assert not config.HasField("vhds")


def test_vhds_sends_every_virtual_host_then_only_the_changed_one() -> None:
    session = DeltaSession(VHDS_NODE, clock=lambda: 0.0)
    first = _subscribed(session, _routes({"a": "ca", "b": "cb", "c": "cc"}))
    assert _hosts(first) == {"outbound/a": "ca", "outbound/b": "cb", "outbound/c": "cc"}
    _ack(session, first)
    changed = _routes({"a": "ca", "b": "cb2"})
    [second] = session.responses(changed)  # no RDS: the route configuration is the same
    assert second.type_url == VIRTUAL_HOST_TYPE
    assert _hosts(second) == {"outbound/b": "cb2"}
    assert list(_delta(second).removed_resources) == ["outbound/c"]
    statuses = {status.short_name: status for status in session.status(changed)}
    assert statuses["VHDS"].state is SyncState.STALE and statuses["RDS"].state is SyncState.SYNCED
    _ack(session, second)
    assert session.responses(changed) == []
    assert {s.short_name: s.state for s in session.status(changed)}["VHDS"] is SyncState.SYNCED


def test_vhds_answers_an_empty_route_configuration_once() -> None:
    session = DeltaSession(VHDS_NODE, clock=lambda: 0.0)
    first = _subscribed(session, _routes({}))
    assert _hosts(first) == {} and not _delta(first).removed_resources


def test_unsubscribing_a_route_configuration_forgets_its_virtual_hosts() -> None:
    session = DeltaSession(VHDS_NODE, clock=lambda: 0.0)
    snapshot = _routes({"a": "ca", "b": "cb"})
    _ack(session, _subscribed(session, snapshot))
    session.receive(_request(VIRTUAL_HOST_TYPE, resource_names_unsubscribe=["outbound"]))
    assert session.responses(_routes({"a": "ca2"})) == []  # nothing, not even a removal
    session.receive(_request(VIRTUAL_HOST_TYPE, resource_names_subscribe=["outbound"]))
    [again] = session.responses(snapshot)
    assert _hosts(again) == {"outbound/a": "ca", "outbound/b": "cb"}


def test_a_reconnected_vhds_client_gets_only_what_differs_from_what_it_holds() -> None:
    snapshot = _routes({"a": "ca", "b": "cb"})
    held_hosts = snapshot.for_vhds().get(VIRTUAL_HOST_TYPE)
    held = {resource.name: resource.version for resource in held_hosts}
    held["outbound/b"] = "old"
    held["outbound/gone"] = "0"
    held["other/x"] = "0"  # another route configuration's, not subscribed: left alone
    session = DeltaSession(VHDS_NODE, clock=lambda: 0.0)
    session.receive(
        _request(
            VIRTUAL_HOST_TYPE,
            resource_names_subscribe=["outbound"],
            initial_resource_versions=held,
        )
    )
    [only] = session.responses(snapshot)
    assert _hosts(only) == {"outbound/b": "cb"}
    assert list(_delta(only).removed_resources) == ["outbound/gone"]
