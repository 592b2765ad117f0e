"""Istio settings Trellis proxies cannot carry out are refused with their field path."""

from __future__ import annotations

import pytest

from trellis.api.loader import load_documents
from trellis.xds.mesh import MeshConfig, ProxyIdentity, Translator, UnsupportedConfigError

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
"""

CASES = {
    "tcp routes": (
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db]
  tcp: [{route: [{destination: {host: db}}]}]
""",
        "VirtualService shop/db: spec.tcp",
    ),
    "mTLS": (
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
""",
        "DestinationRule shop/db: spec.trafficPolicy.tls.mode",
    ),
    "regex RE2 lacks": (
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db]
  http:
  - match: [{uri: {regex: "/(?!admin).*"}}]
    route: [{destination: {host: db}}]
""",
        "VirtualService shop/db: spec.http[0].match[0].uri.regex",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_uncarried_setting_is_an_error_naming_the_field(case: str) -> None:
    extra, where = CASES[case]
    resources = load_documents(SERVICE + "---" + extra, "test.yaml")
    translator = Translator(MeshConfig.of(resources))
    proxy = ProxyIdentity(node_id="p", workload_name="web", namespace="shop")
    with pytest.raises(UnsupportedConfigError) as caught:
        translator.translate(proxy)
    assert str(caught.value).startswith(where), str(caught.value)


def test_service_alone_translates() -> None:
    translator = Translator(MeshConfig.of(load_documents(SERVICE, "test.yaml")))
    assert translator.uncarried is None
    assert translator.translate(ProxyIdentity(node_id="p", workload_name="w", namespace="shop"))
