"""The proxy accepts what the control plane emits, and routes as the mesh config says.

The dynamic resources are turned into the equivalent static bootstrap (RDS
inline, EDS clusters STATIC with their ClusterLoadAssignment) and fed to the
proxy's own compiler. The only fields removed first are those the proxy
does not honour yet (outlier detection), and the test pins where they occur.
"""

from __future__ import annotations

import pytest
from mesh_support import case_names, inline_bootstrap, load_case

from trellis.core.config import (
    ClusterAction,
    DirectResponseAction,
    HttpConnectionManager,
    LbPolicy,
    ProxyConfig,
    RedirectAction,
    RetryOn,
    TcpProxy,
)
from trellis.core.filter_chain import select_chain
from trellis.core.routing import RouteTable
from trellis.xds.compile import compile_bootstrap
from trellis.xds.mesh import CaptureMode, translate

TRANSPARENT_CASES = {
    name for name in case_names() if load_case(name).options.capture_mode is CaptureMode.TRANSPARENT
}


def _compile(name: str) -> ProxyConfig:
    case = load_case(name)
    bootstrap = inline_bootstrap(translate(case.config, case.proxy, case.options))
    return compile_bootstrap(bootstrap, f"golden/{name}")


@pytest.mark.parametrize("name", case_names())
def test_proxy_compiles_the_translation(name: str) -> None:
    config = _compile(name)
    outbound = "virtualOutbound" if name in TRANSPARENT_CASES else "outbound"
    assert any(listener.name == outbound for listener in config.listeners)


def test_transparent_capture_has_both_cases() -> None:
    assert {"transparent", "mtls_transparent"} <= TRANSPARENT_CASES


def test_transparent_inbound_takes_the_chain_of_the_original_port() -> None:
    config = _compile("transparent")
    listeners = {listener.name: listener for listener in config.listeners}
    outbound = listeners["virtualOutbound"]
    assert outbound.use_original_dst
    assert (outbound.address.host, outbound.address.port) == ("0.0.0.0", 15001)
    # HTTP by port, to the connection manager and the routes
    http_out = select_chain(outbound.chains, 9080, False, "240.240.0.1")
    assert http_out is not None and isinstance(http_out.filter, HttpConnectionManager)
    assert http_out.filter.route_config is not None  # the `outbound` routes, inlined here
    assert http_out.filter.route_config.name == "outbound"
    assert select_chain(outbound.chains, 9080, False, "192.0.2.1") is http_out
    # TCP by address and port: reviews' virtual IP, db's own addresses (an IP, a block)
    for address, port, cluster in [
        ("240.240.0.1", 9090, "outbound|9090||reviews.default.svc.cluster.local"),
        ("10.96.0.20", 5432, "outbound|5432||db.example.com"),
        ("10.97.3.4", 5432, "outbound|5432||db.example.com"),
    ]:
        tcp_out = select_chain(outbound.chains, port, False, address)
        assert tcp_out is not None and isinstance(tcp_out.filter, TcpProxy)
        assert tcp_out.filter.cluster == cluster
    # anything else passes through to where it was sent; the capture port is a blackhole
    for address, port, cluster in [
        ("10.96.0.21", 5432, "PassthroughCluster"),
        ("240.240.0.1", 6379, "PassthroughCluster"),
        ("203.0.113.9", 443, "PassthroughCluster"),
        ("10.0.0.1", 15001, "BlackHoleCluster"),
    ]:
        other = select_chain(outbound.chains, port, False, address)
        assert other is not None and isinstance(other.filter, TcpProxy)
        assert other.filter.cluster == cluster
    clusters = {cluster.name: cluster for cluster in config.clusters}
    assert clusters["PassthroughCluster"].original_dst
    assert clusters["BlackHoleCluster"].endpoints == ()
    inbound = listeners["virtualInbound"]
    assert inbound.use_original_dst
    assert (inbound.address.host, inbound.address.port) == ("0.0.0.0", 15006)
    http = select_chain(inbound.chains, 18080, is_tls=False)
    assert http is not None and isinstance(http.filter, HttpConnectionManager)
    assert http.filter.route_config is not None
    found = RouteTable(http.filter.route_config).select_route("anything", "/x", [])
    assert found is not None and isinstance(found[1].action, ClusterAction)
    assert found[1].action.clusters[0].name == "inbound|18080||"
    tcp = select_chain(inbound.chains, 19090, is_tls=False)
    assert tcp is not None and isinstance(tcp.filter, TcpProxy)
    assert tcp.filter.cluster == "inbound|19090||"
    assert select_chain(inbound.chains, 15006, is_tls=False) is None  # not a workload port


def test_the_proxy_honours_outlier_detection_from_a_destination_rule() -> None:
    config = _compile("traffic_policy")
    detecting = [c for c in config.clusters if c.outlier_detection is not None]
    assert detecting and all(c.name.startswith("outbound|") for c in detecting)


def _table(config: ProxyConfig) -> RouteTable:
    listener = next(item for item in config.listeners if item.name == "outbound")
    assert isinstance(listener.chains[0].filter, HttpConnectionManager)
    assert listener.chains[0].filter.route_config is not None
    return RouteTable(listener.chains[0].filter.route_config)


def _action(table: RouteTable, authority: str, path: str, **kwargs: object) -> object:
    headers = kwargs.pop("headers", [])
    selected = table.select_route(authority, path, headers, **kwargs)  # type: ignore[arg-type]
    assert selected is not None, (authority, path)
    return selected[1].action


def test_weighted_split_retries_and_timeout_reach_the_proxy() -> None:
    config = _compile("weighted_subsets")
    action = _action(_table(config), "reviews:9080", "/reviews/1")
    assert isinstance(action, ClusterAction)
    weights = {item.name: item.weight for item in action.clusters}
    assert weights == {
        "outbound|9080|v1|reviews.default.svc.cluster.local": 90,
        "outbound|9080|v2|reviews.default.svc.cluster.local": 10,
    }
    assert action.timeout == 2.5
    retry = action.retry_policy
    assert retry is not None
    assert retry.num_retries == 3
    assert retry.per_try_timeout == 0.5
    assert retry.retry_on == RetryOn.GATEWAY_ERROR | RetryOn.CONNECT_FAILURE | (
        RetryOn.RETRIABLE_STATUS_CODES
    )
    assert retry.retriable_status_codes == frozenset({503})
    assert retry.avoid_previous_hosts
    clusters = {cluster.name: cluster for cluster in config.clusters}
    v2 = clusters["outbound|9080|v2|reviews.default.svc.cluster.local"]
    assert [(str(e.address), e.weight) for e in v2.endpoints] == [("10.0.0.2:8080", 5)]
    assert clusters["outbound|9080|v3|reviews.default.svc.cluster.local"].endpoints == ()


def test_default_route_has_no_timeout_and_istio_retries() -> None:
    config = _compile("plain_service")
    table = _table(config)
    for authority in ("reviews", "reviews:9080", "reviews.default.svc.cluster.local:9080"):
        action = _action(table, authority, "/")
        assert isinstance(action, ClusterAction)
        assert [c.name for c in action.clusters] == [
            "outbound|9080||reviews.default.svc.cluster.local"
        ]
        assert action.timeout is None  # 0s: disabled
        assert action.retry_policy is not None
        assert action.retry_policy.num_retries == 2
        assert action.retry_policy.retriable_status_codes == frozenset()
    assert table.select_route("db:3306", "/", []) is None  # TCP service: no virtual host
    lb = {cluster.name: cluster.lb_policy for cluster in config.clusters}
    assert lb["outbound|3306||db.default.svc.cluster.local"] is LbPolicy.LEAST_REQUEST


def test_rules_are_matched_in_order() -> None:
    config = _compile("match_order")
    table = _table(config)
    base = "api.shop.svc.cluster.local"
    canary = _action(table, "api", "/v2/x", headers=[(b"x-canary", b"yes"), (b"x-debug", b"1")])
    assert isinstance(canary, ClusterAction)
    assert canary.clusters[0].name == f"outbound|80|v2|{base}"
    prefix = _action(table, "api", "/V2/x")
    assert isinstance(prefix, ClusterAction)
    assert prefix.prefix_rewrite == "/"
    assert prefix.host_rewrite == "api-v2.shop"
    deleted = _action(table, "api", "/items/7", method="DELETE")
    assert isinstance(deleted, ClusterAction)
    assert deleted.retry_policy is None  # attempts: 0
    fetched = _action(table, "api", "/items/7", method="GET")
    assert isinstance(fetched, ClusterAction)
    assert fetched.retry_policy is not None  # fell through to the catch-all
    assert isinstance(_action(table, "api", "/old/page"), RedirectAction)
    gone = _action(table, "api", "/gone")
    assert isinstance(gone, DirectResponseAction)
    assert gone.status == 410
    never = _action(table, "api", "/never")
    assert isinstance(never, ClusterAction)
    assert never.clusters[0].name == f"outbound|80|v1|{base}"  # the catch-all came first
    # the port-8080 match is only on the port-8080 virtual host
    admin = _action(table, "api:8080", "/admin-only")
    assert isinstance(admin, ClusterAction)
    assert admin.clusters[0].name == f"outbound|8080|v1|{base}"


def test_short_names_follow_the_proxys_namespace() -> None:
    config = _compile("two_namespaces")
    table = _table(config)
    own = _action(table, "reviews:9080", "/")
    assert isinstance(own, ClusterAction)
    assert own.clusters[0].name == "outbound|9080||reviews.a.svc.cluster.local"
    other = _action(table, "reviews.b:9080", "/")
    assert isinstance(other, ClusterAction)
    assert other.clusters[0].name == "outbound|9080||reviews.b.svc.cluster.local"
    ratings = _action(table, "ratings.b", "/")
    assert isinstance(ratings, ClusterAction)
    assert ratings.clusters[0].name == "outbound|9080|v2|reviews.b.svc.cluster.local"
    assert table.select_virtual_host("ratings") is None  # not in the proxy's namespace
    assert table.select_virtual_host("private.b") is None  # exportTo: "."
    names = {cluster.name: cluster for cluster in config.clusters}
    assert names["outbound|9080||reviews.b.svc.cluster.local"].lb_policy is LbPolicy.RANDOM
    assert "outbound|9080|from-b|reviews.b.svc.cluster.local" not in names


def test_inbound_listeners_forward_to_the_application() -> None:
    config = _compile("inbound")
    listeners = {listener.name: listener for listener in config.listeners}
    http = listeners["inbound_18080"]
    assert (http.address.host, http.address.port) == ("127.0.0.1", 18080)
    assert isinstance(http.chains[0].filter, HttpConnectionManager)
    assert http.chains[0].filter.route_config is not None
    action = RouteTable(http.chains[0].filter.route_config).select_route("anything", "/x", [])
    assert action is not None
    assert isinstance(action[1].action, ClusterAction)
    assert action[1].action.clusters[0].name == "inbound|18080||"
    tcp = listeners["inbound_19090"]
    assert isinstance(tcp.chains[0].filter, TcpProxy)
    assert tcp.chains[0].filter.cluster == "inbound|19090||"
    clusters = {cluster.name: cluster for cluster in config.clusters}
    app = clusters["inbound|18080||"].endpoints
    assert [str(e.address) for e in app] == ["127.0.0.1:8080"]
    assert [str(e.address) for e in clusters["inbound|19090||"].endpoints] == ["127.0.0.1:9090"]
