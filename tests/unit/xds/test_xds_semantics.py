"""Semantic checks: configs that parse and use supported fields but make no sense."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trellis.core.config import ProxyConfig
from trellis.errors import ConfigError

Compile = Callable[[dict[str, Any]], ProxyConfig]
Mutation = Callable[[dict[str, Any]], object]

L0 = "static_resources.listeners[0]"
L1 = "static_resources.listeners[1]"
HCM = f"{L0}.filter_chains[0].filters[0].typed_config"
TCP = f"{L1}.filter_chains[0].filters[0].typed_config"
C0 = "static_resources.clusters[0]"
EP0 = f"{C0}.load_assignment.endpoints[0].lb_endpoints[0]"
UPSTREAM = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
LOGGERS = "type.googleapis.com/envoy.extensions.access_loggers"
STDOUT_LOG = f"{LOGGERS}.stream.v3.StdoutAccessLog"
FILE_LOG = f"{LOGGERS}.file.v3.FileAccessLog"


def listener(d: dict[str, Any], i: int = 0) -> dict[str, Any]:
    value: dict[str, Any] = d["static_resources"]["listeners"][i]
    return value


def hcm(d: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = listener(d)["filter_chains"][0]["filters"][0]["typed_config"]
    return value


def tcp(d: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = listener(d, 1)["filter_chains"][0]["filters"][0]["typed_config"]
    return value


def cluster(d: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = d["static_resources"]["clusters"][0]
    return value


def endpoint(d: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = cluster(d)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    return value


def sock(address_holder: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = address_holder["address"]["socket_address"]
    return value


def _copy_cluster(name: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        d["static_resources"]["clusters"].append({**cluster(d), "name": name})

    return mutate


CASES: list[tuple[str, Mutation, str, str]] = [
    # listeners
    (
        "duplicate listener name",
        lambda d: [listener(d).update(name="tcp")],
        f"{L1}.name",
        "already defined at static_resources.listeners[0]",
    ),
    (
        "overlapping listener port",
        lambda d: [sock(listener(d, 1)).update(address="0.0.0.0", port_value=10000)],
        f"{L1}.address",
        "overlaps",
    ),
    (
        "admin overlaps listener",
        lambda d: d.update(
            admin={"address": {"socket_address": {"address": "127.0.0.1", "port_value": 10001}}}
        ),
        "admin.address",
        "overlaps the address of listener 'tcp'",
    ),
    (
        "port 0",
        lambda d: [sock(listener(d)).update(port_value=0)],
        f"{L0}.address.socket_address.port_value",
        "port must be 1-65535",
    ),
    (
        "port too big",
        lambda d: [sock(listener(d)).update(port_value=70000)],
        f"{L0}.address.socket_address.port_value",
        "port must be",
    ),
    (
        "hostname address",
        lambda d: [sock(listener(d)).update(address="localhost")],
        f"{L0}.address.socket_address.address",
        "not an IP",
    ),
    ("no address", lambda d: [listener(d).pop("address")], f"{L0}.address", "required"),
    (
        "zero max headers count",
        lambda d: [hcm(d).update(common_http_protocol_options={"max_headers_count": 0})],
        f"{HCM}.common_http_protocol_options.max_headers_count",
        "at least 1",
    ),
    (
        "max headers count on a cluster",
        lambda d: [cluster(d).update(common_http_protocol_options={"max_headers_count": 10})],
        f"{C0}.common_http_protocol_options.max_headers_count",
        "not on clusters",
    ),
    (
        "two filter chains with the same match",
        lambda d: [listener(d)["filter_chains"].append(listener(d)["filter_chains"][0])],
        f"{L0}.filter_chains[1].filter_chain_match",
        "filter chains 0 and 1 have the same match",
    ),
    (
        "two filter chains for the same destination port",
        lambda d: [
            listener(d)["filter_chains"].extend(
                {
                    **listener(d, 1)["filter_chains"][0],
                    "filter_chain_match": {"destination_port": 80},
                }
                for _ in range(2)
            )
        ],
        f"{L0}.filter_chains[2].filter_chain_match",
        "filter chains 1 and 2 have the same match",
    ),
    (
        "destination port zero",
        lambda d: [
            listener(d)["filter_chains"][0].update(filter_chain_match={"destination_port": 0})
        ],
        f"{L0}.filter_chains[0].filter_chain_match.destination_port",
        "must be 1-65535, got 0",
    ),
    (
        "destination port too big",
        lambda d: [
            listener(d)["filter_chains"][0].update(filter_chain_match={"destination_port": 65536})
        ],
        f"{L0}.filter_chains[0].filter_chain_match.destination_port",
        "must be 1-65535, got 65536",
    ),
    (
        "two filters",
        lambda d: [
            listener(d)["filter_chains"][0]["filters"].append(
                listener(d, 1)["filter_chains"][0]["filters"][0]
            )
        ],
        f"{L0}.filter_chains[0].filters[0]",
        "only envoy.filters.network.rbac filters may come before",
    ),
    # http connection manager
    ("no stat_prefix", lambda d: [hcm(d).pop("stat_prefix")], f"{HCM}.stat_prefix", "required"),
    (
        "no route_config",
        lambda d: [hcm(d).pop("route_config")],
        f"{HCM}.route_config",
        "route_config or rds is required",
    ),
    (
        "no http filters",
        lambda d: [hcm(d).pop("http_filters")],
        f"{HCM}.http_filters",
        "at least one HTTP filter",
    ),
    (
        "unknown http filter by name",
        lambda d: [hcm(d)["http_filters"].insert(0, {"name": "envoy.filters.http.cors"})],
        f"{HCM}.http_filters[0]",
        "'envoy.filters.http.cors' is not supported",
    ),
    (
        "router not last",
        lambda d: [hcm(d)["http_filters"].append({"name": "envoy.filters.http.router"})],
        f"{HCM}.http_filters[0]",
        "must be the last",
    ),
    (
        "headers kb too big",
        lambda d: [hcm(d).update(max_request_headers_kb=9000)],
        f"{HCM}.max_request_headers_kb",
        "1-8192",
    ),
    (
        "negative duration",
        lambda d: [hcm(d).update(request_timeout="-1s")],
        f"{HCM}.request_timeout",
        "negative",
    ),
    (
        "json log format value not string",
        lambda d: [
            hcm(d).update(
                access_log=[
                    {
                        "typed_config": {
                            "@type": STDOUT_LOG,
                            "log_format": {"json_format": {"nested": {"a": "b"}}},
                        }
                    }
                ]
            )
        ],
        f'{HCM}.access_log[0].typed_config.log_format.json_format["nested"]',
        "must be strings",
    ),
    (
        "file log without path",
        lambda d: [hcm(d).update(access_log=[{"typed_config": {"@type": FILE_LOG}}])],
        f"{HCM}.access_log[0].typed_config.path",
        "required",
    ),
    # tcp proxy
    (
        "tcp unknown cluster",
        lambda d: [tcp(d).update(cluster="nope")],
        f"{TCP}.cluster",
        "unknown cluster 'nope'",
    ),
    ("tcp no stat_prefix", lambda d: [tcp(d).pop("stat_prefix")], f"{TCP}.stat_prefix", "required"),
    # clusters
    (
        "duplicate cluster",
        _copy_cluster("app"),
        "static_resources.clusters[1].name",
        "already defined",
    ),
    ("cluster without name", lambda d: [cluster(d).pop("name")], f"{C0}.name", "required"),
    (
        "connect timeout zero",
        lambda d: [cluster(d).update(connect_timeout="0s")],
        f"{C0}.connect_timeout",
        "greater than zero",
    ),
    (
        "endpoint hostname",
        lambda d: [sock(endpoint(d)["endpoint"]).update(address="app.local")],
        f"{EP0}.endpoint.address.socket_address.address",
        "not an IP",
    ),
    (
        "endpoint without port",
        lambda d: [sock(endpoint(d)["endpoint"]).pop("port_value")],
        f"{EP0}.endpoint.address.socket_address.port_value",
        "port must be",
    ),
    (
        "endpoint weight zero",
        lambda d: [endpoint(d).update(load_balancing_weight=0)],
        f"{EP0}.load_balancing_weight",
        "at least 1",
    ),
    (
        "assignment without name",
        lambda d: [cluster(d)["load_assignment"].pop("cluster_name")],
        f"{C0}.load_assignment.cluster_name",
        "required",
    ),
    (
        "least request config, wrong policy",
        lambda d: [cluster(d).update(least_request_lb_config={"choice_count": 3})],
        f"{C0}.least_request_lb_config",
        "LEAST_REQUEST",
    ),
    (
        "two threshold sets",
        lambda d: [
            cluster(d).update(
                circuit_breakers={"thresholds": [{"max_connections": 1}, {"max_connections": 2}]}
            )
        ],
        f"{C0}.circuit_breakers.thresholds[1]",
        "only one set",
    ),
    (
        "old and new protocol options",
        lambda d: [
            cluster(d).update(
                common_http_protocol_options={"idle_timeout": "1s"},
                typed_extension_protocol_options={
                    UPSTREAM: {"@type": f"type.googleapis.com/{UPSTREAM}"}
                },
            )
        ],
        f"{C0}.common_http_protocol_options",
        "not both",
    ),
    (
        "upstream http1 options",
        lambda d: [
            cluster(d).update(
                typed_extension_protocol_options={
                    UPSTREAM: {
                        "@type": f"type.googleapis.com/{UPSTREAM}",
                        "explicit_http_config": {
                            "http_protocol_options": {"allow_absolute_url": True}
                        },
                    }
                }
            )
        ],
        f'{C0}.typed_extension_protocol_options["{UPSTREAM}"].explicit_http_config.http_protocol_options.allow_absolute_url',
        "not supported",
    ),
    (
        "protocol options under another key",
        lambda d: [
            cluster(d).update(
                typed_extension_protocol_options={
                    "http": {"@type": f"type.googleapis.com/{UPSTREAM}"}
                }
            )
        ],
        f'{C0}.typed_extension_protocol_options["http"]',
        f"only {UPSTREAM}",
    ),
    # node
    (
        "namespace not a string",
        lambda d: d.update(node={"metadata": {"NAMESPACE": 3}}),
        'node.metadata["NAMESPACE"]',
        "must be a string",
    ),
    (
        "labels not a mapping",
        lambda d: d.update(node={"metadata": {"LABELS": "app=x"}}),
        'node.metadata["LABELS"]',
        "must be a mapping",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [(m, p, msg) for _, m, p, msg in CASES],
    ids=[name for name, _, _, _ in CASES],
)
def test_semantic_error_names_the_field(
    minimal_dict: dict[str, Any], compile_dict: Compile, mutate: Mutation, path: str, message: str
) -> None:
    compile_dict(minimal_dict)  # the base config is valid
    mutate(minimal_dict)
    with pytest.raises(ConfigError) as info:
        compile_dict(minimal_dict)
    assert info.value.path == path
    assert info.value.source == "test.yaml"
    assert message in str(info.value)


def test_max_headers_count_is_read(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    default = compile_dict(minimal_dict).listeners[0].chains[0].filter
    hcm(minimal_dict)["common_http_protocol_options"] = {"max_headers_count": 7}
    configured = compile_dict(minimal_dict).listeners[0].chains[0].filter
    assert getattr(default, "max_request_headers_count", None) == 100  # Envoy's default
    assert getattr(configured, "max_request_headers_count", None) == 7
