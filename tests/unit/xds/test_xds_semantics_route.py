"""Semantic checks on route configurations: virtual hosts, routes, actions, retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trellis.core.config import ProxyConfig
from trellis.errors import ConfigError

Compile = Callable[[dict[str, Any]], ProxyConfig]
Mutation = Callable[[dict[str, Any]], object]

L0 = "static_resources.listeners[0]"
HCM = f"{L0}.filter_chains[0].filters[0].typed_config"
VH = f"{HCM}.route_config.virtual_hosts[0]"
R0 = f"{VH}.routes[0]"


def listener(d: dict[str, Any], i: int = 0) -> dict[str, Any]:
    value: dict[str, Any] = d["static_resources"]["listeners"][i]
    return value


def hcm(d: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = listener(d)["filter_chains"][0]["filters"][0]["typed_config"]
    return value


def vhost(d: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = hcm(d)["route_config"]["virtual_hosts"][0]
    return value


def route(d: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = vhost(d)["routes"][0]
    return value


def action(d: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = route(d)["route"]
    return value


def _second_vhost(domains: list[str]) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        other = {"name": "other", "domains": domains, "routes": []}
        hcm(d)["route_config"]["virtual_hosts"].append(other)

    return mutate


CASES: list[tuple[str, Mutation, str, str]] = [
    # virtual hosts
    (
        "duplicate wildcard",
        _second_vhost(["*"]),
        f"{HCM}.route_config.virtual_hosts[1].domains[0]",
        "already used at",
    ),
    (
        "duplicate domain, other case",
        _second_vhost(["a.com", "A.COM"]),
        f"{HCM}.route_config.virtual_hosts[1].domains[1]",
        "already used",
    ),
    (
        "star in the middle",
        _second_vhost(["foo.*.com"]),
        f"{HCM}.route_config.virtual_hosts[1].domains[0]",
        "first or last",
    ),
    (
        "two stars",
        _second_vhost(["*.foo.*"]),
        f"{HCM}.route_config.virtual_hosts[1].domains[0]",
        "only one '*'",
    ),
    (
        "no domains",
        _second_vhost([]),
        f"{HCM}.route_config.virtual_hosts[1].domains",
        "at least one domain",
    ),
    ("vhost without name", lambda d: [vhost(d).pop("name")], f"{VH}.name", "required"),
    # routes
    ("route without match", lambda d: [route(d).pop("match")], f"{R0}.match", "required"),
    ("route without action", lambda d: [route(d).pop("route")], R0, "one of route, redirect"),
    (
        "match without path",
        lambda d: [route(d).update(match={})],
        f"{R0}.match",
        "one of prefix, path",
    ),
    (
        "unknown cluster",
        lambda d: [action(d).update(cluster="nope")],
        f"{R0}.route.cluster",
        "unknown cluster 'nope'",
    ),
    (
        "unknown weighted cluster",
        lambda d: [
            action(d).pop("cluster"),
            action(d).update(
                weighted_clusters={
                    "clusters": [{"name": "app", "weight": 1}, {"name": "gone", "weight": 1}]
                }
            ),
        ],
        f"{R0}.route.weighted_clusters.clusters[1].name",
        "unknown cluster 'gone'",
    ),
    (
        "weights sum to zero",
        lambda d: [
            action(d).pop("cluster"),
            action(d).update(weighted_clusters={"clusters": [{"name": "app", "weight": 0}]}),
        ],
        f"{R0}.route.weighted_clusters.clusters",
        "more than 0",
    ),
    (
        "total_weight mismatch",
        lambda d: [
            action(d).pop("cluster"),
            action(d).update(
                weighted_clusters={"clusters": [{"name": "app", "weight": 3}], "total_weight": 100}
            ),
        ],
        f"{R0}.route.weighted_clusters.total_weight",
        "add up to 3, not total_weight 100",
    ),
    (
        "backreference",
        lambda d: [route(d).update(match={"safe_regex": {"regex": "/(a)\\1"}})],
        f"{R0}.match.safe_regex.regex",
        "backreferences",
    ),
    (
        "lookahead",
        lambda d: [route(d).update(match={"safe_regex": {"regex": "/(?=a)"}})],
        f"{R0}.match.safe_regex.regex",
        "lookaround",
    ),
    (
        "broken regex",
        lambda d: [route(d).update(match={"safe_regex": {"regex": "/(a"}})],
        f"{R0}.match.safe_regex.regex",
        "invalid regex",
    ),
    (
        "ignore_case with regex",
        lambda d: [
            route(d)["match"].update(
                headers=[
                    {
                        "name": "a",
                        "string_match": {"safe_regex": {"regex": "x"}, "ignore_case": True},
                    }
                ]
            )
        ],
        f"{R0}.match.headers[0].string_match.ignore_case",
        "no effect",
    ),
    (
        "empty string matcher",
        lambda d: [
            route(d)["match"].update(headers=[{"name": "a", "string_match": {"ignore_case": True}}])
        ],
        f"{R0}.match.headers[0].string_match",
        "one of exact",
    ),
    (
        "empty prefix header match",
        lambda d: [
            route(d)["match"].update(headers=[{"name": "a", "string_match": {"prefix": ""}}])
        ],
        f"{R0}.match.headers[0].string_match.prefix",
        "must not be empty",
    ),
    (
        "direct response status",
        lambda d: [route(d).pop("route"), route(d).update(direct_response={"status": 700})],
        f"{R0}.direct_response.status",
        "out of range 200-599",
    ),
    (
        "direct response too big",
        lambda d: [
            route(d).pop("route"),
            route(d).update(direct_response={"status": 200, "body": {"inline_string": "x" * 5000}}),
        ],
        f"{R0}.direct_response.body",
        "limit is 4096",
    ),
    (
        "redirect port",
        lambda d: [route(d).pop("route"), route(d).update(redirect={"port_redirect": 70000})],
        f"{R0}.redirect.port_redirect",
        "port",
    ),
    (
        "modify pseudo-header",
        lambda d: [
            route(d).update(request_headers_to_add=[{"header": {"key": ":path", "value": "/"}}])
        ],
        f"{R0}.request_headers_to_add[0].header.key",
        "pseudo-headers",
    ),
    (
        "remove host",
        lambda d: [vhost(d).update(request_headers_to_remove=["x-a", "Host"])],
        f"{VH}.request_headers_to_remove[1]",
        "cannot be removed",
    ),
    (
        "bad header name",
        lambda d: [vhost(d).update(response_headers_to_remove=["a b"])],
        f"{VH}.response_headers_to_remove[0]",
        "invalid header name",
    ),
    (
        "append and append_action",
        lambda d: [
            route(d).update(
                response_headers_to_add=[
                    {
                        "header": {"key": "a", "value": "b"},
                        "append": True,
                        "append_action": "ADD_IF_ABSENT",
                    }
                ]
            )
        ],
        f"{R0}.response_headers_to_add[0]",
        "cannot both be set",
    ),
    # retry policy
    (
        "unknown retry_on",
        lambda d: [action(d)["retry_policy"].update(retry_on="5xx, gateway-errors")],
        f"{R0}.route.retry_policy.retry_on",
        "'gateway-errors' is not supported",
    ),
    (
        "back off without base",
        lambda d: [action(d)["retry_policy"].update(retry_back_off={"max_interval": "1s"})],
        f"{R0}.route.retry_policy.retry_back_off.base_interval",
        "required",
    ),
    (
        "back off base zero",
        lambda d: [action(d)["retry_policy"].update(retry_back_off={"base_interval": "0s"})],
        f"{R0}.route.retry_policy.retry_back_off.base_interval",
        "greater than zero",
    ),
    (
        "back off max below base",
        lambda d: [
            action(d)["retry_policy"].update(
                retry_back_off={"base_interval": "1s", "max_interval": "0.5s"}
            )
        ],
        f"{R0}.route.retry_policy.retry_back_off.max_interval",
        "not be less than base_interval",
    ),
    (
        "retriable status code",
        lambda d: [action(d)["retry_policy"].update(retriable_status_codes=[503, 99])],
        f"{R0}.route.retry_policy.retriable_status_codes[1]",
        "out of range",
    ),
    (
        "other host predicate by name",
        lambda d: [
            action(d)["retry_policy"].update(
                retry_host_predicate=[{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]
            )
        ],
        f"{R0}.route.retry_policy.retry_host_predicate[0]",
        "only the envoy.retry_host_predicates.previous_hosts",
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
