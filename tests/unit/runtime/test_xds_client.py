"""The proxy's ADS client applying responses, state of the world and delta (no sockets:
responses fed directly)."""

from __future__ import annotations

import dataclasses

import uvloop
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from trellis.core.addresses import SocketAddress
from trellis.core.config import AdsConfig, NodeIdentity, ProxyConfig
from trellis.runtime.server import ProxyServer
from trellis.runtime.xds_client import XdsClient
from trellis.xds.compile_dynamic import CLUSTER_TYPE, ENDPOINT_TYPE

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
