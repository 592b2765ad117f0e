"""An ADS test client (the generated grpc stub over a real channel) and resource builders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, struct_pb2
from google.rpc import status_pb2

from trellis.controlplane.ads import (
    AdsServer,
    AggregatedDiscoveryService,
    SnapshotSource,
    serve_ads,
)
from trellis.controlplane.snapshot import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Snapshot,
)
from trellis.controlplane.snapshot_cache import SnapshotCache

TEST_TIMEOUT = 30.0
T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]], timeout: float = TEST_TIMEOUT) -> T:
    """Run one async test body in a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


def node(node_id: str, **metadata: Any) -> base_pb2.Node:
    result = base_pb2.Node(id=node_id, cluster="test")
    if metadata:
        result.metadata.update(metadata)
    return result


class AdsClient:
    """One ADS stream driven by hand: send requests, read responses, ACK or NACK them."""

    def __init__(self, channel: grpc.aio.Channel, node: base_pb2.Node) -> None:
        self._node = node
        self._node_sent = False
        self._outbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self._inbox: asyncio.Queue[discovery_pb2.DiscoveryResponse | BaseException] = (
            asyncio.Queue()
        )
        self.arrivals: list[float] = []  # time.monotonic() of each response
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(self._requests())
        # Reading in one task: cancelling a grpc.aio read would cancel the whole call.
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.arrivals.append(time.monotonic())
                self._inbox.put_nowait(response)
            self._inbox.put_nowait(EOFError("the server ended the stream"))
        except BaseException as error:  # handed to the test that reads next
            self._inbox.put_nowait(error)

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            request = await self._outbox.get()
            if request is None:
                return
            yield request

    def send(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            version_info=version,
            response_nonce=nonce,
        )
        if not self._node_sent:
            request.node.CopyFrom(self._node)
            self._node_sent = True
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._outbox.put_nowait(request)

    def ack(self, response: discovery_pb2.DiscoveryResponse, names: Iterable[str] = ()) -> None:
        self.send(response.type_url, names, version=response.version_info, nonce=response.nonce)

    def nack(
        self,
        response: discovery_pb2.DiscoveryResponse,
        message: str,
        *,
        previous: str,
        names: Iterable[str] = (),
    ) -> None:
        self.send(response.type_url, names, version=previous, nonce=response.nonce, error=message)

    async def recv(self, within: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        item = await asyncio.wait_for(self._inbox.get(), within)
        if isinstance(item, BaseException):
            raise item
        return item

    async def expect_silence(self, seconds: float = 0.3) -> None:
        try:
            item = await asyncio.wait_for(self._inbox.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {_summary(item)}")

    async def ended(self, within: float = 5.0) -> BaseException:
        """Wait for the stream to end; returns EOFError (OK status) or the RPC error."""
        while True:
            item = await asyncio.wait_for(self._inbox.get(), within)
            if isinstance(item, BaseException):
                return item

    def close(self) -> None:
        self._outbox.put_nowait(None)

    def cancel(self) -> None:
        self.call.cancel()


def _summary(response: object) -> str:
    if not isinstance(response, discovery_pb2.DiscoveryResponse):
        return repr(response)
    return f"{response.type_url} v={response.version_info} n={len(response.resources)}"


def names_of(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    message_types = {
        LISTENER_TYPE: listener_pb2.Listener,
        ROUTE_TYPE: route_pb2.RouteConfiguration,
        CLUSTER_TYPE: cluster_pb2.Cluster,
        ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
    }
    result = []
    for packed in response.resources:
        message = message_types[response.type_url]()
        assert packed.Unpack(message)
        field = "cluster_name" if response.type_url == ENDPOINT_TYPE else "name"
        result.append(getattr(message, field))
    return sorted(result)


@asynccontextmanager
async def ads_server(
    cache: SnapshotCache, source: SnapshotSource | None = None, *, forget: bool = True
) -> AsyncIterator[AdsServer]:
    service = AggregatedDiscoveryService(cache, source, forget_on_disconnect=forget)
    server = await serve_ads("127.0.0.1:0", cache, service=service)
    try:
        yield server
    finally:
        await server.stop(0.5)


@asynccontextmanager
async def channel_to(server: AdsServer) -> AsyncIterator[grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield channel
    finally:
        await channel.close()


# Resource builders: a listener whose HCM uses RDS (or an api_listener for gRPC),
# a route to one or more weighted clusters, EDS clusters, and endpoints.


def _hcm(route_name: str, stat_prefix: str) -> any_pb2.Any:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        rds=hcm_pb2.Rds(
            route_config_name=route_name,
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
    )
    manager.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(
        router_pb2.Router()
    )
    packed = any_pb2.Any()
    packed.Pack(manager)
    return packed


def listener(name: str, route_name: str, port: int = 15001) -> listener_pb2.Listener:
    result = listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        ),
    )
    chain = result.filter_chains.add()
    chain.filters.append(
        listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager",
            typed_config=_hcm(route_name, name),
        )
    )
    return result


def api_listener(name: str, route_name: str) -> listener_pb2.Listener:
    """A listener as gRPC proxyless clients want it: an api_listener with an HCM."""
    return listener_pb2.Listener(
        name=name,
        api_listener=api_listener_pb2.ApiListener(api_listener=_hcm(route_name, name)),
    )


def route(
    name: str, clusters: dict[str, int], domains: Iterable[str] = ("*",)
) -> route_pb2.RouteConfiguration:
    action = route_components_pb2.RouteAction()
    if len(clusters) == 1:
        action.cluster = next(iter(clusters))
    else:
        for cluster, weight in clusters.items():
            action.weighted_clusters.clusters.add(name=cluster).weight.value = weight
    entry = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=""), route=action
    )
    host = route_components_pb2.VirtualHost(name=name, domains=list(domains), routes=[entry])
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])


def cluster(name: str, service_name: str = "") -> cluster_pb2.Cluster:
    result = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    result.connect_timeout.FromMilliseconds(1000)
    result.eds_cluster_config.service_name = service_name
    result.eds_cluster_config.eds_config.ads.SetInParent()
    result.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    result.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
    return result


def endpoints(name: str, ports: Iterable[int]) -> endpoint_pb2.ClusterLoadAssignment:
    locality = endpoint_components_pb2.LocalityLbEndpoints(priority=0)
    locality.locality.SetInParent()  # grpc requires the field, empty is fine
    locality.load_balancing_weight.value = 1  # grpc ignores localities without a weight
    for port in ports:
        entry = locality.lb_endpoints.add()
        entry.endpoint.address.socket_address.address = "127.0.0.1"
        entry.endpoint.address.socket_address.port_value = port
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[locality])


def mesh_snapshot(
    version: str, services: int, *, port_base: int = 20000, first_port: int | None = None
) -> Snapshot:
    """One listener and route over `services` EDS clusters; service 0's port is adjustable."""
    clusters = [f"svc{i}" for i in range(services)]
    items: list[Any] = [listener("outbound", "routes"), route("routes", {clusters[0]: 1})]
    for i, name in enumerate(clusters):
        port = first_port if (i == 0 and first_port is not None) else port_base + i
        items += [cluster(name), endpoints(name, [port])]
    return Snapshot.of(version, items)


def struct(**fields: Any) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(fields)
    return result
