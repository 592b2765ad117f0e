"""Unix socket (`pipe`) addresses: cluster endpoints and the ADS cluster may use them,
listeners and the admin port may not; `with_ads` writes one for `--xds unix:PATH`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format

from trellis.cli.proxy_config_view import endpoints
from trellis.core.addresses import PIPE_PATH_MAX_BYTES, PipeAddress, SocketAddress
from trellis.core.config import ProxyConfig
from trellis.errors import ConfigError
from trellis.xds.bootstrap import ADS_CLUSTER, parse_bootstrap, with_ads
from trellis.xds.compile import compile_bootstrap
from trellis.xds.compile_dynamic import endpoint_resource
from trellis.xds.config_dump import config_dump

SOCKET = "/run/trellis/xds.sock"
ENDPOINT = "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0]"

Compile = Callable[[dict[str, Any]], ProxyConfig]


def _with_pipe_endpoint(minimal: dict[str, Any], pipe: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(minimal)
    endpoint = data["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    endpoint["lb_endpoints"][0]["endpoint"]["address"] = {"pipe": pipe}
    return data


def test_with_ads_writes_a_pipe_endpoint_for_a_unix_socket() -> None:
    message = with_ads(parse_bootstrap({"node": {"id": "a"}}, "--xds"), PipeAddress(SOCKET))
    (ads,) = [c for c in message.static_resources.clusters if c.name == ADS_CLUSTER]
    address = ads.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.WhichOneof("address") == "pipe"
    assert address.pipe.path == SOCKET
    config = compile_bootstrap(message, "--xds")
    assert config.ads is not None
    assert config.ads.address == PipeAddress(SOCKET)
    assert str(config.ads.address) == SOCKET


def test_with_ads_still_writes_a_socket_address_for_host_port() -> None:
    message = with_ads(parse_bootstrap({}, "--xds"), SocketAddress("127.0.0.1", 15010))
    config = compile_bootstrap(message, "--xds")
    assert config.ads is not None and config.ads.address == SocketAddress("127.0.0.1", 15010)


def test_the_config_dump_shows_the_pipe() -> None:
    message = with_ads(parse_bootstrap({}, "--xds"), PipeAddress(SOCKET))
    dump = config_dump(message, 0.0)
    bootstrap = next(c for c in dump["configs"] if c["@type"].endswith("BootstrapConfigDump"))
    (cluster,) = bootstrap["bootstrap"]["static_resources"]["clusters"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": SOCKET}}


def test_proxy_config_endpoints_names_the_socket_path() -> None:
    message = with_ads(parse_bootstrap({}, "--xds"), PipeAddress(SOCKET))
    view = endpoints(config_dump(message, 0.0))
    assert view.rows == [(SOCKET, "HEALTHY", ADS_CLUSTER)]


def test_a_static_cluster_endpoint_may_be_a_pipe(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    config = compile_dict(_with_pipe_endpoint(minimal_dict, {"path": "/tmp/app.sock"}))
    assert config.clusters[0].endpoints[0].address == PipeAddress("/tmp/app.sock")


def test_an_eds_endpoint_may_be_a_pipe() -> None:
    assignment = json_format.ParseDict(
        {
            "cluster_name": "app",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": SOCKET}}}}]}
            ],
        },
        endpoint_pb2.ClusterLoadAssignment(),
    )
    assert [e.address for e in endpoint_resource(assignment)] == [PipeAddress(SOCKET)]


@pytest.mark.parametrize(
    ("pipe", "field", "message"),
    [
        ({"path": ""}, "pipe.path", "path is required"),
        ({"path": "@trellis"}, "pipe.path", "abstract Unix sockets are not supported"),
        ({"path": "/" + "x" * PIPE_PATH_MAX_BYTES}, "pipe.path", "at most 107"),
        ({"path": SOCKET, "mode": 0o600}, "pipe.mode", "not supported"),
    ],
)
def test_bad_pipes_are_refused_naming_the_field(
    minimal_dict: dict[str, Any],
    compile_dict: Compile,
    pipe: dict[str, Any],
    field: str,
    message: str,
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        compile_dict(_with_pipe_endpoint(minimal_dict, pipe))
    assert info.value.path == f"{ENDPOINT}.endpoint.address.{field}"


def test_a_listener_cannot_listen_on_a_pipe(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    data = copy.deepcopy(minimal_dict)
    data["static_resources"]["listeners"][0]["address"] = {"pipe": {"path": SOCKET}}
    with pytest.raises(ConfigError, match="only as a cluster endpoint's address") as info:
        compile_dict(data)
    assert info.value.path == "static_resources.listeners[0].address.pipe"


def test_the_admin_port_cannot_be_a_pipe(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    data = {**minimal_dict, "admin": {"address": {"pipe": {"path": SOCKET}}}}
    with pytest.raises(ConfigError, match="only as a cluster endpoint's address") as info:
        compile_dict(data)
    assert info.value.path == "admin.address.pipe"
