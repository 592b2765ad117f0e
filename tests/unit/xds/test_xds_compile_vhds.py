"""Compiling VHDS: a route configuration with `vhds`, one virtual host on its own, the
two merged (domains unique across them), and the merged view in `/config_dump`."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import json_format

from trellis.core.config import RouteConfig
from trellis.errors import ConfigError
from trellis.xds.bootstrap import parse_bootstrap
from trellis.xds.compile import compile_bootstrap
from trellis.xds.compile_dynamic import (
    ROUTE_TYPE,
    route_resource,
    vhds_route_config,
    virtual_host_resource,
)
from trellis.xds.config_dump import config_dump
from trellis.xds.vhds import VIRTUAL_HOST_TYPE, split

ADS_SOURCE = {"config_source": {"ads": {}, "resource_api_version": "V3"}}


def _config(**fields: Any) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict({"name": "outbound", **fields}, route_pb2.RouteConfiguration())


def _host(name: str, *domains: str, cluster: str = "c") -> route_components_pb2.VirtualHost:
    route = {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
    return json_format.ParseDict(
        {"name": name, "domains": list(domains), "routes": [route]},
        route_components_pb2.VirtualHost(),
    )


def test_a_route_configuration_with_vhds_compiles_with_its_own_hosts_only() -> None:
    compiled = route_resource(_config(vhds=ADS_SOURCE), vhds=True)
    assert compiled == RouteConfig(name="outbound", virtual_hosts=())


def test_vhds_is_refused_where_the_proxy_does_not_ask_for_virtual_hosts() -> None:
    with pytest.raises(ConfigError, match=r"'outbound': vhds: VHDS is only for .* delta ADS"):
        route_resource(_config(vhds=ADS_SOURCE))


@pytest.mark.parametrize(
    ("vhds", "path"),
    [
        ({}, "vhds.config_source: config_source is required"),
        (
            {"config_source": {"path_config_source": {"path": "/x"}}},
            "vhds.config_source.path_config_source: field is not supported",
        ),
        (
            {"config_source": {"api_config_source": {"api_type": "GRPC"}}},
            r"vhds.config_source: only `ads: \{\}`",
        ),
    ],
)
def test_a_vhds_source_other_than_ads_is_an_error_naming_it(vhds: Any, path: str) -> None:
    with pytest.raises(ConfigError, match=path):
        route_resource(_config(vhds=vhds), vhds=True)


def test_an_inline_route_configuration_may_not_take_vhds() -> None:
    bootstrap = {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "in",
                                        "route_config": {"name": "r", "vhds": ADS_SOURCE},
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy."
                                                    "extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    }
    with pytest.raises(ConfigError, match=r"route_config.vhds: VHDS is only for"):
        compile_bootstrap(parse_bootstrap(bootstrap, "b.yaml"), "b.yaml")


def test_a_virtual_host_compiles_on_its_own_and_names_itself_in_errors() -> None:
    host = virtual_host_resource(_host("outbound/a", "A.example", "a"))
    assert host.name == "outbound/a" and host.domains == ("a.example", "a")
    bad = _host("outbound/b", "b")
    bad.routes[0].route.cluster = ""
    with pytest.raises(ConfigError, match=r"^VHDS virtual host 'outbound/b': routes\[0\]\.route"):
        virtual_host_resource(bad)
    unsupported = _host("outbound/c", "c")
    unsupported.include_request_attempt_count = True
    with pytest.raises(ConfigError, match="'outbound/c': include_request_attempt_count"):
        virtual_host_resource(unsupported)
    with pytest.raises(ConfigError, match=r"'outbound/d': domains\[1\]: .* already used at"):
        virtual_host_resource(_host("outbound/d", "d", "D"))


def test_merging_adds_the_hosts_in_name_order_after_the_own_ones() -> None:
    own = _config(vhds=ADS_SOURCE, virtual_hosts=[json_format.MessageToDict(_host("own", "o"))])
    config = route_resource(own, vhds=True)
    hosts = [virtual_host_resource(_host(f"outbound/{n}", n)) for n in ("b", "a")]
    merged = vhds_route_config(config, hosts)
    assert [h.name for h in merged.virtual_hosts] == ["own", "outbound/a", "outbound/b"]
    assert merged.virtual_hosts[1] is hosts[1]  # compiled once, reused as is


def test_a_domain_in_two_virtual_hosts_is_an_error_naming_both() -> None:
    config = route_resource(_config(vhds=ADS_SOURCE), vhds=True)
    a = virtual_host_resource(_host("outbound/a", "a", "shared.example"))
    b = virtual_host_resource(_host("outbound/b", "SHARED.example"))
    with pytest.raises(ConfigError) as caught:
        vhds_route_config(config, [b, a])
    assert str(caught.value) == (
        "VHDS virtual host 'outbound/b': domains[0]: domain 'shared.example' is already"
        " used at VHDS virtual host 'outbound/a': domains[1]"
    )


def test_a_vhds_host_may_not_take_a_domain_of_the_route_configurations_own() -> None:
    own = _config(vhds=ADS_SOURCE, virtual_hosts=[json_format.MessageToDict(_host("own", "o"))])
    config = route_resource(own, vhds=True)
    with pytest.raises(ConfigError, match=r"already used at RDS route configuration 'outbound'"):
        vhds_route_config(config, [virtual_host_resource(_host("outbound/x", "o"))])


class _State:
    def __init__(self, resources: dict[str, Any], reason: str = "") -> None:
        self.version = "v1"
        self.resources = resources
        self.last_updated = 1.0
        self.rejected_version = "v2" if reason else ""
        self.rejected_reason = reason


def test_config_dump_shows_a_vhds_route_configuration_with_its_hosts() -> None:
    whole = _config(virtual_hosts=[json_format.MessageToDict(_host("a", "a"))])
    whole.virtual_hosts.append(_host("b", "b"))
    slim, hosts = split(whole)
    routes = _State({"outbound": slim, "plain": _config(name="plain")})
    virtual_hosts = _State({h.name: h for h in hosts}, reason="VHDS virtual host 'x': bad")
    dump = config_dump(
        parse_bootstrap({}, "b"), 0.0, {ROUTE_TYPE: routes, VIRTUAL_HOST_TYPE: virtual_hosts}
    )
    (route_dump,) = (c for c in dump["configs"] if "RoutesConfigDump" in c["@type"])
    shown = {e["route_config"]["name"]: e for e in route_dump["dynamic_route_configs"]}
    assert sorted(shown) == ["outbound", "plain"]
    outbound = shown["outbound"]["route_config"]
    assert [h["name"] for h in outbound["virtual_hosts"]] == ["outbound/a", "outbound/b"]
    assert "vhds" in outbound
    assert shown["outbound"]["error_state"]["details"] == "VHDS virtual host 'x': bad"
    assert not slim.virtual_hosts  # the held message is not changed
