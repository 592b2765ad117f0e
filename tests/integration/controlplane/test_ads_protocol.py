"""SotW ADS over a real grpc.aio server and the generated stub: fetch, ACK, NACK, nonces."""

from __future__ import annotations

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from trellis.controlplane.ads_status import SyncState
from trellis.controlplane.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Snapshot,
)
from trellis.controlplane.snapshot_cache import SnapshotCache

from .ads_helpers import (
    AdsClient,
    ads_server,
    channel_to,
    cluster,
    endpoints,
    listener,
    mesh_snapshot,
    names_of,
    node,
    route,
    run,
)


async def _initial_sync(client: AdsClient) -> dict[str, discovery_pb2.DiscoveryResponse]:
    """Envoy's start: CDS and LDS wildcard, then EDS and RDS by the names they carry."""
    got = {}
    client.send(CLUSTER_TYPE)
    client.send(LISTENER_TYPE)
    for _ in range(2):
        response = await client.recv()
        got[response.type_url] = response
    client.ack(got[CLUSTER_TYPE])
    client.send(ENDPOINT_TYPE, names_of(got[CLUSTER_TYPE]))
    client.ack(got[LISTENER_TYPE])
    client.send(ROUTE_TYPE, ["routes"])
    for _ in range(2):
        response = await client.recv()
        got[response.type_url] = response
        client.ack(response, names_of(response))
    return got


def test_wildcard_then_named_fetch_and_acks_show_synced() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        snapshot = mesh_snapshot("v1", 3)
        cache.set("proxy-a", snapshot)
        async with ads_server(cache) as server, channel_to(server) as channel:
            client = AdsClient(channel, node("proxy-a", NAMESPACE="shop", LABELS={"app": "web"}))
            got = await _initial_sync(client)
            assert names_of(got[CLUSTER_TYPE]) == ["svc0", "svc1", "svc2"]
            assert names_of(got[LISTENER_TYPE]) == ["outbound"]
            assert names_of(got[ENDPOINT_TYPE]) == ["svc0", "svc1", "svc2"]
            assert names_of(got[ROUTE_TYPE]) == ["routes"]
            assert got[CLUSTER_TYPE].version_info == snapshot.get(CLUSTER_TYPE).version
            assert got[CLUSTER_TYPE].control_plane.identifier == "trellis"
            await client.expect_silence(0.2)  # ACKs of unchanged config get no reply

            [status] = server.service.status()
            assert status.node.id == "proxy-a"
            assert status.node.namespace == "shop"
            assert dict(status.node.labels) == {"app": "web"}
            assert status.snapshot_version == "v1"
            states = {t.short_name: t for t in status.types}
            assert [t.short_name for t in status.types] == ["CDS", "EDS", "LDS", "RDS"]
            for short, type_url in (("CDS", CLUSTER_TYPE), ("RDS", ROUTE_TYPE)):
                assert states[short].state is SyncState.SYNCED
                assert states[short].acked_version == got[type_url].version_info
                assert states[short].sent_nonce == got[type_url].nonce
            assert states["LDS"].wildcard and not states["EDS"].wildcard
            client.close()

    run(main)


def test_nack_keeps_the_acked_version_and_is_reported() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        cache.set("proxy-a", mesh_snapshot("v1", 2))
        async with ads_server(cache) as server, channel_to(server) as channel:
            client = AdsClient(channel, node("proxy-a"))
            client.send(CLUSTER_TYPE)
            first = await client.recv()
            client.ack(first)

            cache.set("proxy-a", mesh_snapshot("v2", 3))
            second = await client.recv()
            assert names_of(second) == ["svc0", "svc1", "svc2"]
            client.nack(second, "cluster svc2: unsupported lb_policy", previous=first.version_info)
            await client.expect_silence(0.3)  # the rejected content is not sent again

            [status] = server.service.status()
            cds = status.type("CDS")
            assert cds is not None
            assert cds.state is SyncState.STALE
            assert cds.acked_version == first.version_info
            assert cds.sent_version == second.version_info
            assert cds.last_nack is not None
            assert cds.last_nack.message == "cluster svc2: unsupported lb_policy"
            assert cds.last_nack.version == second.version_info
            assert (cds.acks, cds.nacks) == (1, 1)

            cache.set("proxy-a", mesh_snapshot("v3", 2, port_base=21000))  # a fix, pushed
            third = await client.recv()
            assert names_of(third) == ["svc0", "svc1"]
            client.ack(third)
            await client.expect_silence(0.2)
            cds = server.service.status()[0].type("CDS")
            assert cds is not None and cds.state is SyncState.SYNCED
            assert cds.acked_version == third.version_info
            assert cds.last_nack is not None  # history stays visible
            client.close()

    run(main)


def test_stale_nonce_is_ignored_and_new_names_are_answered() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        cache.set("proxy-a", mesh_snapshot("v1", 3))
        async with ads_server(cache) as server, channel_to(server) as channel:
            client = AdsClient(channel, node("proxy-a"))
            client.send(ENDPOINT_TYPE, ["svc0"])
            first = await client.recv()
            assert names_of(first) == ["svc0"]
            client.ack(first, ["svc0"])

            cache.set("proxy-a", mesh_snapshot("v2", 3, first_port=30000))
            second = await client.recv()
            assert second.nonce != first.nonce
            # A request still carrying the old nonce is stale: no answer, no subscription.
            client.send(
                ENDPOINT_TYPE, ["svc0", "svc1"], version=first.version_info, nonce=first.nonce
            )
            await client.expect_silence(0.3)
            # With the current nonce the new name is answered, and only it: EDS is not
            # a state-of-the-world type, the client keeps svc0.
            client.ack(second, ["svc0"])
            client.send(
                ENDPOINT_TYPE, ["svc0", "svc1"], version=second.version_info, nonce=second.nonce
            )
            third = await client.recv()
            assert names_of(third) == ["svc1"]
            client.ack(third, ["svc0", "svc1"])
            # Dropping a name needs no response.
            client.send(ENDPOINT_TYPE, ["svc1"], version=third.version_info, nonce=third.nonce)
            await client.expect_silence(0.3)
            [status] = server.service.status()
            eds = status.type("EDS")
            assert eds is not None
            assert eds.resource_names == ("svc1",)
            assert eds.state is SyncState.SYNCED
            client.close()

    run(main)


def test_named_resources_that_do_not_exist_are_sent_when_they_appear() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        cache.set("proxy-a", mesh_snapshot("v1", 1))
        async with ads_server(cache) as server, channel_to(server) as channel:
            client = AdsClient(channel, node("proxy-a"))
            client.send(ROUTE_TYPE, ["other-routes"])
            await client.expect_silence(0.3)
            rds = server.service.status()[0].type("RDS")
            assert rds is not None and rds.state is SyncState.NOT_SENT
            items = [
                listener("outbound", "routes"),
                listener("extra", "other-routes", port=15002),
                route("routes", {"svc0": 1}),
                route("other-routes", {"svc0": 1}),
                cluster("svc0"),
                endpoints("svc0", [20000]),
            ]
            cache.set("proxy-a", Snapshot.of("v2", items))
            response = await client.recv()
            assert names_of(response) == ["other-routes"]
            client.close()

    run(main)


def test_a_bad_node_is_refused_on_both_protocols() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        async with ads_server(cache) as server, channel_to(server) as channel:
            nameless = AdsClient(channel, node(""))
            nameless.send(CLUSTER_TYPE)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await nameless.recv()
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "node.id" in (raised.value.details() or "")

            labelled = AdsClient(channel, node("p", LABELS="web"))
            labelled.send(CLUSTER_TYPE)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await labelled.recv()
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert 'node.metadata["LABELS"]' in (raised.value.details() or "")

            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            delta = stub.DeltaAggregatedResources(
                iter([discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER_TYPE)])
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await delta.read()
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "node.id" in (raised.value.details() or "")
            assert server.service.status() == []

    run(main)
