"""Envoy RBAC HTTP filters in a bootstrap: compiled into authz layers, or rejected by path."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from trellis.core.authz import AuthzAction, AuthzConfig
from trellis.core.authz_match import AuthzRequest
from trellis.core.config import HttpConnectionManager, ProxyConfig
from trellis.errors import ConfigError

Compile = Callable[[dict[str, Any]], ProxyConfig]
FILTERS = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters"
RBAC_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"

RBAC_YAML = """
- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules:
      action: DENY
      policies:
        deny-admin-writes:
          permissions:
          - and_rules:
              rules:
              - url_path: {path: {prefix: /admin}}
              - not_rule: {header: {name: ":method", string_match: {exact: GET}}}
          principals: [{any: true}]
        deny-plaintext-high-ports:
          permissions: [{destination_port_range: {start: 9000, end: 10000}}]
          principals: [{not_id: {authenticated: {}}}]
- name: envoy.filters.http.rbac
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
    rules:
      action: ALLOW
      policies:
        from-sleep:
          permissions: [{any: true}]
          principals:
          - authenticated:
              principal_name: {exact: "spiffe://cluster.local/ns/default/sa/sleep"}
        from-ops-namespace:
          permissions:
          - or_rules:
              rules:
              - destination_port: 8080
              - destination_ip: {address_prefix: 10.9.0.0, prefix_len: 16}
          principals:
          - and_ids:
              ids:
              - authenticated:
                  principal_name: {safe_regex: {regex: ".*/ns/ops/.*"}}
              - direct_remote_ip: {address_prefix: 10.1.0.0, prefix_len: 16}
        trusted-header:
          permissions:
          - header:
              name: ":authority"
              string_match: {suffix: ".internal", ignore_case: true}
          principals:
          - header: {name: x-token, safe_regex_match: {regex: "^t-[0-9]+$"}}
          - remote_ip: {address_prefix: 192.0.2.0, prefix_len: 24}
- name: envoy.filters.http.router
"""


def with_filters(data: dict[str, Any], filters: list[dict[str, Any]]) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    hcm = changed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["http_filters"] = filters
    return changed


def authz_of(config: ProxyConfig) -> AuthzConfig | None:
    manager = config.listeners[0].chains[0].filter
    assert isinstance(manager, HttpConnectionManager)
    return manager.authz


def request(**changes: Any) -> AuthzRequest:
    values: dict[str, Any] = {
        "principal": "spiffe://cluster.local/ns/default/sa/sleep",
        "source_ip": ipaddress.ip_address("10.1.0.5"),
        "destination_ip": ipaddress.ip_address("10.9.0.1"),
        "destination_port": 8080,
        "method": "GET",
        "path": "/items",
        "authority": "shop",
        "headers": (),
    }
    values.update(changes)
    return AuthzRequest(**values)


@pytest.fixture
def authz(minimal_dict: dict[str, Any], compile_dict: Compile) -> AuthzConfig:
    compiled = authz_of(compile_dict(with_filters(minimal_dict, yaml.safe_load(RBAC_YAML))))
    assert compiled is not None
    return compiled


def test_no_rbac_filter_no_authz(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    assert authz_of(compile_dict(minimal_dict)) is None
    no_rules = [{"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC_URL}}]
    no_rules.append({"name": "envoy.filters.http.router"})
    assert authz_of(compile_dict(with_filters(minimal_dict, no_rules))) is None


def test_layers_keep_filter_order(authz: AuthzConfig) -> None:
    assert [layer.action for layer in authz.layers] == [AuthzAction.DENY, AuthzAction.ALLOW]
    assert authz.policy_names == (
        "deny-admin-writes",
        "deny-plaintext-high-ports",
        "from-ops-namespace",
        "from-sleep",
        "trusted-header",
    )


OPS = "spiffe://cluster.local/ns/ops/sa/admin"
TOKEN = ((b"x-token", b"t-42"),)
BAD_TOKEN = ((b"x-token", b"t-4x"),)
TRUSTED = ipaddress.ip_address("192.0.2.9")


@pytest.mark.parametrize(
    ("changes", "allowed", "policy"),
    [
        ({}, True, "from-sleep"),
        ({"path": "/admin/x"}, True, "from-sleep"),
        ({"path": "/admin/x", "method": "DELETE"}, False, "deny-admin-writes"),
        ({"principal": None, "destination_port": 9500}, False, "deny-plaintext-high-ports"),
        ({"principal": OPS}, True, "from-ops-namespace"),
        ({"principal": OPS, "source_ip": ipaddress.ip_address("10.2.0.1")}, False, ""),
        ({"principal": OPS, "destination_port": 1, "destination_ip": None}, False, ""),
        (
            {"principal": None, "authority": "API.INTERNAL", "headers": TOKEN},
            True,
            "trusted-header",
        ),
        ({"principal": None, "authority": "api.internal", "headers": BAD_TOKEN}, False, ""),
        (
            {"principal": None, "authority": "a.internal", "remote_ip": TRUSTED},
            True,
            "trusted-header",
        ),
    ],
)
def test_decisions(authz: AuthzConfig, changes: dict[str, Any], allowed: bool, policy: str) -> None:
    decision = authz.decide(request(**changes))
    assert (decision.allowed, decision.policy) == (allowed, policy)


def _rbac(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC_URL, "rules": rules}},
        {"name": "envoy.filters.http.router"},
    ]


def _one_policy(**policy: Any) -> list[dict[str, Any]]:
    return _rbac({"policies": {"p": policy}})


ANY = [{"any": True}]
P = f'{FILTERS}[0].typed_config.rules.policies["p"]'
ROUTER = {"name": "envoy.filters.http.router"}


def perm(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return _one_policy(permissions=[rule], principals=ANY)


def prin(identifier: dict[str, Any]) -> list[dict[str, Any]]:
    return _one_policy(permissions=ANY, principals=[identifier])


SHADOW = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {"@type": RBAC_URL, "shadow_rules": {}},
}
BAD_REGEX = {"url_path": {"path": {"safe_regex": {"regex": "(?=x)"}}}}


@pytest.mark.parametrize(
    ("filters", "path", "message"),
    [
        ([SHADOW, ROUTER], f"{FILTERS}[0].typed_config.shadow_rules", "not supported"),
        (
            perm({"requested_server_name": {"exact": "a"}}),
            f"{P}.permissions[0].requested_server_name",
            "not supported",
        ),
        (prin({"metadata": {"filter": "x"}}), f"{P}.principals[0].metadata", "not supported"),
        (
            _one_policy(permissions=ANY, principals=ANY, condition={}),
            f"{P}.condition",
            "not supported",
        ),
        (_one_policy(permissions=ANY, principals=[]), f"{P}.principals", "at least one principal"),
        (
            _one_policy(permissions=[], principals=ANY),
            f"{P}.permissions",
            "at least one permission",
        ),
        (perm({"and_rules": {"rules": []}}), f"{P}.permissions[0].and_rules.rules", "at least one"),
        (perm({"any": False}), f"{P}.permissions[0].any", "any must be true"),
        (perm({}), f"{P}.permissions[0]", "a permission rule is required"),
        (prin({}), f"{P}.principals[0]", "a principal identifier is required"),
        (
            perm({"header": {"name": ":path", "exact_match": "/"}}),
            f"{P}.permissions[0].header.name",
            "url_path",
        ),
        (perm(BAD_REGEX), f"{P}.permissions[0].url_path.path.safe_regex.regex", "regex"),
        (
            perm({"destination_port_range": {"start": 10, "end": 5}}),
            f"{P}.permissions[0].destination_port_range",
            "start < end",
        ),
        (
            prin({"direct_remote_ip": {"address_prefix": "host"}}),
            f"{P}.principals[0].direct_remote_ip.address_prefix",
            "not an IP",
        ),
        (
            [{"name": "envoy.filters.http.cors"}, ROUTER],
            f"{FILTERS}[0]",
            "(only envoy.filters.http.rbac",
        ),
        (
            [{"name": "envoy.filters.http.rbac"}, ROUTER],
            f"{FILTERS}[0].typed_config",
            "is required",
        ),
        (_rbac({})[:1], f"{FILTERS}[0]", "the last HTTP filter must be envoy.filters.http.router"),
        ([ROUTER, *_rbac({})], f"{FILTERS}[0]", "must be the last"),
    ],
)
def test_rejected_with_the_field_path(
    minimal_dict: dict[str, Any],
    compile_dict: Compile,
    filters: list[dict[str, Any]],
    path: str,
    message: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_dict(with_filters(minimal_dict, filters))
    assert caught.value.path == path
    assert message in str(caught.value)


def test_cidr_follows_envoy(minimal_dict: dict[str, Any], compile_dict: Compile) -> None:
    # prefix_len unset is 0 (every address of that family); too long is the address itself.
    v4_any = {"direct_remote_ip": {"address_prefix": "1.2.3.4"}}
    exact = {"remote_ip": {"address_prefix": "fd00::1", "prefix_len": 200}}
    policies = {
        "v4-any": {"permissions": ANY, "principals": [v4_any]},
        "exact": {"permissions": ANY, "principals": [exact]},
    }
    filters = _rbac({"policies": policies})
    authz = authz_of(compile_dict(with_filters(minimal_dict, filters)))
    assert authz is not None
    assert authz.decide(request(source_ip=ipaddress.ip_address("192.0.2.1"))).policy == "v4-any"
    v6 = request(
        source_ip=ipaddress.ip_address("fd00::2"), remote_ip=ipaddress.ip_address("fd00::1")
    )
    assert authz.decide(v6).policy == "exact"
    other = request(source_ip=ipaddress.ip_address("fd00::2"))
    assert not authz.decide(other).allowed
