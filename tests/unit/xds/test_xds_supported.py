"""The allowlist: every set field Trellis does not implement is an error naming its path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import descriptor_pool

from trellis.errors import ConfigError
from trellis.xds import protos  # noqa: F401 - loads every message the allowlist names
from trellis.xds.bootstrap import parse_bootstrap
from trellis.xds.supported import (
    SUPPORTED_ANY_TYPES,
    SUPPORTED_ENUM_VALUES,
    SUPPORTED_FIELDS,
    check_supported,
)

Mutation = Callable[[dict[str, Any]], object]
LISTENER0 = "static_resources.listeners[0]"
HCM = f"{LISTENER0}.filter_chains[0].filters[0].typed_config"
VHOST0 = f"{HCM}.route_config.virtual_hosts[0]"
CLUSTER0 = "static_resources.clusters[0]"
UPSTREAM_OPTIONS = (
    'typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]'
)
ROUTER_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _hcm(d: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return cfg


def _vhost0(d: dict[str, Any]) -> dict[str, Any]:
    vhost: dict[str, Any] = _hcm(d)["route_config"]["virtual_hosts"][0]
    return vhost


def _route0(d: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = _vhost0(d)["routes"][0]
    return route


def _cluster0(d: dict[str, Any]) -> dict[str, Any]:
    cluster: dict[str, Any] = d["static_resources"]["clusters"][0]
    return cluster


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        getter(d)[key] = value

    return mutate


UNSUPPORTED: list[tuple[str, Mutation, str]] = [
    ("bootstrap field", _set(lambda d: d, "stats_flush_interval", "5s"), "stats_flush_interval"),
    (
        "admin log path",
        _set(lambda d: d["admin"], "access_log_path", "/tmp/a"),
        "admin.access_log_path",
    ),
    ("node locality", _set(lambda d: d["node"], "locality", {"zone": "a"}), "node.locality"),
    (
        "socket protocol",
        _set(
            lambda d: d["static_resources"]["listeners"][0]["address"]["socket_address"],
            "protocol",
            "UDP",
        ),
        f"{LISTENER0}.address.socket_address.protocol",
    ),
    (
        "listener filters timeout",
        _set(lambda d: d["static_resources"]["listeners"][0], "listener_filters_timeout", "1s"),
        f"{LISTENER0}.listener_filters_timeout",
    ),
    (
        "filter chain match",
        _set(
            lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0],
            "filter_chain_match",
            {"server_names": ["a"]},
        ),
        f"{LISTENER0}.filter_chains[0].filter_chain_match.server_names",
    ),
    ("codec HTTP2", _set(_hcm, "codec_type", "HTTP2"), f"{HCM}.codec_type"),
    ("hcm server_name", _set(_hcm, "server_name", "trellis"), f"{HCM}.server_name"),
    (
        "hcm scoped routes",
        lambda d: _hcm(d).update(scoped_routes={"name": "r"}, route_config=None),
        f"{HCM}.scoped_routes",
    ),
    (
        "router option",
        lambda d: _hcm(d)["http_filters"][0]["typed_config"].update(suppress_envoy_headers=True),
        f"{HCM}.http_filters[0].typed_config.suppress_envoy_headers",
    ),
    (
        "access log filter",
        lambda d: _hcm(d)["access_log"][0].update(filter={"not_health_check_filter": {}}),
        f"{HCM}.access_log[0].filter",
    ),
    ("vhost cors", _set(_vhost0, "require_tls", "ALL"), f"{VHOST0}.require_tls"),
    (
        "route idle",
        lambda d: _route0(d)["route"].update(idle_timeout="1s"),
        f"{VHOST0}.routes[0].route.idle_timeout",
    ),
    (
        "header range match",
        lambda d: _route0(d)["match"]["headers"].append(
            {"name": "x", "range_match": {"start": 1, "end": 2}}
        ),
        f"{VHOST0}.routes[0].match.headers[3].range_match",
    ),
    (
        "retry priority",
        lambda d: _route0(d)["route"]["retry_policy"].update(retriable_headers=[{"name": "x"}]),
        f"{VHOST0}.routes[0].route.retry_policy.retriable_headers",
    ),
    (
        "re2 program size",
        lambda d: _vhost0(d)["routes"][1]["match"]["safe_regex"]["google_re2"].update(
            max_program_size=100
        ),
        f"{VHOST0}.routes[1].match.safe_regex.google_re2.max_program_size",
    ),
    ("cluster type", _set(_cluster0, "type", "STRICT_DNS"), f"{CLUSTER0}.type"),
    ("lb policy", _set(_cluster0, "lb_policy", "RING_HASH"), f"{CLUSTER0}.lb_policy"),
    (
        "outlier detection success rate",
        _set(_cluster0, "outlier_detection", {"success_rate_minimum_hosts": 3}),
        f"{CLUSTER0}.outlier_detection.success_rate_minimum_hosts",
    ),
    (
        "breaker priority",
        lambda d: _cluster0(d)["circuit_breakers"]["thresholds"][0].update(priority="HIGH"),
        f"{CLUSTER0}.circuit_breakers.thresholds[0].priority",
    ),
    (
        "locality priority",
        lambda d: _cluster0(d)["load_assignment"]["endpoints"][0].update(priority=1),
        f"{CLUSTER0}.load_assignment.endpoints[0].priority",
    ),
    (
        "upstream http2 options",
        lambda d: _cluster0(d)["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]["explicit_http_config"].update(
            http_protocol_options=None, http2_protocol_options={"max_concurrent_streams": 5}
        ),
        f"{CLUSTER0}.{UPSTREAM_OPTIONS}.explicit_http_config.http2_protocol_options"
        ".max_concurrent_streams",
    ),
    (
        "retry predicate type",
        lambda d: _route0(d)["route"]["retry_policy"]["retry_host_predicate"][0].update(
            typed_config={"@type": ROUTER_URL}
        ),
        f"{VHOST0}.routes[0].route.retry_policy.retry_host_predicate[0].typed_config",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path"), [(m, p) for _, m, p in UNSUPPORTED], ids=[n for n, _, _ in UNSUPPORTED]
)
def test_unsupported_field_is_named(full_dict: dict[str, Any], mutate: Mutation, path: str) -> None:
    mutate(full_dict)
    _drop_none(full_dict)
    msg = parse_bootstrap(full_dict, "full.yaml")
    with pytest.raises(ConfigError) as info:
        check_supported(msg, "full.yaml")
    assert info.value.path == path
    assert str(info.value).startswith(f"full.yaml: {path}: ")


def test_unsupported_enum_value_lists_supported_ones(full_dict: dict[str, Any]) -> None:
    _hcm(full_dict)["codec_type"] = "HTTP3"
    with pytest.raises(ConfigError, match=r"HTTP3 is not supported \(supported: AUTO, HTTP1\)"):
        check_supported(parse_bootstrap(full_dict, "f"), "f")


def test_network_filter_of_another_type_is_rejected(full_dict: dict[str, Any]) -> None:
    flt = full_dict["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]
    flt["typed_config"] = {"@type": ROUTER_URL}
    with pytest.raises(ConfigError, match="Router is not supported here") as info:
        check_supported(parse_bootstrap(full_dict, "f"), "f")
    assert (
        info.value.path == "static_resources.listeners[1].filter_chains[0].filters[0].typed_config"
    )


def test_reference_bootstrap_is_fully_supported(full_dict: dict[str, Any]) -> None:
    check_supported(parse_bootstrap(full_dict, "f"), "f")


def test_allowlist_names_real_fields() -> None:
    pool = descriptor_pool.Default()
    for message, fields in SUPPORTED_FIELDS.items():
        descriptor = pool.FindMessageTypeByName(message)
        assert fields <= set(descriptor.fields_by_name), message
    for (message, field), values in SUPPORTED_ENUM_VALUES.items():
        enum_type = pool.FindMessageTypeByName(message).fields_by_name[field].enum_type
        assert enum_type is not None
        assert values <= set(enum_type.values_by_name), (message, field)
    for (message, field), types in SUPPORTED_ANY_TYPES.items():
        assert field in SUPPORTED_FIELDS[message]
        for type_name in types:
            pool.FindMessageTypeByName(type_name)


def _drop_none(value: Any) -> None:
    """Remove keys set to None (lets a mutation delete a field)."""
    if isinstance(value, dict):
        for key in [k for k, v in value.items() if v is None]:
            del value[key]
        for item in value.values():
            _drop_none(item)
    elif isinstance(value, list):
        for item in value:
            _drop_none(item)
