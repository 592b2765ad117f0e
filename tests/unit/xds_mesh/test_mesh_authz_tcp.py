"""AuthorizationPolicy on TCP ports without sockets: Istio YAML -> translation -> the
proxy's compiler -> decisions on connections, with Istio's TCP semantics (HTTP-only
fields drop an ALLOW rule, and are left out of DENY and AUDIT rules)."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest
from google.protobuf import json_format
from mesh_support import inline_bootstrap, load_config

from trellis.core.authz import AuthzConfig, AuthzDecision
from trellis.core.authz_match import AuthzRequest
from trellis.core.config import HttpConnectionManager, ProxyConfig, TcpProxy
from trellis.xds.compile import compile_bootstrap
from trellis.xds.mesh import MeshConfig, ProxyIdentity, translate
from trellis.xds.mesh.authz import inbound_authz, selected_policies

WORKLOAD = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.data.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 5432, name: tcp-postgres, protocol: TCP}
  - {number: 8080, name: http-admin}
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-1, namespace: data}
spec: {address: 10.9.0.1, labels: {app: db}, serviceAccount: db}
"""
CART = "spiffe://cluster.local/ns/shop/sa/cart"
OPS = "spiffe://cluster.local/ns/ops/sa/admin"


def _proxy(config: MeshConfig) -> ProxyIdentity:
    return ProxyIdentity.from_workload_entry(
        "sidecar~10.9.0.1~db-1.data", config.workload_entries[0]
    )


def _compiled(policies: str) -> ProxyConfig:
    config = load_config(WORKLOAD + "---\n" + policies)
    return compile_bootstrap(inline_bootstrap(translate(config, _proxy(config))), "test")


def tcp_authz(policies: str) -> AuthzConfig | None:
    """The authz of the TCP port's proxy, as the proxy compiles the translation."""
    inbound = {item.name: item.chains[0].filter for item in _compiled(policies).listeners}[
        "inbound_5432"
    ]
    assert isinstance(inbound, TcpProxy)
    return inbound.authz


def http_authz(policies: str) -> AuthzConfig | None:
    inbound = {item.name: item.chains[0].filter for item in _compiled(policies).listeners}[
        "inbound_8080"
    ]
    assert isinstance(inbound, HttpConnectionManager)
    return inbound.authz


CONNECTION = AuthzRequest(
    principal=CART,
    source_ip=ipaddress.ip_address("10.1.0.5"),
    destination_ip=ipaddress.ip_address("10.9.0.1"),
    destination_port=5432,
    method="",
    path="",
    authority="",
)


def decide(authz: AuthzConfig | None, **changes: Any) -> AuthzDecision:
    assert authz is not None
    return authz.decide(dataclasses.replace(CONNECTION, **changes))


def policy(name: str, spec: str, namespace: str = "data") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n---\n"
    )


def test_no_applicable_policy_no_filter() -> None:
    assert tcp_authz("") is None
    elsewhere = policy("other", "  rules: [{}]", namespace="shop")
    elsewhere += policy("not-db", "  selector: {matchLabels: {app: cart}}\n  rules: [{}]")
    assert tcp_authz(elsewhere) is None


ALLOW = policy(
    "db-clients",
    """  rules:
  - from:
    - source: {principals: ["cluster.local/ns/shop/sa/cart"]}
    to:
    - operation: {ports: ["5432"]}
  - to:
    - operation: {methods: ["GET"]}
  - from:
    - source: {namespaces: ["ops"]}
    when:
    - key: request.headers[x-admin]
      values: ["yes"]
  - from:
    - source: {namespaces: ["ops"]}
    to:
    - operation: {notPaths: ["/private*"]}""",
)


@pytest.mark.parametrize(
    ("changes", "allowed", "rule"),
    [
        ({}, True, 0),
        ({"destination_port": 5433}, False, None),
        # Rules 1-3 use HTTP-only fields: on TCP they are dropped, so ops (which
        # rules 2 and 3 would let in over HTTP) gets no connection at all.
        ({"principal": OPS}, False, None),
        ({"principal": None}, False, None),
    ],
)
def test_allow_rules_with_http_fields_are_dropped(
    changes: dict[str, Any], allowed: bool, rule: int | None
) -> None:
    decision = decide(tcp_authz(ALLOW), **changes)
    assert decision.allowed is allowed
    if rule is None:
        assert decision.reason == "no ALLOW policy matched"
    else:
        assert decision.policy == f"ns[data]-policy[db-clients]-rule[{rule}]"


def test_dropped_rules_are_absent_and_http_keeps_them() -> None:
    authz = tcp_authz(ALLOW)
    assert authz is not None
    assert authz.policy_names == ("ns[data]-policy[db-clients]-rule[0]",)
    http = http_authz(ALLOW)
    assert http is not None
    assert len(http.policy_names) == 4
    headers = ((b"x-admin", b"yes"),)
    request = dataclasses.replace(
        CONNECTION, principal=OPS, destination_port=8080, method="POST", path="/", headers=headers
    )
    assert http.decide(request).policy == "ns[data]-policy[db-clients]-rule[2]"


def test_allow_rules_all_http_deny_every_connection() -> None:
    authz = tcp_authz(policy("web-only", "  rules: [{to: [{operation: {methods: [GET]}}]}]"))
    assert authz is not None
    assert [layer.action.value for layer in authz.layers] == ["ALLOW"]
    assert authz.layers[0].policies == ()
    assert not decide(authz).allowed
    assert not decide(authz, principal=OPS).allowed


DENY = policy(
    "no-guests",
    """  action: DENY
  rules:
  - from:
    - source: {notNamespaces: ["shop", "ops"]}
    to:
    - operation: {paths: ["/admin*"]}
  - from:
    - source: {ipBlocks: ["203.0.113.0/24"]}
    when:
    - key: request.headers[x-guest]
      values: ["*"]""",
)


@pytest.mark.parametrize(
    ("changes", "denied_by"),
    [
        ({}, None),
        ({"principal": OPS}, None),
        # Paths are left out: rule 0 denies every connection from outside shop and ops.
        ({"principal": "spiffe://cluster.local/ns/evil/sa/x"}, 0),
        ({"principal": None}, 0),
        # The header condition is left out: rule 1 denies the whole IP block.
        ({"source_ip": ipaddress.ip_address("203.0.113.7")}, 1),
    ],
)
def test_deny_rules_lose_their_http_fields(changes: dict[str, Any], denied_by: int | None) -> None:
    decision = decide(tcp_authz(DENY), **changes)
    if denied_by is None:
        assert decision.allowed and decision.policy == ""
    else:
        assert not decision.allowed
        assert decision.policy == f"ns[data]-policy[no-guests]-rule[{denied_by}]"
        assert decision.details == f"rbac_access_denied_matched_policy[{decision.policy}]"


def test_deny_on_http_fields_alone_denies_all_tcp() -> None:
    """Istio's documented pitfall: `DENY methods: [POST]` blocks every TCP connection."""
    spec = "  action: DENY\n  rules: [{to: [{operation: {notMethods: [GET], hosts: [a]}}]}]"
    authz = tcp_authz(policy("no-writes", spec, namespace="istio-system"))
    denied = decide(authz, principal=None, source_ip=ipaddress.ip_address("192.0.2.1"))
    assert not denied.allowed
    assert denied.policy == "ns[istio-system]-policy[no-writes]-rule[0]"


def test_audit_widens_and_order_is_audit_deny_allow() -> None:
    policies = ALLOW + DENY
    policies += policy(
        "audit-writes",
        """  action: AUDIT
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]
    to: [{operation: {notMethods: [GET]}}]""",
    )
    authz = tcp_authz(policies)
    assert authz is not None
    assert [layer.action.value for layer in authz.layers] == ["LOG", "DENY", "ALLOW"]
    audited = decide(authz)
    assert audited.allowed and audited.audit_policy == "ns[data]-policy[audit-writes]-rule[0]"
    outside = decide(authz, source_ip=ipaddress.ip_address("192.0.2.1"))
    assert outside.allowed and not outside.audited


def test_network_filters_are_istios() -> None:
    config = load_config(WORKLOAD + "---\n" + ALLOW + DENY)
    chosen = selected_policies(config.authorization_policies, "data", {"app": "db"})
    authz = inbound_authz(chosen)
    assert len(authz.http) == 2
    deny, allow = (
        json_format.MessageToDict(f, preserving_proto_field_name=True) for f in authz.tcp
    )
    for item in (deny, allow):
        assert item["name"] == "envoy.filters.network.rbac"
        assert item["typed_config"]["@type"].endswith(
            "envoy.extensions.filters.network.rbac.v3.RBAC"
        )
        assert item["typed_config"]["stat_prefix"] == "tcp."
    assert deny["typed_config"]["rules"]["action"] == "DENY"
    rule0 = deny["typed_config"]["rules"]["policies"]["ns[data]-policy[no-guests]-rule[0]"]
    assert rule0["permissions"] == [{"and_rules": {"rules": [{"any": True}]}}]
    assert list(allow["typed_config"]["rules"]["policies"]) == [
        "ns[data]-policy[db-clients]-rule[0]"
    ]
    assert inbound_authz([]).tcp == ()
