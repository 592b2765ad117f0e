"""Cross-resource findings: codes, severities, places and hints."""

from __future__ import annotations

from pathlib import Path

import yaml

from trellis.api.analyze import CODES, Finding, Severity, analyze
from trellis.api.loader import load_documents, load_paths
from trellis.api.meta import Resource

TESTDATA = Path(__file__).parent / "testdata"

REGISTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment.shop.svc.cluster.local]
  ports: [{number: 80, name: http}, {number: 9090, name: grpc-admin}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: payment}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payment-v1, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: payment, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart.shop.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.5, labels: {version: v1}}]
"""


def _analyze(extra: str) -> list[Finding]:
    resources: list[Resource] = list(load_documents(REGISTRY + "---\n" + extra, "t.yaml"))
    return analyze(resources)


def _summary(findings: list[Finding]) -> list[tuple[str, str, str, str]]:
    return [
        (f.code, f.severity.value, f"{f.resource[0]} {f.resource[1]}/{f.resource[2]}", f.path)
        for f in findings
    ]


def test_the_example_config_is_clean() -> None:
    assert analyze(load_paths([TESTDATA])) == []
    assert _analyze("") == []


def test_unknown_destination_host() -> None:
    findings = _analyze(
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: shop}
spec:
  hosts: [front]
  http:
  - route: [{destination: {host: paymnet, port: {number: 80}}}]
"""
    )
    assert _summary(findings) == [
        ("IST0101", "Error", "VirtualService shop/front", "spec.http[0].route[0].destination.host")
    ]
    (finding,) = findings
    assert finding.name == "ReferencedResourceNotFound"
    assert finding.message == 'Referenced host not found: "paymnet"'
    assert "ServiceEntry" in finding.hint
    assert str(finding).startswith(
        "Error [IST0101] (VirtualService shop/front) spec.http[0].route[0].destination.host: "
    )


def test_short_names_resolve_in_the_referencing_namespace_only() -> None:
    route = "[{destination: {host: %s, port: {number: 80}}}]"
    text = ""
    for index, (namespace, host) in enumerate(
        [
            ("shop", "payment"),
            ("shop", "payment.shop"),
            ("web", "payment.shop"),
            ("web", "payment.shop.svc.cluster.local"),
            ("web", "payment"),
        ]
    ):
        text += (
            f"---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            f"metadata: {{name: vs{index}, namespace: {namespace}}}\n"
            f"spec: {{hosts: [h{index}], http: [{{route: {route % host}}}]}}\n"
        )
    findings = _analyze(text)
    assert _summary(findings) == [
        ("IST0101", "Error", "VirtualService web/vs4", "spec.http[0].route[0].destination.host")
    ]


def test_undefined_subset_and_port_selector() -> None:
    findings = _analyze(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payment, namespace: shop}
spec:
  host: payment
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
  - route:
    - destination: {host: payment, subset: v1, port: {number: 80}}
      weight: 50
    - destination: {host: payment, subset: v2, port: {number: 81}}
      weight: 50
  - route:
    - destination: {host: payment}
"""
    )
    assert _summary(findings) == [
        (
            "TRL0101",
            "Error",
            "VirtualService shop/payment",
            "spec.http[0].route[1].destination.port.number",
        ),
        (
            "IST0101",
            "Error",
            "VirtualService shop/payment",
            "spec.http[0].route[1].destination.subset",
        ),
        ("IST0112", "Error", "VirtualService shop/payment", "spec.http[1].route[0].destination"),
        ("IST0130", "Warning", "VirtualService shop/payment", "spec.http[1]"),
    ]
    by_code = {f.code: f for f in findings}
    assert by_code["IST0101"].message == (
        'Referenced host+subset in destinationrule not found: "payment+v2"'
    )
    assert by_code["IST0101"].hint == (
        "define subset 'v2' in a DestinationRule for host payment.shop.svc.cluster.local"
    )
    assert by_code["IST0112"].hint == "set destination.port.number to one of 80, 9090"


def test_destination_rule_findings() -> None:
    findings = _analyze(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payment, namespace: shop}
spec:
  host: payment.shop.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v9, labels: {version: v9}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payment-extra, namespace: shop}
spec:
  host: payment
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ghost, namespace: shop}
spec:
  host: ghost
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""
    )
    assert _summary(findings) == [
        ("IST0173", "Warning", "DestinationRule shop/cart", "spec.subsets[1]"),
        ("IST0174", "Warning", "DestinationRule shop/ghost", "spec.host"),
        ("TRL0104", "Warning", "DestinationRule shop/payment", "spec.host"),
        ("IST0173", "Warning", "DestinationRule shop/payment", "spec.subsets[1]"),
        ("TRL0104", "Warning", "DestinationRule shop/payment-extra", "spec.host"),
    ]
    assert findings[0].message == (
        "The Subset v2 defined in the DestinationRule does not select any workloads "
        "(labels version=v2)"
    )


def test_conflicting_virtual_service_hosts() -> None:
    findings = _analyze(
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: shop}
spec:
  hosts: [cart]
  http: [{route: [{destination: {host: cart}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: web}
spec:
  hosts: [cart.shop.svc.cluster.local]
  http: [{route: [{destination: {host: cart.shop.svc.cluster.local}}]}]
"""
    )
    assert _summary(findings) == [
        ("IST0109", "Error", "VirtualService shop/a", "spec.hosts"),
        ("IST0109", "Error", "VirtualService web/b", "spec.hosts"),
    ]
    assert findings[0].message == (
        "The VirtualServices shop/a,web/b define the same host cart.shop.svc.cluster.local"
    )
    assert findings[0].hint == "merge the conflicting VirtualServices into a single resource"


def test_unreachable_rules() -> None:
    findings = _analyze(
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: cart}}]
  - match: [{uri: {prefix: /a}, name: again}]
    route: [{destination: {host: cart}}]
  - route: [{destination: {host: cart}}]
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: cart}}]
"""
    )
    assert _summary(findings) == [
        ("IST0130", "Warning", "VirtualService shop/cart", "spec.http[1]"),
        ("IST0130", "Warning", "VirtualService shop/cart", "spec.http[3]"),
    ]
    assert findings[1].message == "VirtualService rule #3 not used (rule #2 matches all requests)"


def test_service_entry_findings() -> None:
    findings = _analyze(
        """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart-copy, namespace: shop}
spec:
  hosts: [cart.shop.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: idle, namespace: shop}
spec:
  hosts: [idle.shop.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: idle}}
"""
    )
    assert _summary(findings) == [
        ("TRL0103", "Warning", "ServiceEntry shop/cart", "spec.hosts"),
        ("TRL0102", "Warning", "ServiceEntry shop/cart-copy", "spec.endpoints"),
        ("TRL0103", "Warning", "ServiceEntry shop/cart-copy", "spec.hosts"),
        ("TRL0102", "Info", "ServiceEntry shop/idle", "spec.workloadSelector"),
    ]


def test_export_to_hides_a_service_from_other_namespaces() -> None:
    resources = list(load_paths([TESTDATA]))
    text = yaml.safe_dump_all(
        [
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "out", "namespace": ns},
                "spec": {
                    "hosts": ["out"],
                    "http": [
                        {
                            "route": [
                                {"destination": {"host": "httpbin.org", "port": {"number": 80}}}
                            ]
                        }
                    ],
                },
            }
            for ns in ("egress", "default")
        ]
    )
    findings = analyze([*resources, *load_documents(text, "x.yaml")])
    assert _summary(findings) == [
        ("IST0101", "Error", "VirtualService default/out", "spec.http[0].route[0].destination.host")
    ]


def test_every_code_has_a_name_and_severity_order() -> None:
    assert all(code.startswith(("IST", "TRL")) and name for code, name in CODES.items())
    assert [s.value for s in Severity] == ["Error", "Warning", "Info"]
