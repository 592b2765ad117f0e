"""Envoy RBAC network filters before a TCP proxy: compiled into the proxy's authz, or
rejected by path."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from trellis.core.authz import NETWORK_RBAC_FILTER_NAME, AuthzAction, AuthzConfig
from trellis.core.authz_match import AuthzRequest
from trellis.core.config import ProxyConfig, TcpProxy
from trellis.errors import ConfigError

Compile = Callable[[dict[str, Any]], ProxyConfig]
URL = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
CHAIN = "static_resources.listeners[1].filter_chains[0].filters"
CART = "spiffe://cluster.local/ns/shop/sa/cart"

RBAC_YAML = f"""
- name: envoy.filters.network.rbac
  typed_config:
    "@type": {URL}
    stat_prefix: tcp.
    rules:
      action: DENY
      policies:
        deny-guests:
          permissions: [{{any: true}}]
          principals: [{{direct_remote_ip: {{address_prefix: 203.0.113.0, prefix_len: 24}}}}]
- name: envoy.filters.network.rbac
  typed_config:
    "@type": {URL}
    stat_prefix: tcp.
    rules:
      policies:
        cart-to-db:
          permissions: [{{destination_port: 10001}}]
          principals: [{{authenticated: {{principal_name: {{exact: "{CART}"}}}}}}]
        ops-namespace:
          permissions:
          - and_rules:
              rules:
              - destination_ip: {{address_prefix: 10.9.0.0, prefix_len: 16}}
              - not_rule: {{destination_port_range: {{start: 1, end: 1024}}}}
          principals:
          - authenticated: {{principal_name: {{safe_regex: {{regex: ".*/ns/ops/.*"}}}}}}
"""


def with_rbac(data: dict[str, Any], rbac: list[dict[str, Any]]) -> dict[str, Any]:
    """The minimal bootstrap's TCP listener with `rbac` before its tcp_proxy."""
    changed = copy.deepcopy(data)
    filters = changed["static_resources"]["listeners"][1]["filter_chains"][0]["filters"]
    filters[:0] = rbac
    return changed


def tcp_authz(config: ProxyConfig) -> AuthzConfig | None:
    proxy = config.listeners[1].chains[0].filter
    assert isinstance(proxy, TcpProxy)
    return proxy.authz


def connection(**changes: Any) -> AuthzRequest:
    values: dict[str, Any] = {
        "principal": CART,
        "source_ip": ipaddress.ip_address("10.1.0.5"),
        "destination_ip": ipaddress.ip_address("10.9.0.1"),
        "destination_port": 10001,
        "method": "",
        "path": "",
        "authority": "",
    }
    values.update(changes)
    return AuthzRequest(**values)


@pytest.fixture
def authz(minimal_dict: dict[str, Any], compile_dict: Compile) -> AuthzConfig:
    compiled = tcp_authz(compile_dict(with_rbac(minimal_dict, yaml.safe_load(RBAC_YAML))))
    assert compiled is not None
    return compiled


def test_layers_in_filter_order_with_their_stat_prefix(authz: AuthzConfig) -> None:
    assert [layer.action for layer in authz.layers] == [AuthzAction.DENY, AuthzAction.ALLOW]
    assert {layer.stat_prefix for layer in authz.layers} == {"tcp."}
    assert {layer.filter_name for layer in authz.layers} == {NETWORK_RBAC_FILTER_NAME}
    assert authz.policy_names == ("deny-guests", "cart-to-db", "ops-namespace")


OPS = "spiffe://cluster.local/ns/ops/sa/admin"


@pytest.mark.parametrize(
    ("changes", "allowed", "policy"),
    [
        ({}, True, "cart-to-db"),
        ({"principal": None}, False, ""),  # plaintext: no principal to match
        ({"source_ip": ipaddress.ip_address("203.0.113.9")}, False, "deny-guests"),
        ({"destination_port": 10002}, False, ""),
        ({"principal": OPS, "destination_port": 5432}, True, "ops-namespace"),
        ({"principal": OPS, "destination_port": 443}, False, ""),
        ({"principal": OPS, "destination_ip": ipaddress.ip_address("10.8.0.1")}, False, ""),
    ],
)
def test_connection_decisions(
    authz: AuthzConfig, changes: dict[str, Any], allowed: bool, policy: str
) -> None:
    decision = authz.decide(connection(**changes))
    assert (decision.allowed, decision.policy) == (allowed, policy)


def test_filters_without_rules_enforce_nothing(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    assert tcp_authz(compile_dict(minimal_dict)) is None
    bare = [
        {"name": "envoy.filters.network.rbac", "typed_config": {"@type": URL, "stat_prefix": "a"}}
    ]
    assert tcp_authz(compile_dict(with_rbac(minimal_dict, bare))) is None


def test_allow_filter_with_no_policies_denies_every_connection(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    # What Istio emits when every ALLOW rule needs HTTP: `rules: {}`.
    empty = [{"name": "x", "typed_config": {"@type": URL, "stat_prefix": "tcp.", "rules": {}}}]
    authz = tcp_authz(compile_dict(with_rbac(minimal_dict, empty)))
    assert authz is not None
    assert authz.layers[0].filter_name == "x"
    decision = authz.decide(connection())
    assert not decision.allowed
    assert decision.details == "rbac_access_denied_matched_policy[none]"


def _rbac(**typed: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.network.rbac", "typed_config": {"@type": URL, **typed}}


ANY = [{"any": True}]
P = f'{CHAIN}[0].typed_config.rules.policies["p"]'


def _policy(permission: dict[str, Any], principal: dict[str, Any]) -> dict[str, Any]:
    rules = {"policies": {"p": {"permissions": [permission], "principals": [principal]}}}
    return _rbac(stat_prefix="tcp.", rules=rules)


TCP_PROXY = {
    "name": "envoy.filters.network.tcp_proxy",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp",
        "cluster": "app",
    },
}


@pytest.mark.parametrize(
    ("rbac", "path", "message"),
    [
        (
            [_rbac(stat_prefix="t", shadow_rules={})],
            f"{CHAIN}[0].typed_config.shadow_rules",
            "not supported",
        ),
        (
            [_rbac(stat_prefix="t", enforcement_type="CONTINUOUS")],
            f"{CHAIN}[0].typed_config.enforcement_type",
            "not supported",
        ),
        (
            [_rbac(stat_prefix="t", delay_deny="1s")],
            f"{CHAIN}[0].typed_config.delay_deny",
            "not supported",
        ),
        ([_rbac(rules={})], f"{CHAIN}[0].typed_config.stat_prefix", "required"),
        (
            [_policy({"header": {"name": ":method", "exact_match": "GET"}}, ANY[0])],
            f"{P}.permissions[0].header",
            "HTTP-only",
        ),
        (
            [_policy(ANY[0], {"not_id": {"url_path": {"path": {"prefix": "/"}}}})],
            f"{P}.principals[0].not_id.url_path",
            "HTTP-only",
        ),
        (
            [
                _policy(
                    {"or_rules": {"rules": [{"header": {"name": "x", "present_match": True}}]}},
                    ANY[0],
                )
            ],
            f"{P}.permissions[0].or_rules.rules[0].header",
            "HTTP-only",
        ),
        ([{"name": "envoy.filters.network.rbac"}], f"{CHAIN}[0].typed_config", "required"),
    ],
)
def test_rejected_by_path(
    minimal_dict: dict[str, Any],
    compile_dict: Compile,
    rbac: list[dict[str, Any]],
    path: str,
    message: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        compile_dict(with_rbac(minimal_dict, rbac))
    assert info.value.path == path
    assert message in str(info.value)


def test_rbac_only_before_a_tcp_proxy(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    rbac = _rbac(stat_prefix="t", rules={})
    after = copy.deepcopy(minimal_dict)
    after["static_resources"]["listeners"][1]["filter_chains"][0]["filters"].append(rbac)
    with pytest.raises(ConfigError) as info:
        compile_dict(after)
    assert info.value.path == f"{CHAIN}[0]"
    assert "only envoy.filters.network.rbac filters may come before" in str(info.value)
    http = copy.deepcopy(minimal_dict)
    http["static_resources"]["listeners"][0]["filter_chains"][0]["filters"].insert(0, rbac)
    with pytest.raises(ConfigError) as info:
        compile_dict(http)
    assert info.value.path == "static_resources.listeners[0].filter_chains[0].filters[0]"
    assert "before tcp_proxy only" in str(info.value)
    two_proxies = with_rbac(minimal_dict, [TCP_PROXY])
    with pytest.raises(ConfigError) as info:
        compile_dict(two_proxies)
    assert info.value.path == f"{CHAIN}[0]"
