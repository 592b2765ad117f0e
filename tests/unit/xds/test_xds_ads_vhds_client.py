"""The delta ADS client's VHDS subscriptions: virtual hosts subscribed by the name of
their route configuration (namespace), forgotten with it, listed again on reconnect."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from trellis.xds.ads_delta_client import DeltaAdsClientState
from trellis.xds.compile_dynamic import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from trellis.xds.vhds import VIRTUAL_HOST_TYPE

TYPES = [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, VIRTUAL_HOST_TYPE]


def _state() -> DeltaAdsClientState:
    state = DeltaAdsClientState(base_pb2.Node(id="n1"), TYPES)
    state.start()
    return state


def _hosts(
    nonce: str, *named: tuple[str, str], removed: tuple[str, ...] = ()
) -> discovery_pb2.DeltaDiscoveryResponse:
    """A VirtualHost response: (resource name, version) pairs."""
    response = discovery_pb2.DeltaDiscoveryResponse(
        type_url=VIRTUAL_HOST_TYPE, nonce=nonce, removed_resources=list(removed)
    )
    for name, version in named:
        host = route_components_pb2.VirtualHost(name=name, domains=[name.rpartition("/")[2]])
        response.resources.add(name=name, version=version).resource.Pack(host)
    return response


def test_virtual_hosts_are_subscribed_by_route_configuration_name() -> None:
    state = _state()
    request = state.want(VIRTUAL_HOST_TYPE, {"outbound"})
    assert request is not None and request.type_url == VIRTUAL_HOST_TYPE
    assert list(request.resource_names_subscribe) == ["outbound"]
    assert state.wants_any(VIRTUAL_HOST_TYPE)


def test_a_host_is_kept_when_its_route_configuration_is_subscribed() -> None:
    state = _state()
    state.want(VIRTUAL_HOST_TYPE, {"outbound", "a/b"})
    response = _hosts(
        "1",
        ("outbound/a", "1"),
        ("a/b/c", "1"),  # route configuration "a/b": split at the last "/"
        ("inbound/x", "1"),  # not subscribed
        ("outbound", "1"),  # no "/": belongs to no route configuration
    )
    update = state.decode(response)
    assert sorted(update.resources) == ["a/b/c", "outbound/a"]
    state.ack(update)
    assert state.held_versions(VIRTUAL_HOST_TYPE) == {"a/b/c": "1", "outbound/a": "1"}


def test_changed_hosts_replace_and_removed_ones_go() -> None:
    state = _state()
    state.want(VIRTUAL_HOST_TYPE, {"outbound"})
    state.ack(state.decode(_hosts("1", ("outbound/a", "1"), ("outbound/b", "1"))))
    update = state.decode(_hosts("2", ("outbound/b", "2"), removed=("outbound/a",)))
    state.ack(update)
    assert state.held_versions(VIRTUAL_HOST_TYPE) == {"outbound/b": "2"}


def test_unsubscribing_a_route_configuration_forgets_its_hosts() -> None:
    state = _state()
    state.want(VIRTUAL_HOST_TYPE, {"outbound", "other"})
    hosts = ("outbound/a", "1"), ("outbound/b", "1"), ("other/c", "1")
    state.ack(state.decode(_hosts("1", *hosts)))
    request = state.want(VIRTUAL_HOST_TYPE, {"other"})
    assert request is not None and list(request.resource_names_unsubscribe) == ["outbound"]
    assert not request.resource_names_subscribe
    assert state.held_versions(VIRTUAL_HOST_TYPE) == {"other/c": "1"}
    # A late host of the dropped route configuration is not taken.
    late = state.decode(_hosts("2", ("outbound/a", "2")))
    assert sorted(late.resources) == ["other/c"]


def test_a_nack_keeps_the_applied_hosts() -> None:
    state = _state()
    state.want(VIRTUAL_HOST_TYPE, {"outbound"})
    state.ack(state.decode(_hosts("1", ("outbound/a", "1"))))
    state.decode(_hosts("2", ("outbound/a", "2"), ("outbound/b", "1")))
    nack = state.nack(VIRTUAL_HOST_TYPE, "2", "VHDS virtual host 'outbound/a': bad")
    assert nack.response_nonce == "2" and nack.error_detail.message.endswith("bad")
    assert state.held_versions(VIRTUAL_HOST_TYPE) == {"outbound/a": "1"}
    # The server counts "outbound/b" delivered: the next response comes with it.
    update = state.decode(_hosts("3", ("outbound/a", "3")))
    assert dict(update.versions) == {"outbound/a": "3", "outbound/b": "1"}


def test_reconnect_resubscribes_route_configurations_and_lists_held_hosts() -> None:
    state = _state()
    state.want(ROUTE_TYPE, {"outbound"})
    state.want(VIRTUAL_HOST_TYPE, {"outbound"})
    state.ack(state.decode(_hosts("1", ("outbound/a", "1"), ("outbound/b", "4"))))
    requests = state.start()
    assert [r.type_url for r in requests] == [
        CLUSTER_TYPE,
        LISTENER_TYPE,
        ROUTE_TYPE,
        VIRTUAL_HOST_TYPE,  # after RDS, as the server pushes them
    ]
    vhds = requests[-1]
    assert list(vhds.resource_names_subscribe) == ["outbound"]
    assert dict(vhds.initial_resource_versions) == {"outbound/a": "1", "outbound/b": "4"}


def test_other_named_types_still_match_names_exactly() -> None:
    state = _state()
    state.want(ROUTE_TYPE, {"outbound"})
    response = discovery_pb2.DeltaDiscoveryResponse(type_url=ROUTE_TYPE, nonce="1")
    for name in ("outbound", "outbound/x"):
        entry = response.resources.add(name=name, version="1")
        entry.resource.Pack(route_pb2.RouteConfiguration(name=name))
    assert sorted(state.decode(response).resources) == ["outbound"]
