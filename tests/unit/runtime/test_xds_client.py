"""The proxy's ADS client applying responses, state of the world and delta, and VHDS
over delta (no sockets: responses fed directly)."""

from __future__ import annotations

import dataclasses

import uvloop
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from trellis.core.addresses import SocketAddress
from trellis.core.config import AdsConfig, ClusterAction, NodeIdentity, ProxyConfig, RouteConfig
from trellis.runtime.server import ProxyServer
from trellis.runtime.xds_client import XdsClient
from trellis.xds.compile_dynamic import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from trellis.xds.vhds import VHDS_CLIENT_FEATURE, VIRTUAL_HOST_TYPE

ADS = AdsConfig(cluster="xds", address=SocketAddress("127.0.0.1", 1), lds=False)


def _response(type_url: str, version: str, *messages: Message) -> discovery_pb2.DiscoveryResponse:
    response = discovery_pb2.DiscoveryResponse(
        type_url=type_url, version_info=version, nonce=version
    )
    for message in messages:
        packed = any_pb2.Any()
        packed.Pack(message)
        response.resources.append(packed)
    return response


def _eds_cluster(name: str) -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {
            "name": name,
            "type": "EDS",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
        },
        cluster_pb2.Cluster(),
    )


def _endpoints(name: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    return json_format.ParseDict(
        {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        endpoint_pb2.ClusterLoadAssignment(),
    )


def test_a_partial_eds_response_keeps_the_other_subscribed_assignments() -> None:
    async def main() -> None:
        server = ProxyServer(ProxyConfig(NodeIdentity(), (), (), ads=ADS), dict)
        client = XdsClient(ADS, base_pb2.Node(id="n"), server.manager, lambda: None)
        client.state.start()
        clusters = server.manager.clusters.clusters
        requests = await client._handle(
            _response(CLUSTER_TYPE, "1", _eds_cluster("a"), _eds_cluster("b"))
        )
        assert sorted(requests[-1].resource_names) == ["a", "b"]
        await client._handle(
            _response(ENDPOINT_TYPE, "1", _endpoints("a", 1001), _endpoints("b", 2001))
        )
        # xDS lets a server send only what changed for EDS/RDS: "b" must stay.
        await client._handle(_response(ENDPOINT_TYPE, "2", _endpoints("a", 1002)))
        assert [str(h.address) for h in clusters["a"].hosts] == ["127.0.0.1:1002"]
        assert [str(h.address) for h in clusters["b"].hosts] == ["127.0.0.1:2001"]
        # An assignment no longer subscribed goes with its cluster.
        await client._handle(_response(CLUSTER_TYPE, "2", _eds_cluster("a")))
        await client._handle(_response(ENDPOINT_TYPE, "3", _endpoints("a", 1003)))
        assert sorted(client.status[ENDPOINT_TYPE].resources) == ["a"]
        assert "b" not in clusters

    uvloop.run(main())


def test_a_rejected_update_is_nacked_and_changes_nothing() -> None:
    async def main() -> None:
        server = ProxyServer(ProxyConfig(NodeIdentity(), (), (), ads=ADS), dict)
        client = XdsClient(ADS, base_pb2.Node(id="n"), server.manager, lambda: None)
        client.state.start()
        await client._handle(_response(CLUSTER_TYPE, "1", _eds_cluster("a")))
        bad = _eds_cluster("b")
        bad.lb_policy = cluster_pb2.Cluster.MAGLEV
        (nack,) = await client._handle(_response(CLUSTER_TYPE, "2", _eds_cluster("a"), bad))
        assert nack.version_info == "1" and "lb_policy" in nack.error_detail.message
        assert sorted(server.manager.clusters.clusters) == ["a"]
        assert client.status[CLUSTER_TYPE].rejected_version == "2"

    uvloop.run(main())


DELTA_ADS = dataclasses.replace(ADS, delta=True)


def _delta(
    type_url: str, nonce: str, *messages: Message, removed: tuple[str, ...] = ()
) -> discovery_pb2.DeltaDiscoveryResponse:
    response = discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, nonce=nonce, system_version_info=nonce, removed_resources=removed
    )
    for message in messages:
        name = getattr(message, "cluster_name", "") or getattr(message, "name", "")
        entry = response.resources.add(name=name, version=f"{name}@{nonce}")
        entry.resource.Pack(message)
    return response


def test_delta_applies_additions_and_removals_and_follows_cluster_references() -> None:
    async def main() -> None:
        server = ProxyServer(ProxyConfig(NodeIdentity(), (), (), ads=DELTA_ADS), dict)
        client = XdsClient(DELTA_ADS, base_pb2.Node(id="n"), server.manager, lambda: None)
        (cds,) = client.state.start()
        assert cds.type_url == CLUSTER_TYPE and not cds.resource_names_subscribe
        clusters = server.manager.clusters.clusters
        ack, eds = await client._handle(_delta(CLUSTER_TYPE, "1", _eds_cluster("a")))
        assert ack.response_nonce == "1" and list(eds.resource_names_subscribe) == ["a"]
        await client._handle(_delta(ENDPOINT_TYPE, "2", _endpoints("a", 1001)))
        # A new cluster comes alone; the one already held stays, with its endpoints.
        _, eds = await client._handle(_delta(CLUSTER_TYPE, "3", _eds_cluster("b")))
        assert list(eds.resource_names_subscribe) == ["b"]
        await client._handle(_delta(ENDPOINT_TYPE, "4", _endpoints("b", 2001)))
        assert sorted(clusters) == ["a", "b"]
        assert [str(h.address) for h in clusters["a"].hosts] == ["127.0.0.1:1001"]
        # A removal drops the cluster and unsubscribes its assignment at once.
        _, eds = await client._handle(_delta(CLUSTER_TYPE, "5", removed=("a",)))
        assert list(eds.resource_names_unsubscribe) == ["a"]
        assert sorted(clusters) == ["b"]
        assert sorted(client.status[ENDPOINT_TYPE].resources) == ["b"]
        assert client.status[CLUSTER_TYPE].version == "5"

    uvloop.run(main())


def test_delta_rejected_update_is_nacked_and_changes_nothing() -> None:
    async def main() -> None:
        server = ProxyServer(ProxyConfig(NodeIdentity(), (), (), ads=DELTA_ADS), dict)
        client = XdsClient(DELTA_ADS, base_pb2.Node(id="n"), server.manager, lambda: None)
        client.state.start()
        await client._handle(_delta(CLUSTER_TYPE, "1", _eds_cluster("a")))
        bad = _eds_cluster("b")
        bad.lb_policy = cluster_pb2.Cluster.MAGLEV
        (nack,) = await client._handle(_delta(CLUSTER_TYPE, "2", _eds_cluster("c"), bad))
        assert nack.response_nonce == "2" and "lb_policy" in nack.error_detail.message
        assert sorted(server.manager.clusters.clusters) == ["a"]
        assert client.status[CLUSTER_TYPE].rejected_version == "2"
        # The fix of "b" alone completes the rejected response: "c" comes with it.
        await client._handle(_delta(CLUSTER_TYPE, "3", _eds_cluster("b")))
        assert sorted(server.manager.clusters.clusters) == ["a", "b", "c"]
        assert client.status[CLUSTER_TYPE].rejected_reason == ""

    uvloop.run(main())


LDS_DELTA_ADS = dataclasses.replace(ADS, delta=True, lds=True, cds=False)
VHDS_SOURCE = {"config_source": {"ads": {}, "resource_api_version": "V3"}}


def _vhds_route(name: str) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict(
        {"name": name, "vhds": VHDS_SOURCE}, route_pb2.RouteConfiguration()
    )


def _host(name: str, *domains: str, cluster: str = "c") -> route_components_pb2.VirtualHost:
    route = {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
    return json_format.ParseDict(
        {"name": name, "domains": list(domains), "routes": [route]},
        route_components_pb2.VirtualHost(),
    )


def _vhds_client() -> tuple[XdsClient, ProxyServer, list[bool]]:
    server = ProxyServer(ProxyConfig(NodeIdentity(), (), (), ads=LDS_DELTA_ADS), dict)
    live: list[bool] = []
    client = XdsClient(
        LDS_DELTA_ADS, base_pb2.Node(id="n"), server.manager, lambda: live.append(True)
    )
    client.state.start()
    return client, server, live


def _cluster_of(config: RouteConfig, host: int) -> str:
    action = config.virtual_hosts[host].routes[0].action
    assert isinstance(action, ClusterAction)
    return action.clusters[0].name


def test_only_delta_with_lds_asks_for_virtual_hosts_and_the_callers_node_stays() -> None:
    node = base_pb2.Node(id="n", client_features=["x"])
    for ads, features in (
        (LDS_DELTA_ADS, ["x", VHDS_CLIENT_FEATURE]),
        (dataclasses.replace(LDS_DELTA_ADS, delta=False), ["x"]),
        (DELTA_ADS, ["x"]),  # no LDS: no routes
    ):
        server = ProxyServer(ProxyConfig(NodeIdentity(), (), (), ads=ads), dict)
        client = XdsClient(ads, node, server.manager, lambda: None)
        client.state.start()
        assert (VIRTUAL_HOST_TYPE in client.status) == (features != ["x"])
        request = client.state.want(ROUTE_TYPE, {"r"}) or client.state.want(ENDPOINT_TYPE, {"e"})
        assert request is not None and list(request.node.client_features) == features
    assert list(node.client_features) == ["x"]


def test_vhds_hosts_are_merged_into_their_route_configuration() -> None:
    async def main() -> None:
        client, server, live = _vhds_client()
        # As if LDS had come with listeners that name these route configurations:
        client.status[LISTENER_TYPE].last_updated = 1.0
        client.state.want(ROUTE_TYPE, {"outbound", "inbound"})
        ack, subscribe = await client._handle(
            _delta(ROUTE_TYPE, "r1", _vhds_route("outbound"), _vhds_route("inbound"))
        )
        assert ack.response_nonce == "r1" and subscribe.type_url == VIRTUAL_HOST_TYPE
        assert list(subscribe.resource_names_subscribe) == ["inbound", "outbound"]
        routes = server.manager.routes
        assert routes["outbound"].virtual_hosts == ()  # applied with what it holds: none
        assert not live  # initialization waits for the first virtual hosts
        hosts = (_host("outbound/a", "a"), _host("outbound/b", "b"), _host("inbound/x", "x"))
        await client._handle(_delta(VIRTUAL_HOST_TYPE, "v1", *hosts))
        assert live == [True]
        routes = server.manager.routes
        assert [h.name for h in routes["outbound"].virtual_hosts] == ["outbound/a", "outbound/b"]
        assert [h.domains for h in routes["inbound"].virtual_hosts] == [("x",)]
        # One changed host: only its route configuration is merged again, the other
        # hosts keep their compiled objects.
        before = dict(routes)
        await client._handle(_delta(VIRTUAL_HOST_TYPE, "v2", _host("outbound/a", "a", cluster="d")))
        routes = server.manager.routes
        assert routes["inbound"] is before["inbound"]
        assert _cluster_of(routes["outbound"], 0) == "d"
        assert routes["outbound"].virtual_hosts[1] is before["outbound"].virtual_hosts[1]
        # A removal drops the host.
        await client._handle(_delta(VIRTUAL_HOST_TYPE, "v3", removed=("outbound/b",)))
        assert [h.name for h in server.manager.routes["outbound"].virtual_hosts] == ["outbound/a"]
        assert sorted(client.status[VIRTUAL_HOST_TYPE].resources) == ["inbound/x", "outbound/a"]

    uvloop.run(main())


def test_a_bad_virtual_host_is_nacked_by_name_and_field_and_the_routes_stay() -> None:
    async def main() -> None:
        client, server, _ = _vhds_client()
        client.state.want(ROUTE_TYPE, {"outbound"})
        await client._handle(_delta(ROUTE_TYPE, "r1", _vhds_route("outbound")))
        await client._handle(_delta(VIRTUAL_HOST_TYPE, "v1", _host("outbound/a", "a")))
        applied = server.manager.routes["outbound"]
        bad = _host("outbound/b", "b")
        bad.routes[0].route.cluster = ""
        (nack,) = await client._handle(_delta(VIRTUAL_HOST_TYPE, "v2", bad))
        assert nack.response_nonce == "v2"
        assert nack.error_detail.message.startswith(
            "VHDS virtual host 'outbound/b': routes[0].route"
        )
        # The rejected "outbound/b" counts as delivered: the next response completes it.
        fixed, clash = _host("outbound/b", "b"), _host("outbound/c", "A")
        (nack,) = await client._handle(_delta(VIRTUAL_HOST_TYPE, "v3", fixed, clash))
        assert (
            "'outbound/c': domains[0]: domain 'a' is already used at VHDS virtual host 'outbound/a'"
            in (nack.error_detail.message)
        )
        assert server.manager.routes["outbound"] is applied
        assert client.status[VIRTUAL_HOST_TYPE].rejected_version == "v3"
        await client._handle(_delta(VIRTUAL_HOST_TYPE, "v4", _host("outbound/c", "c")))
        names = [h.name for h in server.manager.routes["outbound"].virtual_hosts]
        assert names == ["outbound/a", "outbound/b", "outbound/c"]

    uvloop.run(main())


def test_a_route_configuration_losing_vhds_unsubscribes_and_forgets_its_hosts() -> None:
    async def main() -> None:
        client, server, _ = _vhds_client()
        client.state.want(ROUTE_TYPE, {"outbound"})
        await client._handle(_delta(ROUTE_TYPE, "r1", _vhds_route("outbound")))
        await client._handle(_delta(VIRTUAL_HOST_TYPE, "v1", _host("outbound/a", "a")))
        whole = route_pb2.RouteConfiguration(name="outbound", virtual_hosts=[_host("own", "o")])
        _, unsubscribe = await client._handle(_delta(ROUTE_TYPE, "r2", whole))
        assert list(unsubscribe.resource_names_unsubscribe) == ["outbound"]
        assert [h.name for h in server.manager.routes["outbound"].virtual_hosts] == ["own"]
        assert not client.status[VIRTUAL_HOST_TYPE].resources

    uvloop.run(main())


def test_vhds_over_state_of_the_world_is_nacked() -> None:
    async def main() -> None:
        ads = dataclasses.replace(ADS, lds=True)
        server = ProxyServer(ProxyConfig(NodeIdentity(), (), (), ads=ads), dict)
        client = XdsClient(ads, base_pb2.Node(id="n"), server.manager, lambda: None)
        client.state.start()
        client.state.want(ROUTE_TYPE, {"outbound"})
        (nack,) = await client._handle(_response(ROUTE_TYPE, "1", _vhds_route("outbound")))
        assert "'outbound': vhds: VHDS is only for" in nack.error_detail.message

    uvloop.run(main())
