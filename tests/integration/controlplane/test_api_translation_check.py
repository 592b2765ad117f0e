"""Apply refuses valid Istio config that Trellis proxies cannot carry out (TRL0201)."""

from __future__ import annotations

from .api_helpers import GROUP, YAML, in_process

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment.shop.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: 8080}}]
"""

ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
  - route: [{destination: {host: payment}}]
    retries: {attempts: 2, retryOn: "%s"}
"""


def test_a_retry_condition_the_proxy_lacks_is_refused_and_nothing_stored() -> None:
    client = in_process()
    assert client.post("/api/v1/apply", content=SERVICE, headers=YAML).status_code == 200
    refused = client.post("/api/v1/apply", content=ROUTE % "retriable-4xx", headers=YAML)
    assert refused.status_code == 422, refused.text
    findings = refused.json()["details"]["findings"]
    assert [f["code"] for f in findings] == ["TRL0201"], findings
    assert "retriable-4xx" in refused.text and "spec.http[0].retries" in refused.text
    listed = client.get(f"{GROUP}/namespaces/shop/virtualservices")
    assert listed.json()["items"] == []
    accepted = client.post("/api/v1/apply", content=ROUTE % "5xx,reset", headers=YAML)
    assert accepted.status_code == 200, accepted.text
