"""The ADS client's protocol state: subscriptions, ACK and NACK, resubscription on reconnect."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from trellis.errors import ConfigError
from trellis.xds.ads_client import AdsClientState
from trellis.xds.compile_dynamic import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

ALL = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]


def _state() -> AdsClientState:
    return AdsClientState(base_pb2.Node(id="n1"), ALL)


def _clusters(version: str, nonce: str, *names: str) -> discovery_pb2.DiscoveryResponse:
    response = discovery_pb2.DiscoveryResponse(
        type_url=CLUSTER_TYPE, version_info=version, nonce=nonce
    )
    for name in names:
        packed = any_pb2.Any()
        packed.Pack(cluster_pb2.Cluster(name=name))
        response.resources.append(packed)
    return response


def test_start_asks_for_wildcard_types_in_envoy_order() -> None:
    requests = _state().start()
    assert [r.type_url for r in requests] == [CLUSTER_TYPE, LISTENER_TYPE]
    assert all(r.node.id == "n1" and not r.resource_names for r in requests)


def test_ack_carries_version_and_nonce_and_nack_keeps_the_accepted_version() -> None:
    state = _state()
    state.start()
    update = state.decode(_clusters("v1", "a", "c1", "c2"))
    assert sorted(update.resources) == ["c1", "c2"]
    ack = state.ack(update)
    assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == (
        "v1",
        "a",
        False,
    )
    nack = state.nack(CLUSTER_TYPE, "b", "cluster c3: bad")
    assert (nack.version_info, nack.response_nonce) == ("v1", "b")
    assert nack.error_detail.message == "cluster c3: bad"


def test_named_subscriptions_change_only_when_the_set_changes() -> None:
    state = _state()
    state.start()
    first = state.want(ENDPOINT_TYPE, ["b", "a"])
    assert first is not None and list(first.resource_names) == ["a", "b"]
    assert state.want(ENDPOINT_TYPE, {"a", "b"}) is None
    assert state.wants_any(ENDPOINT_TYPE) and not state.wants_any(ROUTE_TYPE)
    resubscribed = [r.type_url for r in state.start()]
    assert resubscribed == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE]


def test_undecodable_responses_are_config_errors() -> None:
    state = _state()
    with pytest.raises(ConfigError, match="duplicate"):
        state.decode(_clusters("v1", "a", "c1", "c1"))
    with pytest.raises(ConfigError, match="unexpected resource type"):
        state.decode(discovery_pb2.DiscoveryResponse(type_url="type.googleapis.com/x.Y"))
