"""The security.istio.io kinds: Istio YAML loads, round-trips, and bad input names its field."""

from __future__ import annotations

import pytest

from trellis.api.loader import LATER_KINDS, RESOURCE_TYPES, load_documents, parse_resource
from trellis.api.problem import ResourceError
from trellis.api.security import (
    AuthorizationAction,
    AuthorizationPolicy,
    MtlsMode,
    PeerAuthentication,
)

ISTIO_DOCS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin, version: v1}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.headers[version]
      values: ["v1", "v2"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-ports, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: [8080, "9090"], notPorts: ["1"]}}]
    from:
    - source: {ipBlocks: ["10.0.0.1", "10.1.0.0/16", "fd00::/8"], notRemoteIpBlocks: ["::1"]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: finance, namespace: foo}
spec:
  selector: {matchLabels: {app: finance}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: DISABLE}
"""


def test_istio_examples_load_and_round_trip() -> None:
    resources = load_documents(ISTIO_DOCS, "istio.yaml")
    assert [type(item).__name__ for item in resources] == [
        "AuthorizationPolicy",
        "AuthorizationPolicy",
        "AuthorizationPolicy",
        "PeerAuthentication",
        "PeerAuthentication",
    ]
    httpbin, nothing, deny, mesh, finance = resources
    assert isinstance(httpbin, AuthorizationPolicy)
    assert httpbin.spec.action is AuthorizationAction.ALLOW
    rule = httpbin.spec.rules[0]
    assert rule.from_ is not None and rule.to is not None
    assert rule.from_[1].source.namespaces == ("test",)
    assert rule.when[0].values == ("v1", "v2")
    assert isinstance(nothing, AuthorizationPolicy) and nothing.spec.rules == ()
    assert isinstance(deny, AuthorizationPolicy)
    assert deny.spec.rules[0].to is not None
    assert deny.spec.rules[0].to[0].operation.ports == ("8080", "9090")  # Istio's strings
    assert isinstance(mesh, PeerAuthentication) and mesh.spec.mode is MtlsMode.STRICT
    assert isinstance(finance, PeerAuthentication)
    for resource in resources:
        again = parse_resource(resource.to_document())
        assert again == resource
    document = httpbin.to_document()
    assert "from" in document["spec"]["rules"][0]  # the YAML key, not `from_`


def test_kinds_are_registered() -> None:
    assert RESOURCE_TYPES["PeerAuthentication"] is PeerAuthentication
    assert RESOURCE_TYPES["AuthorizationPolicy"] is AuthorizationPolicy
    assert not {"PeerAuthentication", "AuthorizationPolicy"} & LATER_KINDS


def _problems(spec: str, kind: str = "AuthorizationPolicy", version: str = "v1") -> list[str]:
    text = (
        f"apiVersion: security.istio.io/{version}\nkind: {kind}\n"
        f"metadata: {{name: p, namespace: foo}}\nspec:\n{spec}\n"
    )
    with pytest.raises(ResourceError) as caught:
        load_documents(text, "p.yaml")
    return [f"{problem.path}: {problem.message}" for problem in caught.value.problems]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("  action: CUSTOM", "spec.action: value CUSTOM is not supported by Trellis"),
        ("  provider: {name: ext}", "spec.provider: field not supported by Trellis"),
        ("  targetRefs: [{kind: Gateway, name: gw}]", "spec.targetRefs: field not supported"),
        ("  action: DENY", "spec: a DENY policy without rules never denies anything"),
        ("  rules: [{from: []}]", "spec.rules[0].from: must not be empty when present"),
        ("  rules: [{to: [{operation: {}}]}]", "spec.rules[0].to[0].operation: operation must set"),
        ("  rules: [{from: [{source: {}}]}]", "spec.rules[0].from[0].source: source must set"),
        ("  rules: [{from: [{}]}]", "spec.rules[0].from[0].source: required field is missing"),
        (
            "  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]",
            "spec.rules[0].from[0].source.requestPrincipals: field not supported by Trellis",
        ),
        (
            "  rules: [{from: [{source: {ipBlocks: ['10.0.0.300']}}]}]",
            "spec.rules[0].from[0].source.ipBlocks: '10.0.0.300' is not an IP address",
        ),
        (
            "  rules: [{from: [{source: {principals: ['']}}]}]",
            "spec.rules[0].from[0].source.principals: empty values are not allowed",
        ),
        (
            "  rules: [{from: [{source: {principals: ['spiffe://cluster.local/ns/a/sa/b']}}]}]",
            "spec.rules[0].from[0].source.principals: 'spiffe://cluster.local/ns/a/sa/b': "
            "write principals without spiffe://",
        ),
        (
            "  rules: [{to: [{operation: {ports: ['0']}}]}]",
            "spec.rules[0].to[0].operation.ports: '0' is not a port number (1-65535)",
        ),
        (
            "  rules: [{to: [{operation: {notPorts: [65536]}}]}]",
            "spec.rules[0].to[0].operation.notPorts: '65536' is not a port number",
        ),
        (
            "  rules: [{to: [{operation: {paths: ['/a/{*}']}}]}]",
            "spec.rules[0].to[0].operation.paths: '/a/{*}': path templates",
        ),
        (
            "  rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]",
            "spec.rules[0].when[0].key: key 'request.auth.claims[iss]' is not supported by Trellis",
        ),
        (
            "  rules: [{when: [{key: connection.sni, values: [x]}]}]",
            "spec.rules[0].when[0].key: key 'connection.sni' is not supported by Trellis",
        ),
        (
            "  rules: [{when: [{key: source.user, values: [x]}]}]",
            "spec.rules[0].when[0].key: unknown key 'source.user'",
        ),
        (
            "  rules: [{when: [{key: 'request.headers[]', values: [x]}]}]",
            "spec.rules[0].when[0].key: key 'request.headers[]' must be request.headers[NAME]",
        ),
        (
            "  rules: [{when: [{key: destination.port, values: ['http']}]}]",
            "spec.rules[0].when[0].values: 'http' is not a port number",
        ),
        (
            "  rules: [{when: [{key: remote.ip, notValues: ['1.2.3.4/33']}]}]",
            "spec.rules[0].when[0].notValues: '1.2.3.4/33' is not an IP address",
        ),
        (
            "  rules: [{when: [{key: source.namespace}]}]",
            "spec.rules[0].when[0]: at least one of values or notValues is required",
        ),
        (
            "  selector: {matchLabels: {app: '*'}}",
            "spec.selector.matchLabels: wildcards are not allowed in a selector: app=*",
        ),
    ],
)
def test_authorization_policy_errors_name_the_field(spec: str, expected: str) -> None:
    problems = _problems(spec)
    assert any(problem.startswith(expected) for problem in problems), problems


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("  mtls: {mode: STRICTER}", "spec.mtls.mode: unknown value 'STRICTER'"),
        (
            "  portLevelMtls: {8080: {mode: STRICT}}",
            "spec: portLevelMtls needs a selector",
        ),
        (
            "  selector: {matchLabels: {a: b}}\n  portLevelMtls: {70000: {mode: STRICT}}",
            "spec.portLevelMtls[70000]: must be <= 65535",
        ),
    ],
)
def test_peer_authentication_errors_name_the_field(spec: str, expected: str) -> None:
    problems = _problems(spec, kind="PeerAuthentication")
    assert any(problem.startswith(expected) for problem in problems), problems


def test_api_versions_and_dry_run() -> None:
    problems = _problems("  rules: [{}]", version="v2")
    assert any("apiVersion 'security.istio.io/v2' is not served" in item for item in problems)
    text = (
        "apiVersion: networking.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p}\nspec: {}\n"
    )
    with pytest.raises(ResourceError, match="is not served for this kind"):
        load_documents(text, "p.yaml")
    dry_run = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, annotations: {istio.io/dry-run: 'true'}}\nspec: {}\n"
    )
    with pytest.raises(ResourceError, match="dry-run policies are not supported"):
        load_documents(dry_run, "p.yaml")
