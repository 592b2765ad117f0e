"""The delta ADS client's protocol state: wildcard and named subscriptions by
difference, removals, NACK keeping what was applied, versions held on reconnect."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from trellis.errors import ConfigError
from trellis.xds.ads_delta_client import DeltaAdsClientState
from trellis.xds.compile_dynamic import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

ALL = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]


def _state() -> DeltaAdsClientState:
    return DeltaAdsClientState(base_pb2.Node(id="n1"), ALL)


def _response(
    type_url: str,
    nonce: str,
    resources: dict[str, tuple[str, Message]] | None = None,
    removed: tuple[str, ...] = (),
) -> discovery_pb2.DeltaDiscoveryResponse:
    response = discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url,
        nonce=nonce,
        system_version_info=f"set-{nonce}",
        removed_resources=list(removed),
    )
    for name, (version, message) in (resources or {}).items():
        entry = response.resources.add(name=name, version=version)
        entry.resource.Pack(message)
    return response


def _clusters(
    nonce: str, *named: tuple[str, str], removed: tuple[str, ...] = ()
) -> discovery_pb2.DeltaDiscoveryResponse:
    response = _response(CLUSTER_TYPE, nonce, removed=removed)
    for name, version in named:
        response.resources.add(name=name, version=version).resource.Pack(
            cluster_pb2.Cluster(name=name)
        )
    return response


def test_start_subscribes_to_wildcard_types_with_no_names_in_envoy_order() -> None:
    requests = _state().start()
    assert [r.type_url for r in requests] == [CLUSTER_TYPE, LISTENER_TYPE]
    for request in requests:
        assert request.node.id == "n1" and not request.resource_names_subscribe
        assert not request.initial_resource_versions and not request.response_nonce


def test_named_subscriptions_change_by_difference() -> None:
    state = _state()
    state.start()
    first = state.want(ENDPOINT_TYPE, ["b", "a"])
    assert first is not None and list(first.resource_names_subscribe) == ["a", "b"]
    assert state.want(ENDPOINT_TYPE, {"a", "b"}) is None
    changed = state.want(ENDPOINT_TYPE, {"b", "c"})
    assert changed is not None
    assert list(changed.resource_names_subscribe) == ["c"]
    assert list(changed.resource_names_unsubscribe) == ["a"]
    assert not changed.response_nonce  # a subscription change, not an ACK
    assert state.names(ENDPOINT_TYPE) == {"b", "c"}
    gone = state.want(ENDPOINT_TYPE, ())
    assert gone is not None and list(gone.resource_names_unsubscribe) == ["b", "c"]
    assert not state.wants_any(ENDPOINT_TYPE)


def test_responses_add_update_and_remove_on_top_of_what_is_held() -> None:
    state = _state()
    state.start()
    update = state.decode(_clusters("1", ("c1", "v1"), ("c2", "v1")))
    ack = state.ack(update)
    assert ack.response_nonce == "1" and not ack.HasField("error_detail")
    assert not ack.resource_names_subscribe and not ack.resource_names_unsubscribe
    update = state.decode(_clusters("2", ("c2", "v2"), ("c3", "v1"), removed=("c1",)))
    assert sorted(update.resources) == ["c2", "c3"]
    assert dict(update.versions) == {"c2": "v2", "c3": "v1"}
    assert update.version == "set-2"
    state.ack(update)
    assert state.held_versions(CLUSTER_TYPE) == {"c2": "v2", "c3": "v1"}


def test_a_nack_keeps_what_was_applied_and_the_next_response_completes_it() -> None:
    state = _state()
    state.start()
    state.ack(state.decode(_clusters("1", ("a", "a1"))))
    # The runtime could not apply this one (say "a" at a2 is bad): NACK by nonce.
    state.decode(_clusters("2", ("a", "a2"), ("b", "b1")))
    nack = state.nack(CLUSTER_TYPE, "2", "CDS cluster 'a': bad")
    assert nack.response_nonce == "2" and nack.error_detail.message == "CDS cluster 'a': bad"
    assert nack.error_detail.code == 3  # INVALID_ARGUMENT
    assert state.held_versions(CLUSTER_TYPE) == {"a": "a1"}
    # The server counts "b" as delivered: a fix of "a" alone must bring "b" along.
    update = state.decode(_clusters("3", ("a", "a3")))
    assert dict(update.versions) == {"a": "a3", "b": "b1"}
    state.ack(update)
    assert state.held_versions(CLUSTER_TYPE) == {"a": "a3", "b": "b1"}


def test_reconnect_names_the_versions_held_and_the_names_wanted() -> None:
    state = _state()
    state.start()
    state.ack(state.decode(_clusters("1", ("a", "a1"), ("b", "b1"))))
    state.want(ENDPOINT_TYPE, {"a", "b"})
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name="a")
    state.ack(state.decode(_response(ENDPOINT_TYPE, "2", {"a": ("e1", assignment)})))
    state.decode(_clusters("3", ("c", "c1")))
    state.nack(CLUSTER_TYPE, "3", "rejected")  # not applied: not claimed as held
    cds, eds, lds = state.start()
    assert (cds.type_url, eds.type_url, lds.type_url) == (
        CLUSTER_TYPE,
        ENDPOINT_TYPE,
        LISTENER_TYPE,
    )
    assert not cds.resource_names_subscribe  # wildcard again
    assert dict(cds.initial_resource_versions) == {"a": "a1", "b": "b1"}
    assert list(eds.resource_names_subscribe) == ["a", "b"]
    assert dict(eds.initial_resource_versions) == {"a": "e1"}
    # After the reconnect the view starts again from what is applied.
    update = state.decode(_clusters("1", ("d", "d1")))
    assert sorted(update.resources) == ["a", "b", "d"]


def test_unsubscribed_names_are_forgotten_and_late_ones_ignored() -> None:
    state = _state()
    state.start()
    state.want(ENDPOINT_TYPE, {"a", "b"})
    assignments = {n: ("1", endpoint_pb2.ClusterLoadAssignment(cluster_name=n)) for n in ("a", "b")}
    state.ack(state.decode(_response(ENDPOINT_TYPE, "1", assignments)))
    state.want(ENDPOINT_TYPE, {"a"})
    assert state.held_versions(ENDPOINT_TYPE) == {"a": "1"}
    late = state.decode(_response(ENDPOINT_TYPE, "2", {"b": assignments["b"]}))
    assert sorted(late.resources) == ["a"]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (_clusters("1", ("c", "1"), ("c", "2")), "duplicate name 'c'"),
        (_response(CLUSTER_TYPE, "1", {"x": ("1", cluster_pb2.Cluster(name="y"))}), "holds 'y'"),
        (
            _response(CLUSTER_TYPE, "1", {"x": ("1", endpoint_pb2.ClusterLoadAssignment())}),
            "is a envoy.config.endpoint.v3.ClusterLoadAssignment",
        ),
        (
            discovery_pb2.DeltaDiscoveryResponse(
                type_url=CLUSTER_TYPE, resources=[discovery_pb2.Resource(name="x")]
            ),
            "'x' carries no resource",
        ),
        (discovery_pb2.DeltaDiscoveryResponse(type_url="type.x/Y"), "unexpected resource type"),
    ],
)
def test_undecodable_responses_are_config_errors(
    response: discovery_pb2.DeltaDiscoveryResponse, message: str
) -> None:
    state = _state()
    state.start()
    with pytest.raises(ConfigError, match=message):
        state.decode(response)
