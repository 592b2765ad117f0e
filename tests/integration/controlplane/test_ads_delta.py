"""Incremental (delta) ADS over a real grpc.aio server and the generated stub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from trellis.controlplane.ads_status import SyncState
from trellis.controlplane.snapshot import CLUSTER_TYPE, ENDPOINT_TYPE
from trellis.controlplane.snapshot_cache import SnapshotCache

from .ads_helpers import ads_server, channel_to, mesh_snapshot, node, run


class DeltaClient:
    """One delta ADS stream driven by hand."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        self._node = node(node_id)
        self._first = True
        self._outbox: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
        self._inbox: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse | BaseException] = (
            asyncio.Queue()
        )
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.DeltaAggregatedResources(self._requests())
        # Reading in one task: cancelling a grpc.aio read would cancel the whole call.
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self._inbox.put_nowait(response)
            self._inbox.put_nowait(EOFError("the server ended the stream"))
        except BaseException as error:  # handed to the test that reads next
            self._inbox.put_nowait(error)

    async def _requests(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    def send(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        *,
        unsubscribe: Iterable[str] = (),
        nonce: str = "",
        error: str | None = None,
        initial: dict[str, str] | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if self._first:
            request.node.CopyFrom(self._node)
            self._first = False
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._outbox.put_nowait(request)

    async def recv(self, within: float = 5.0) -> discovery_pb2.DeltaDiscoveryResponse:
        item = await asyncio.wait_for(self._inbox.get(), within)
        if isinstance(item, BaseException):
            raise item
        return item

    async def expect_silence(self, seconds: float = 0.3) -> None:
        try:
            item = await asyncio.wait_for(self._inbox.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {item}")

    def close(self) -> None:
        self._outbox.put_nowait(None)
        self._reader.cancel()


def names(response: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return [resource.name for resource in response.resources]


def test_delta_sends_only_what_changed_and_names_what_went_away() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        cache.set("a", mesh_snapshot("v1", 3))
        async with ads_server(cache) as server, channel_to(server) as channel:
            client = DeltaClient(channel, "a")
            client.send(CLUSTER_TYPE)  # nothing named: the wildcard
            cds = await client.recv()
            assert names(cds) == ["svc0", "svc1", "svc2"]
            assert all(r.version and r.resource.type_url == CLUSTER_TYPE for r in cds.resources)
            cluster = cluster_pb2.Cluster()
            assert cds.resources[0].resource.Unpack(cluster) and cluster.name == "svc0"
            client.send(CLUSTER_TYPE, nonce=cds.nonce)
            client.send(ENDPOINT_TYPE, ["svc0", "svc1", "svc2"])
            eds = await client.recv()
            assert names(eds) == ["svc0", "svc1", "svc2"]
            client.send(ENDPOINT_TYPE, nonce=eds.nonce)
            await client.expect_silence(0.2)

            # One assignment changes: only it is sent; CDS is untouched.
            cache.set("a", mesh_snapshot("v2", 3, first_port=31000))
            eds = await client.recv()
            assert eds.type_url == ENDPOINT_TYPE and names(eds) == ["svc0"]
            assignment = endpoint_pb2.ClusterLoadAssignment()
            assert eds.resources[0].resource.Unpack(assignment)
            address = assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
            assert address.port_value == 31000
            client.send(ENDPOINT_TYPE, nonce=eds.nonce)
            await client.expect_silence(0.2)

            # A new cluster: one cluster, then one assignment once subscribed.
            cache.set("a", mesh_snapshot("v3", 4, first_port=31000))
            cds = await client.recv()
            assert names(cds) == ["svc3"] and not cds.removed_resources
            client.send(CLUSTER_TYPE, nonce=cds.nonce)
            client.send(ENDPOINT_TYPE, ["svc3"])
            eds = await client.recv()
            assert names(eds) == ["svc3"]
            client.send(ENDPOINT_TYPE, nonce=eds.nonce)

            # Clusters that go away are named as removed, with nothing else.
            cache.set("a", mesh_snapshot("v4", 2, first_port=31000))
            cds = await client.recv()
            assert names(cds) == [] and list(cds.removed_resources) == ["svc2", "svc3"]
            client.send(CLUSTER_TYPE, nonce=cds.nonce)
            eds = await client.recv()
            assert list(eds.removed_resources) == ["svc2", "svc3"]
            client.send(ENDPOINT_TYPE, unsubscribe=["svc2", "svc3"], nonce=eds.nonce)
            await client.expect_silence(0.2)
            [status] = server.service.status()
            states = {t.short_name: t for t in status.types}
            assert states["CDS"].state is SyncState.SYNCED and states["CDS"].wildcard
            assert states["EDS"].state is SyncState.SYNCED
            assert states["EDS"].resource_names == ("svc0", "svc1")
            client.close()

    run(main)


def test_delta_nack_is_reported_and_a_reconnect_gets_only_what_differs() -> None:
    async def main() -> None:
        cache = SnapshotCache(debounce=0.01)
        cache.set("a", mesh_snapshot("v1", 3))
        async with ads_server(cache) as server, channel_to(server) as channel:
            client = DeltaClient(channel, "a")
            client.send(ENDPOINT_TYPE, ["svc0", "svc1", "svc2"])
            eds = await client.recv()
            held = {r.name: r.version for r in eds.resources}
            client.send(ENDPOINT_TYPE, nonce=eds.nonce, error="port 20000 is taken")
            await client.expect_silence(0.2)  # the rejected content is not sent again
            [status] = server.service.status()
            eds_status = status.type("EDS")
            assert eds_status is not None and eds_status.state is SyncState.STALE
            assert eds_status.last_nack is not None
            assert eds_status.last_nack.message == "port 20000 is taken"
            client.close()
            for _ in range(100):  # the server forgets the node once its stream is gone
                if not server.service.status():
                    break
                await asyncio.sleep(0.02)
            assert not server.service.status()

            cache.set("a", mesh_snapshot("v2", 3, first_port=32000))
            again = DeltaClient(channel, "a")
            again.send(ENDPOINT_TYPE, ["svc0", "svc1", "svc2", "svc9"], initial=held)
            eds = await again.recv()
            assert names(eds) == ["svc0"]  # svc1 and svc2 are held as they are
            again.send(ENDPOINT_TYPE, nonce=eds.nonce)
            await again.expect_silence(0.2)
            again.close()

    run(main)
