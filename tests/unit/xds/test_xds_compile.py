"""Compiling bootstraps: the reference file field by field, and Envoy's defaults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trellis.core.addresses import SocketAddress
from trellis.core.config import (
    AccessLogConfig,
    AppendAction,
    CircuitBreakerThresholds,
    ClusterAction,
    DirectResponseAction,
    Endpoint,
    HeaderToAdd,
    HttpConnectionManager,
    LbPolicy,
    PathMatchKind,
    ProxyConfig,
    RedirectAction,
    RetryOn,
    RouteConfig,
    StringMatchKind,
    TcpProxy,
    TrafficDirection,
)
from trellis.xds.compile import compile_file

Compile = Callable[[dict[str, Any]], ProxyConfig]


@pytest.fixture(scope="module")
def full() -> ProxyConfig:
    _, config = compile_file(Path(__file__).parent / "data" / "full.yaml")
    return config


def _hcm(config: ProxyConfig, index: int = 0) -> HttpConnectionManager:
    flt = config.listeners[index].chains[0].filter
    assert isinstance(flt, HttpConnectionManager)
    return flt


def _routes(config: ProxyConfig, index: int = 0) -> RouteConfig:
    routes = _hcm(config, index).route_config
    assert routes is not None
    return routes


def _action(config: ProxyConfig, vhost: int, route: int) -> Any:
    return _routes(config).virtual_hosts[vhost].routes[route].action


def test_node_identity(full: ProxyConfig) -> None:
    node = full.node
    assert node.cluster == "productpage.default"
    assert (node.workload_name, node.namespace, node.service_account) == (
        "productpage-v1",
        "default",
        "bookinfo-productpage",
    )
    assert (node.app, node.version) == ("productpage", "v1")
    assert node.principal == "spiffe://example.org/ns/default/sa/bookinfo-productpage"


def test_admin_and_listeners(full: ProxyConfig) -> None:
    assert full.admin is not None
    assert full.admin.address == SocketAddress("127.0.0.1", 15000)
    outbound, inbound = full.listeners
    assert outbound.name == "outbound_http"
    assert outbound.address == SocketAddress("127.0.0.1", 15001)
    assert outbound.direction is TrafficDirection.OUTBOUND
    assert outbound.per_connection_buffer_limit_bytes == 32768
    assert inbound.direction is TrafficDirection.INBOUND
    assert inbound.chains[0].filter == TcpProxy(
        stat_prefix="inbound_tcp",
        cluster="local-app",
        idle_timeout=600.0,
        access_logs=(AccessLogConfig(),),
    )


def test_http_connection_manager(full: ProxyConfig) -> None:
    hcm = _hcm(full)
    assert hcm.stat_prefix == "outbound_http"
    assert hcm.generate_request_id is False
    assert hcm.use_remote_address is True
    assert hcm.skip_xff_append is True
    assert hcm.max_request_headers_bytes == 96 * 1024
    assert hcm.request_headers_timeout == 10.0
    assert hcm.stream_idle_timeout is None  # 0s disables
    assert hcm.request_timeout == 30.0
    assert hcm.drain_timeout == 2.5
    assert hcm.idle_timeout == 120.0
    assert hcm.allow_absolute_url is True
    assert hcm.access_logs == (
        AccessLogConfig(
            path=None,
            json_format=(("path", "%REQ(:PATH)%"), ("status", "%RESPONSE_CODE%")),
        ),
        AccessLogConfig(
            path="/var/log/trellis/access.log",
            text_format="[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE%\n",
        ),
    )


def test_route_config_headers_and_domains(full: ProxyConfig) -> None:
    rc = _routes(full)
    assert rc.name == "outbound_routes"
    assert rc.request_headers.add == (HeaderToAdd("x-mesh", "trellis"),)
    assert rc.response_headers.remove == frozenset({"server"})
    reviews, catch_all = rc.virtual_hosts
    assert reviews.domains[-1] == "reviews:*"
    assert catch_all.domains == ("*",)
    assert reviews.response_headers.add == (
        HeaderToAdd("x-served-by", "reviews", AppendAction.OVERWRITE_IF_EXISTS_OR_ADD),
    )


def test_weighted_route_with_retries(full: ProxyConfig) -> None:
    route = _routes(full).virtual_hosts[0].routes[0]
    assert route.match.path_kind is PathMatchKind.PREFIX
    assert route.match.path == "/reviews"
    canary, agent, debug = route.match.headers
    assert canary.string_match is not None and canary.string_match.matches("yes")
    assert agent.string_match is not None
    assert agent.string_match.kind is StringMatchKind.CONTAINS
    assert agent.string_match.matches("Mozilla/5.0 FIREFOX/1")  # ignore_case
    assert debug.present is False and debug.string_match is None
    action = route.action
    assert isinstance(action, ClusterAction)
    assert [(c.name, c.weight) for c in action.clusters] == [("reviews-v2", 90), ("reviews-v3", 10)]
    assert action.total_weight == 100
    assert action.clusters[0].request_headers.add == (
        HeaderToAdd("x-version", "v2", AppendAction.OVERWRITE_IF_EXISTS_OR_ADD),  # append: false
    )
    assert action.timeout == 2.0
    retry = action.retry_policy
    assert retry is not None
    assert retry.retry_on == (
        RetryOn.SERVER_ERROR
        | RetryOn.RESET
        | RetryOn.CONNECT_FAILURE
        | RetryOn.RETRIABLE_STATUS_CODES
    )
    assert retry.num_retries == 3
    assert retry.per_try_timeout == 0.5
    assert (retry.base_interval, retry.max_interval) == (0.1, 1.0)  # max defaults to 10x base
    assert retry.retriable_status_codes == frozenset({409})
    assert retry.avoid_previous_hosts is True
    assert retry.host_selection_retry_max_attempts == 5


def test_regex_route_with_rewrites(full: ProxyConfig) -> None:
    route = _routes(full).virtual_hosts[0].routes[1]
    assert route.match.path_kind is PathMatchKind.REGEX
    assert route.match.regex is not None
    assert route.match.regex.fullmatch("/api/v12/reviews/7")
    assert not route.match.regex.fullmatch("/api/vX/reviews/7")
    assert route.match.case_sensitive is False
    action = route.action
    assert isinstance(action, ClusterAction)
    assert action.timeout is None  # 0s disables
    assert action.prefix_rewrite == "/"
    assert action.host_rewrite == "reviews.internal"
    assert route.request_headers.remove == frozenset({"x-internal"})


def test_redirects_and_direct_responses(full: ProxyConfig) -> None:
    assert _action(full, 1, 0) == RedirectAction(
        response_code=308, scheme="https", host="login.example.org", port=8443, strip_query=True
    )
    assert _action(full, 1, 1) == RedirectAction(response_code=301, prefix_rewrite="/new/")
    assert _action(full, 1, 2) == DirectResponseAction(200, b"ok\n")
    assert _action(full, 1, 3) == DirectResponseAction(404, b"")


def test_clusters(full: ProxyConfig) -> None:
    v2, v3, local = full.clusters
    assert v2.name == "reviews-v2"
    assert v2.endpoints == (
        Endpoint(SocketAddress("10.0.1.10", 9080), 2),
        Endpoint(SocketAddress("fd00::11", 9080), 1),
    )
    assert v2.lb_policy is LbPolicy.LEAST_REQUEST
    assert v2.least_request_choice_count == 3
    assert v2.connect_timeout == 0.25
    assert v2.thresholds == CircuitBreakerThresholds(100, 50, 200, 5)
    assert v2.idle_timeout == 30.0  # typed_extension_protocol_options
    assert v3.lb_policy is LbPolicy.RANDOM
    assert local.idle_timeout is None  # deprecated Cluster field, 0s disables
    assert local.connect_timeout == 1.0


def test_envoy_defaults(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    config = compile_dict(minimal_dict)
    assert config.admin is None
    assert config.node.workload_name == "unknown"
    assert config.node.trust_domain == "cluster.local"
    assert config.node.principal == "unknown"
    http, tcp = config.listeners
    assert http.name == "127.0.0.1_10000"  # derived from the address when unnamed
    assert http.direction is TrafficDirection.UNSPECIFIED
    assert http.per_connection_buffer_limit_bytes == 1024 * 1024
    hcm = http.chains[0].filter
    assert isinstance(hcm, HttpConnectionManager)
    assert hcm.allow_absolute_url is True
    assert hcm.generate_request_id is True
    assert hcm.use_remote_address is False
    assert hcm.max_request_headers_bytes == 60 * 1024
    assert hcm.idle_timeout == 3600.0
    assert hcm.stream_idle_timeout == 300.0
    assert hcm.request_timeout is None
    assert hcm.request_headers_timeout is None
    assert hcm.drain_timeout == 5.0
    assert hcm.access_logs == ()
    assert hcm.route_config is not None
    action = hcm.route_config.virtual_hosts[0].routes[0].action
    assert isinstance(action, ClusterAction)
    assert action.timeout == 15.0
    assert action.total_weight == 1
    retry = action.retry_policy
    assert retry is not None
    assert retry.retry_on is RetryOn.GATEWAY_ERROR
    assert retry.num_retries == 1
    assert retry.per_try_timeout is None
    assert (retry.base_interval, retry.max_interval) == (0.025, 0.25)
    assert retry.host_selection_retry_max_attempts == 1
    assert retry.avoid_previous_hosts is False
    assert tcp.chains[0].filter == TcpProxy("tcp", "app", 3600.0)
    (cluster,) = config.clusters
    assert cluster.connect_timeout == 5.0
    assert cluster.lb_policy is LbPolicy.ROUND_ROBIN
    assert cluster.idle_timeout == 3600.0
    assert cluster.thresholds == CircuitBreakerThresholds(1024, 1024, 1024, 3)
    assert cluster.endpoints == (Endpoint(SocketAddress("127.0.0.1", 8080)),)


def test_zero_idle_timeouts_disable(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    listeners = minimal_dict["static_resources"]["listeners"]
    hcm = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["common_http_protocol_options"] = {"idle_timeout": "0s"}
    listeners[1]["filter_chains"][0]["filters"][0]["typed_config"]["idle_timeout"] = "0s"
    config = compile_dict(minimal_dict)
    assert _hcm(config).idle_timeout is None
    assert config.listeners[1].chains[0].filter == TcpProxy("tcp", "app", None)


def test_deprecated_append_true_and_legacy_header_matchers(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    hcm = minimal_dict["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    route["request_headers_to_add"] = [
        {"header": {"key": "X-A", "value": "1"}, "append": True},
        {"header": {"key": "x-b", "value": ""}, "keep_empty_value": True},
        {"header": {"key": "x-c", "value": "3"}, "append_action": "ADD_IF_ABSENT"},
    ]
    route["match"]["headers"] = [
        {"name": "X-Exact", "exact_match": "a"},
        {"name": "x-prefix", "prefix_match": "b"},
        {"name": "x-suffix", "suffix_match": "c"},
        {"name": "x-contains", "contains_match": "d"},
        {"name": "x-regex", "safe_regex_match": {"regex": "v[0-9]"}, "invert_match": True},
        {"name": "x-any", "treat_missing_header_as_empty": True},
    ]
    config = compile_dict(minimal_dict)
    compiled = _routes(config).virtual_hosts[0].routes[0]
    assert compiled.request_headers.add == (
        HeaderToAdd("x-a", "1", AppendAction.APPEND_IF_EXISTS_OR_ADD),
        HeaderToAdd("x-b", "", AppendAction.APPEND_IF_EXISTS_OR_ADD, keep_empty_value=True),
        HeaderToAdd("x-c", "3", AppendAction.ADD_IF_ABSENT),
    )
    kinds = [
        (h.name, h.string_match.kind if h.string_match else None) for h in compiled.match.headers
    ]
    assert kinds == [
        ("x-exact", StringMatchKind.EXACT),
        ("x-prefix", StringMatchKind.PREFIX),
        ("x-suffix", StringMatchKind.SUFFIX),
        ("x-contains", StringMatchKind.CONTAINS),
        ("x-regex", StringMatchKind.REGEX),
        ("x-any", None),
    ]
    regex_matcher = compiled.match.headers[4]
    assert regex_matcher.invert is True
    assert regex_matcher.string_match is not None
    assert regex_matcher.string_match.matches("v7")
    assert compiled.match.headers[5].treat_missing_as_empty is True
