"""Snapshots, the debounced cache and the stream protocol state, without sockets."""

from __future__ import annotations

import asyncio
import time

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from trellis.controlplane.ads_session import AdsProtocolError, AdsSession
from trellis.controlplane.ads_status import ProxyNode, SyncState
from trellis.controlplane.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Resource,
    ResourceSet,
    Snapshot,
    SnapshotError,
)
from trellis.controlplane.snapshot_cache import SnapshotCache

from .ads_helpers import api_listener, cluster, endpoints, mesh_snapshot, route, run


def test_a_resource_is_the_same_from_a_message_or_an_any() -> None:
    message = cluster("svc0")
    packed = any_pb2.Any()
    packed.Pack(message)
    direct, unpacked = Resource.of(message), Resource.of(packed)
    assert (direct.name, direct.type_url) == ("svc0", CLUSTER_TYPE)
    assert direct.version == unpacked.version
    assert direct.encoded == unpacked.encoded
    assert Resource.of(endpoints("svc0", [1])).name == "svc0"  # cluster_name
    changed = cluster("svc0")
    changed.connect_timeout.FromMilliseconds(2000)
    assert Resource.of(changed).version != direct.version


def test_malformed_snapshots_name_the_resource() -> None:
    with pytest.raises(SnapshotError, match="'svc0' is filed as 'svc1'"):
        Snapshot.from_mapping("v1", {CLUSTER_TYPE: {"svc1": cluster("svc0")}})
    with pytest.raises(SnapshotError, match="'svc0' appears twice"):
        Snapshot.of("v1", [cluster("svc0"), cluster("svc0")])
    with pytest.raises(SnapshotError, match=r"is in the .*Listener set"):
        Snapshot.from_mapping("v1", {LISTENER_TYPE: {"svc0": cluster("svc0")}})
    with pytest.raises(SnapshotError, match="empty name"):
        Resource.of(route("", {"a": 1}))


def test_references_from_api_listeners_and_eds_service_names() -> None:
    snapshot = Snapshot.of(
        "v1", [api_listener("grpc-svc", "grpc-routes"), cluster("outbound|80||a", "a-eds")]
    )
    assert snapshot.missing_references() == (
        "LDS 'grpc-svc' references RDS 'grpc-routes', which is not in the snapshot",
        "CDS 'outbound|80||a' references EDS 'a-eds', which is not in the snapshot",
    )
    assert not snapshot.is_consistent()
    whole = Snapshot.of(
        "v1",
        [
            api_listener("grpc-svc", "grpc-routes"),
            route("grpc-routes", {"outbound|80||a": 1}),
            cluster("outbound|80||a", "a-eds"),
            endpoints("a-eds", [1]),
        ],
    )
    assert whole.missing_references() == ()


def test_set_versions_follow_content_not_order() -> None:
    a, b = Resource.of(cluster("a")), Resource.of(cluster("b"))
    forward, backward = ResourceSet.of(CLUSTER_TYPE, [a, b]), ResourceSet.of(CLUSTER_TYPE, [b, a])
    assert forward.version == backward.version
    changed_b = cluster("b")
    changed_b.lb_policy = changed_b.LEAST_REQUEST
    newer = ResourceSet.of(CLUSTER_TYPE, [a, changed_b, cluster("c")])
    assert newer.version != forward.version
    assert newer.changed_since(forward) == {"b", "c"}
    assert newer.changed_since(forward) is newer.changed_since(forward)  # remembered
    assert forward.changed_since(newer) == {"b"}  # removals ("c") are not changes


def test_an_extended_set_equals_the_plain_set_of_the_same_resources() -> None:
    shared = ResourceSet.of(CLUSTER_TYPE, [cluster("a"), cluster("b", "b-eds")])
    inbound = [Resource.of(cluster("inbound|80||"))]
    extended = shared.extended(inbound)
    plain = ResourceSet.of(CLUSTER_TYPE, [*shared, *inbound])
    assert extended.version == plain.version
    assert extended.names == plain.names == {"a", "b", "inbound|80||"}
    assert extended.references == plain.references == {"a", "b-eds", "inbound|80||"}
    assert sorted(extended.by_name) == sorted(plain.by_name)
    entries = discovery_pb2.DiscoveryResponse.FromString(extended.encoded()).resources
    assert sorted(Resource.of(r).name for r in entries) == ["a", "b", "inbound|80||"]
    assert shared.extended([]) is shared
    with pytest.raises(SnapshotError, match="'a' appears twice"):
        shared.extended([Resource.of(cluster("a"))])


def test_differences_of_extended_sets_cover_base_and_own_parts() -> None:
    old_base = ResourceSet.of(CLUSTER_TYPE, [cluster("a"), cluster("b")])
    changed_b = cluster("b")
    changed_b.lb_policy = changed_b.LEAST_REQUEST
    new_base = ResourceSet.of(CLUSTER_TYPE, [cluster("a"), changed_b, cluster("c")])
    old = old_base.extended([Resource.of(cluster("in-1")), Resource.of(cluster("in-2"))])
    in_2 = cluster("in-2")
    in_2.connect_timeout.FromMilliseconds(2000)
    new = new_base.extended([Resource.of(cluster("in-1")), Resource.of(in_2)])
    assert new.changed_since(old) == {"b", "c", "in-2"}
    assert new.changed_since(old_base) == {"b", "c", "in-1", "in-2"}  # plain older set
    # Two proxies on the same bases share one computation of the bases' difference.
    other = new_base.extended([Resource.of(cluster("in-9"))])
    assert other.changed_since(old_base.extended([Resource.of(cluster("in-9"))])) == {"b", "c"}
    assert new_base.changed_since(old_base) is new_base.changed_since(old_base)


def test_identical_content_is_not_announced_and_bursts_are_bounded() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.1, max_delay=0.25)
        calls: list[float] = []
        cache.watch("a", lambda: calls.append(time.monotonic()))
        cache.set("a", mesh_snapshot("v1", 2))
        for _ in range(200):
            if calls:
                break
            await asyncio.sleep(0.01)
        assert len(calls) == 1
        cache.set("a", mesh_snapshot("v2", 2))  # same resources, new label
        await asyncio.sleep(0.2)
        assert len(calls) == 1
        start = time.monotonic()
        for i in range(30):  # a change every 20 ms: never quiet for 100 ms
            cache.set("a", mesh_snapshot(f"v{i + 3}", 2, first_port=1000 + i))
            await asyncio.sleep(0.02)
        end = time.monotonic()
        for _ in range(200):
            if not cache.pending:
                break
            await asyncio.sleep(0.01)
        assert len(calls) >= 3  # the first announcement, then at least two during the burst
        assert calls[1] < end  # max_delay: announced before the burst was over
        assert calls[1] - start < 0.25 + 0.2  # max_delay plus scheduling slack

    run(main)


def _request(
    type_url: str, names: tuple[str, ...] = (), nonce: str = ""
) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce
    )


def _names(data: bytes) -> list[str]:
    response = discovery_pb2.DiscoveryResponse.FromString(data)
    return sorted(Resource.of(r).name for r in response.resources)


def test_wildcard_rules_of_the_session() -> None:
    snapshot = mesh_snapshot("v1", 3)
    session = AdsSession(ProxyNode("a"), clock=lambda: 0.0)
    session.receive(_request(ENDPOINT_TYPE, ("*",)))
    session.receive(_request(ROUTE_TYPE))  # no names: nothing
    session.receive(_request(LISTENER_TYPE))  # legacy wildcard
    out = {o.type_url: o for o in session.responses(snapshot)}
    assert set(out) == {ENDPOINT_TYPE, LISTENER_TYPE}
    assert _names(out[ENDPOINT_TYPE].data) == ["svc0", "svc1", "svc2"]
    lds = out[LISTENER_TYPE]
    # An empty re-request keeps the wildcard; naming resources ends it.
    session.receive(_request(LISTENER_TYPE, (), lds.nonce))
    [status] = [t for t in session.status(snapshot) if t.short_name == "LDS"]
    assert status.wildcard and status.state is SyncState.SYNCED
    session.receive(_request(LISTENER_TYPE, ("outbound",), lds.nonce))
    [status] = [t for t in session.status(snapshot) if t.short_name == "LDS"]
    assert not status.wildcard and status.resource_names == ("outbound",)
    # A newly named resource is sent again, even though the client has it.
    [again] = session.responses(snapshot)
    assert _names(again.data) == ["outbound"]
    assert session.responses(snapshot) == []  # one response in flight per type
    with pytest.raises(AdsProtocolError, match="type_url"):
        session.receive(_request(""))
