"""A changed listener whose new routes have not arrived keeps serving on the old ones
(state of the world and delta xDS)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import uvloop
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from trellis.core.addresses import SocketAddress
from trellis.core.config import AdsConfig, NodeIdentity, ProxyConfig
from trellis.runtime.server import ProxyServer
from trellis.runtime.xds_client import XdsClient
from trellis.xds import protos  # noqa: F401 - registers the types typed_config names
from trellis.xds.compile_dynamic import LISTENER_TYPE, ROUTE_TYPE

from .bootstrap import free_port
from .test_xds_proxy import HCM
from .test_xds_proxy import _listener as listener_on

ADS = AdsConfig(cluster="xds", address=SocketAddress("127.0.0.1", 1), cds=False)


def _response(type_url: str, version: str, *messages: Message) -> discovery_pb2.DiscoveryResponse:
    response = discovery_pb2.DiscoveryResponse(
        type_url=type_url, version_info=version, nonce=version
    )
    for message in messages:
        packed = any_pb2.Any()
        packed.Pack(message)
        response.resources.append(packed)
    return response


def _delta(
    type_url: str, version: str, *messages: listener_pb2.Listener | route_pb2.RouteConfiguration
) -> discovery_pb2.DeltaDiscoveryResponse:
    """The delta form: only the resources that changed, each with its version."""
    response = discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, system_version_info=version, nonce=version
    )
    for message in messages:
        response.resources.add(name=message.name, version=version).resource.Pack(message)
    return response


def _routes(name: str, body: str) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict(
        {
            "name": name,
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": body}},
                        }
                    ],
                }
            ],
        },
        route_pb2.RouteConfiguration(),
    )


def _with_rds(listener: listener_pb2.Listener, name: str) -> listener_pb2.Listener:
    changed = listener_pb2.Listener()
    changed.CopyFrom(listener)
    hcm_any = changed.filter_chains[0].filters[0].typed_config
    data = json_format.MessageToDict(hcm_any)
    data["rds"]["route_config_name"] = name
    data["@type"] = HCM + "HttpConnectionManager"
    json_format.ParseDict(data, hcm_any)
    return changed


async def _get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_changed_listener_waits_for_its_routes_while_the_old_one_serves(delta: bool) -> None:
    ads = dataclasses.replace(ADS, delta=delta)
    respond = _delta if delta else _response

    async def main() -> None:
        server = ProxyServer(ProxyConfig(NodeIdentity(), (), (), ads=ads), dict)
        client = XdsClient(ads, base_pb2.Node(id="n"), server.manager, lambda: None)
        client.state.start()
        port = free_port()
        first = listener_on(port)  # its HCM asks RDS for "outbound"
        await client._handle(respond(LISTENER_TYPE, "1", first))
        await client._handle(respond(ROUTE_TYPE, "1", _routes("outbound", "old")))
        assert (await _get(port)).endswith(b"old")
        await client._handle(respond(LISTENER_TYPE, "2", _with_rds(first, "next")))
        assert (await _get(port)).endswith(b"old"), "the listener went away while warming"
        await client._handle(respond(ROUTE_TYPE, "2", _routes("next", "new")))
        assert (await _get(port)).endswith(b"new")
        await server.shutdown(drain=False)

    uvloop.run(main())
