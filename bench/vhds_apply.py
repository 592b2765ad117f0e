"""How long the proxy takes to apply a route change: one VirtualHost over VHDS, or the
whole `outbound` RouteConfiguration over RDS.

The route configuration is the translator's `outbound` for `--services` services
(bench/_xds_config.py's mesh). Each run feeds `XdsClient._handle` (decode,
compile, merge, apply, ACK) delta responses directly, no sockets:

- `vhds`: the client speaks VHDS; each change is one virtual host with a new
  weight (what the control plane sends a VHDS client when a VirtualService's
  weight changes);
- `rds`: the same change as a whole RouteConfiguration (what a client without
  VHDS gets).

Prints the median and the spread of `--changes` changes for each. Noisy on a
shared machine: run it under `flock /tmp/trellis-bench.lock`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time

import yaml
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from _xds_config import NAMESPACE, OUTBOUND_ROUTE, mesh
from trellis.api.loader import load_documents
from trellis.core.addresses import SocketAddress
from trellis.core.config import AdsConfig, NodeIdentity, ProxyConfig
from trellis.runtime.server import ProxyServer
from trellis.runtime.xds_client import XdsClient
from trellis.xds import vhds
from trellis.xds.compile_dynamic import LISTENER_TYPE, ROUTE_TYPE
from trellis.xds.mesh import MeshConfig, ProxyIdentity, translate
from trellis.xds.supported import HCM_TYPE

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

ADS = AdsConfig(
    cluster="xds", address=SocketAddress("127.0.0.1", 1), lds=True, cds=False, delta=True
)


def outbound(services: int) -> route_pb2.RouteConfiguration:
    text = yaml.safe_dump_all(mesh(services))
    config = MeshConfig.of(load_documents(text, "bench"))
    proxy = ProxyIdentity("bench-0", "bench-0", NAMESPACE)
    routes = translate(config, proxy)[ROUTE_TYPE]
    route = routes[OUTBOUND_ROUTE]
    assert isinstance(route, route_pb2.RouteConfiguration)
    return route


def _response(
    type_url: str, nonce: int, *messages: Message
) -> discovery_pb2.DeltaDiscoveryResponse:
    response = discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, nonce=str(nonce), system_version_info=str(nonce)
    )
    for message in messages:
        name = getattr(message, "name", "")
        response.resources.add(name=name, version=str(nonce)).resource.Pack(message)
    return response


def _reweighted(
    host: route_components_pb2.VirtualHost, nonce: int
) -> route_components_pb2.VirtualHost:
    """`host` with a new timeout on its first route: a change of one virtual host."""
    changed = route_components_pb2.VirtualHost()
    changed.CopyFrom(host)
    changed.routes[0].route.timeout.seconds = 1 + nonce % 50
    return changed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _listener() -> listener_pb2.Listener:
    """An HTTP listener on a free 127.0.0.1 port that takes `outbound` by RDS: each
    route change rebuilds its route table, as in a sidecar."""
    hcm = {
        "@type": "type.googleapis.com/" + HCM_TYPE,
        "stat_prefix": "outbound",
        "rds": {
            "route_config_name": OUTBOUND_ROUTE,
            "config_source": {"ads": {}, "resource_api_version": "V3"},
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    listener = {
        "name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": _free_port()}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }
    return json_format.ParseDict(listener, listener_pb2.Listener())


async def _client() -> XdsClient:
    """A delta client holding the listener (its route configuration subscribed)."""
    server = ProxyServer(ProxyConfig(NodeIdentity(), (), (), ads=ADS), dict)
    client = XdsClient(ADS, base_pb2.Node(id="bench"), server.manager, lambda: None)
    client.state.start()
    await _timed(client, _response(LISTENER_TYPE, 0, _listener()))
    return client


async def _timed(client: XdsClient, response: discovery_pb2.DeltaDiscoveryResponse) -> float:
    started = time.perf_counter()
    requests = await client._handle(response)
    elapsed = time.perf_counter() - started
    assert not requests[0].HasField("error_detail"), requests[0].error_detail.message
    return elapsed


async def run_vhds(whole: route_pb2.RouteConfiguration, changes: int) -> list[float]:
    client = await _client()
    slim, hosts = vhds.split(whole)
    await _timed(client, _response(ROUTE_TYPE, 1, slim))
    await _timed(client, _response(vhds.VIRTUAL_HOST_TYPE, 2, *hosts))
    times = []
    for i in range(changes):
        host = hosts[(i * 37) % len(hosts)]
        times.append(
            await _timed(client, _response(vhds.VIRTUAL_HOST_TYPE, 3 + i, _reweighted(host, i)))
        )
    return times


async def run_rds(whole: route_pb2.RouteConfiguration, changes: int) -> list[float]:
    client = await _client()
    await _timed(client, _response(ROUTE_TYPE, 1, whole))
    times = []
    for i in range(changes):
        changed = route_pb2.RouteConfiguration()
        changed.CopyFrom(whole)
        index = (i * 37) % len(whole.virtual_hosts)
        changed.virtual_hosts[index].CopyFrom(_reweighted(whole.virtual_hosts[index], i))
        # Serialized and parsed as off the wire: a new message, compiled anew.
        times.append(await _timed(client, _response(ROUTE_TYPE, 2 + i, changed)))
    return times


def _line(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return f"{name:5} median {statistics.median(ms):8.2f} ms   min {ms[0]:8.2f}   max {ms[-1]:8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000, help="virtual hosts in outbound")
    parser.add_argument("--changes", type=int, default=10, help="measured changes per kind")
    args = parser.parse_args()
    if args.services < 1 or args.changes < 1:
        parser.error("--services and --changes must be at least 1")
    whole = outbound(args.services)
    print(f"outbound: {len(whole.virtual_hosts)} virtual hosts, {whole.ByteSize()} bytes")
    vhds_times = asyncio.run(run_vhds(whole, args.changes))
    rds_times = asyncio.run(run_rds(whole, args.changes))
    print(_line("vhds", vhds_times))
    print(_line("rds", rds_times))
    print(f"rds/vhds median: {statistics.median(rds_times) / statistics.median(vhds_times):.0f}x")


if __name__ == "__main__":
    main()
