"""`trellis apply/get/delete` for PeerAuthentication and AuthorizationPolicy (in process)."""

from __future__ import annotations

import yaml

from .api_testing import column, lines, make_api

POLICIES = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: payment-readers, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"""


def test_apply_get_delete_security_kinds() -> None:
    api = make_api()
    applied = api.run("apply", "-f", "-", input=POLICIES)
    assert applied.exit_code == 0, applied.output
    assert lines(applied.stdout) == [
        "peerauthentication.security.istio.io/default created",
        "authorizationpolicy.security.istio.io/payment-readers created",
        "authorizationpolicy.security.istio.io/no-admin created",
    ]
    pa = api.run("get", "pa", "-n", "istio-system")
    assert pa.exit_code == 0, pa.output
    assert column(pa.stdout, "MODE") == ["STRICT"]
    ap = api.run("get", "authorizationpolicies", "-n", "shop", "-o", "wide")
    assert ap.exit_code == 0, ap.output
    assert column(ap.stdout, "NAME") == ["no-admin", "payment-readers"]
    assert column(ap.stdout, "ACTION") == ["DENY", "ALLOW"]
    assert column(ap.stdout, "SELECTOR") == ["", "app=payment"]
    one = yaml.safe_load(api.run("get", "ap", "payment-readers", "-n", "shop", "-o", "yaml").stdout)
    assert one["apiVersion"] == "security.istio.io/v1"  # the version of the URL
    assert one["spec"]["rules"][0]["from"][0]["source"]["principals"] == [
        "cluster.local/ns/shop/sa/web"
    ]
    deleted = api.run("delete", "ap", "no-admin", "-n", "shop")
    assert deleted.exit_code == 0, deleted.output
    assert lines(deleted.stdout) == ['authorizationpolicy.security.istio.io "no-admin" deleted']


def test_invalid_policy_is_refused_naming_the_field() -> None:
    api = make_api()
    bad = POLICIES.replace("action: DENY", "action: CUSTOM")
    result = api.run("apply", "-f", "-", input=bad)
    assert result.exit_code != 0
    assert "spec.action: value CUSTOM is not supported by Trellis" in result.output
