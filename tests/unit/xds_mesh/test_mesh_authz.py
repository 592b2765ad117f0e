"""AuthorizationPolicy end to end without sockets: Istio YAML -> translation -> the proxy's
compiler -> decisions, plus the shape of the RBAC config Istio would build."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest
from google.protobuf import json_format
from mesh_support import inline_bootstrap, load_case, load_config

from trellis.core.authz import AuthzConfig, AuthzDecision
from trellis.core.authz_match import AuthzRequest
from trellis.core.config import HttpConnectionManager, TcpProxy
from trellis.xds.compile import compile_bootstrap
from trellis.xds.mesh import MeshConfig, ProxyIdentity, translate
from trellis.xds.mesh.authz import selected_policies, workload_authz_filters

WORKLOAD = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http}]
  workloadSelector: {labels: {app: shop}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: shop-1, namespace: shop}
spec: {address: 10.9.0.1, labels: {app: shop, version: v1}, serviceAccount: shop}
"""
SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"


def _proxy(config: MeshConfig) -> ProxyIdentity:
    entry = config.workload_entries[0]
    return ProxyIdentity.from_workload_entry("sidecar~10.9.0.1~shop-1.shop", entry)


def compiled_authz(policies: str) -> AuthzConfig | None:
    """The inbound connection manager's authz, as the proxy compiles the translation."""
    config = load_config(WORKLOAD + "---\n" + policies)
    resources = translate(config, _proxy(config))
    proxy_config = compile_bootstrap(inline_bootstrap(resources), "test")
    inbound = next(item for item in proxy_config.listeners if item.name.startswith("inbound"))
    assert isinstance(inbound.chains[0].filter, HttpConnectionManager)
    return inbound.chains[0].filter.authz


def request(**changes: Any) -> AuthzRequest:
    base = AuthzRequest(
        principal=SLEEP,
        source_ip=ipaddress.ip_address("10.1.0.5"),
        destination_ip=ipaddress.ip_address("10.9.0.1"),
        destination_port=8080,
        method="GET",
        path="/items/1",
        authority="shop.shop.svc.cluster.local:8080",
        headers=((b"x-version", b"v1"),),
    )
    return dataclasses.replace(base, **changes)


def decide(authz: AuthzConfig | None, **changes: Any) -> AuthzDecision:
    assert authz is not None
    return authz.decide(request(**changes))


def policy(name: str, spec: str, namespace: str = "shop") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n---\n"
    )


def test_no_policy_means_no_rbac_filter() -> None:
    assert compiled_authz("") is None
    other = policy("elsewhere", "  rules: [{}]", namespace="other")
    other += policy("not-me", "  selector: {matchLabels: {app: cart}}\n  rules: [{}]")
    assert compiled_authz(other) is None


ALLOW_MATRIX = policy(
    "allow-reads",
    """  selector: {matchLabels: {app: shop}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
    - source: {namespaces: ["ops"], ipBlocks: ["10.1.0.0/16"]}
    to:
    - operation: {methods: ["GET", "HEAD"], paths: ["/items*", "*.png", "/exact"]}
  - to:
    - operation: {ports: ["9999"]}
  - to:
    - operation: {hosts: ["*.example.com"]}
  - when:
    - key: request.headers[x-version]
      values: ["v2*"]""",
)


@pytest.mark.parametrize(
    ("changes", "allowed", "policy_index"),
    [
        ({}, True, 0),
        ({"method": "HEAD", "path": "/img/a.png"}, True, 0),
        ({"path": "/exact"}, True, 0),
        ({"path": "/exactly"}, False, None),
        ({"method": "POST"}, False, None),
        ({"principal": None}, False, None),  # plaintext: no principal
        ({"principal": "spiffe://cluster.local/ns/default/sa/other"}, False, None),
        ({"principal": ADMIN}, True, 0),  # namespace ops and the 10.1/16 block
        ({"principal": ADMIN, "source_ip": ipaddress.ip_address("10.2.0.1")}, False, None),
        ({"principal": None, "destination_port": 9999}, True, 1),
        ({"principal": None, "method": "PUT", "authority": "api.EXAMPLE.com"}, True, 2),
        ({"principal": None, "headers": ((b"x-version", b"v1,v2.1"),)}, True, 3),
        ({"principal": None, "headers": ((b"x-version", b"v1"), (b"x-version", b"v2"))}, True, 3),
        ({"principal": None, "headers": ((b"x-version", b"xv2"),)}, False, None),
    ],
)
def test_allow_matrix(changes: dict[str, Any], allowed: bool, policy_index: int | None) -> None:
    decision = decide(compiled_authz(ALLOW_MATRIX), **changes)
    assert decision.allowed is allowed
    if policy_index is None:
        assert decision.reason == "no ALLOW policy matched"
        assert decision.policy == ""
    else:
        assert decision.policy == f"ns[shop]-policy[allow-reads]-rule[{policy_index}]"


DENY_MATRIX = policy(
    "deny",
    """  action: DENY
  rules:
  - from:
    - source: {notPrincipals: ["*"]}
    to:
    - operation: {notPorts: ["8080"]}
  - from:
    - source: {notNamespaces: ["default", "ops"]}
  - to:
    - operation: {paths: ["/admin*"], notMethods: ["GET"]}
  - when:
    - key: source.ip
      values: ["192.0.2.0/24"]
    - key: destination.port
      notValues: ["1"]
  - to:
    - operation: {notHosts: ["shop*", "*.svc.cluster.local"]}""",
)


@pytest.mark.parametrize(
    ("changes", "denied_by"),
    [
        ({}, None),
        ({"principal": None, "destination_port": 9090}, 0),
        ({"principal": "spiffe://cluster.local/ns/evil/sa/x"}, 1),
        ({"principal": None}, 1),  # no principal: not in namespaces default/ops
        ({"path": "/admin/users", "method": "DELETE"}, 2),
        ({"path": "/admin/users"}, None),  # GET is excluded by notMethods
        ({"source_ip": ipaddress.ip_address("192.0.2.7")}, 3),
        ({"authority": "other.example.com"}, 4),
        ({"authority": "SHOP"}, None),  # hosts are case-insensitive
    ],
)
def test_deny_matrix(changes: dict[str, Any], denied_by: int | None) -> None:
    decision = decide(compiled_authz(DENY_MATRIX), **changes)
    if denied_by is None:
        assert decision.allowed
        assert decision.policy == ""  # no ALLOW policy: allowed without one
    else:
        assert not decision.allowed
        assert decision.policy == f"ns[shop]-policy[deny]-rule[{denied_by}]"
        assert decision.details == f"rbac_access_denied_matched_policy[{decision.policy}]"


def test_deny_beats_allow_and_root_namespace_applies_mesh_wide() -> None:
    policies = policy("allow-all", "  rules: [{}]")
    policies += policy(
        "no-debug",
        "  action: DENY\n  rules: [{to: [{operation: {paths: [/debug*]}}]}]",
        namespace="istio-system",
    )
    policies += policy(
        "shop-only",
        "  selector: {matchLabels: {app: shop}}\n  action: AUDIT\n  rules: [{}]",
        namespace="trellis-system",
    )
    authz = compiled_authz(policies)
    assert authz is not None
    assert [layer.action.value for layer in authz.layers] == ["LOG", "DENY", "ALLOW"]
    allowed = decide(authz)
    assert allowed.allowed and allowed.policy == "ns[shop]-policy[allow-all]-rule[0]"
    assert allowed.audit_policy == "ns[trellis-system]-policy[shop-only]-rule[0]"
    denied = decide(authz, path="/debug/pprof")
    assert not denied.allowed
    assert denied.policy == "ns[istio-system]-policy[no-debug]-rule[0]"


def test_allow_without_rules_denies_everything() -> None:
    authz = compiled_authz(policy("allow-nothing", "  action: ALLOW"))
    assert authz is not None
    assert not decide(authz).allowed
    assert not decide(authz, principal=None, path="/").allowed
    # Another ALLOW policy still allows what it matches.
    authz = compiled_authz(
        policy("allow-nothing", "  action: ALLOW")
        + policy("allow-get", "  rules: [{to: [{operation: {methods: [GET]}}]}]")
    )
    assert decide(authz).allowed
    assert not decide(authz, method="POST").allowed


def test_when_conditions_reach_principals_and_permissions() -> None:
    authz = compiled_authz(
        policy(
            "when",
            """  rules:
  - when:
    - {key: source.principal, values: ["cluster.local/ns/default/*"]}
    - {key: source.namespace, notValues: ["ops"]}
    - {key: destination.ip, values: ["10.9.0.0/24"]}
    - {key: remote.ip, notValues: ["203.0.113.0/24"]}""",
        )
    )
    assert decide(authz).allowed
    assert not decide(authz, principal=ADMIN).allowed
    assert not decide(authz, destination_ip=ipaddress.ip_address("10.8.0.1")).allowed
    assert not decide(authz, remote_ip=ipaddress.ip_address("203.0.113.9")).allowed


def test_translation_builds_istios_rbac() -> None:
    config = load_config(
        WORKLOAD
        + "---\n"
        + policy(
            "httpbin",
            """  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep", "*-suffix", "prefix-*", "*"]
        namespaces: ["ns", "ns-*"]
        remoteIpBlocks: ["1.2.3.4"]
        notIpBlocks: ["5.6.0.0/16"]
    to:
    - operation: {hosts: ["Exact.com", "*"], ports: ["80"], paths: ["*"]}
    when:
    - {key: "request.headers[X-Tag]", values: ["a.b"]}""",
        )
    )
    chosen = selected_policies(config.authorization_policies, "shop", {"app": "shop"})
    (rbac_filter,) = workload_authz_filters(chosen, "shop", {"app": "shop"})
    as_dict = json_format.MessageToDict(rbac_filter, preserving_proto_field_name=True)
    assert as_dict["name"] == "envoy.filters.http.rbac"
    rules = as_dict["typed_config"]["rules"]
    assert "action" not in rules  # ALLOW is the default value
    (name,) = rules["policies"]
    assert name == "ns[shop]-policy[httpbin]-rule[0]"
    ids = rules["policies"][name]["principals"][0]["and_ids"]["ids"]
    principals = [item["authenticated"]["principal_name"] for item in ids[0]["or_ids"]["ids"]]
    assert principals == [
        {"exact": SLEEP},
        {"safe_regex": {"regex": "spiffe://.*-suffix"}},
        {"prefix": "spiffe://prefix-"},
        {"safe_regex": {"regex": ".+"}},
    ]
    namespaces = [item["authenticated"]["principal_name"] for item in ids[1]["or_ids"]["ids"]]
    assert namespaces == [
        {"safe_regex": {"regex": ".*/ns/ns/.*"}},
        {"safe_regex": {"regex": ".*/ns/ns-.*/.*"}},
    ]
    assert ids[2] == {
        "or_ids": {"ids": [{"remote_ip": {"address_prefix": "1.2.3.4", "prefix_len": 32}}]}
    }
    assert ids[3] == {
        "not_id": {
            "or_ids": {
                "ids": [{"direct_remote_ip": {"address_prefix": "5.6.0.0", "prefix_len": 16}}]
            }
        }
    }
    header = ids[4]["or_ids"]["ids"][0]["header"]
    assert header["name"] == "X-Tag"
    assert header["safe_regex_match"]["regex"] == r"^a\.b$|^a\.b,.*|.*,a\.b,.*|.*,a\.b$"
    rules_and = rules["policies"][name]["permissions"][0]["and_rules"]["rules"]
    assert rules_and[0]["or_rules"]["rules"] == [
        {
            "header": {
                "name": ":authority",
                "string_match": {"exact": "Exact.com", "ignore_case": True},
            }
        },
        {"header": {"name": ":authority", "present_match": True}},
    ]
    assert rules_and[1] == {
        "or_rules": {"rules": [{"url_path": {"path": {"safe_regex": {"regex": ".+"}}}}]}
    }
    assert rules_and[2] == {"or_rules": {"rules": [{"destination_port": 80}]}}


def test_golden_case_compiles_in_the_proxy() -> None:
    case = load_case("authz")
    proxy_config = compile_bootstrap(
        inline_bootstrap(translate(case.config, case.proxy, case.options)), "golden/authz"
    )
    by_name = {listener.name: listener.chains[0].filter for listener in proxy_config.listeners}
    http, tcp = by_name["inbound_18080"], by_name["inbound_19090"]
    assert isinstance(http, HttpConnectionManager) and http.authz is not None
    assert [layer.action.value for layer in http.authz.layers] == ["LOG", "DENY", "ALLOW"]
    assert isinstance(tcp, TcpProxy) and tcp.authz is not None
    assert [layer.action.value for layer in tcp.authz.layers] == ["LOG", "DENY", "ALLOW"]
    outbound = by_name["outbound"]
    assert isinstance(outbound, HttpConnectionManager) and outbound.authz is None
    canary = request(
        principal=None,
        destination_port=18080,
        authority="reviews:9080",
        path="/x",
        method="POST",
        headers=((b"x-canary", b"yes"),),
    )
    decision = http.authz.decide(canary)
    assert decision.allowed and decision.policy == "ns[default]-policy[reviews-viewer]-rule[1]"
    assert decision.audit_policy == "ns[default]-policy[audit-writes]-rule[0]"
    debug = http.authz.decide(dataclasses.replace(canary, path="/debug/vars"))
    assert debug.policy == "ns[trellis-system]-policy[deny-debug]-rule[0]" and not debug.allowed
