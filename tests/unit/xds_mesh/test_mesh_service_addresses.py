"""Which hosts get a virtual IP, and the names that resolve to it from each namespace."""

from __future__ import annotations

from trellis.api.loader import load_documents
from trellis.api.networking import ServiceEntry
from trellis.xds.mesh.service_addresses import hosts_wanting_addresses, service_addresses
from trellis.xds.mesh.vips import VipPolicy, VipTable

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  resolution: STATIC
  ports: [{number: 80, name: http}, {number: 9090, name: grpc-admin}]
  workloadSelector: {labels: {app: payment}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: orders, namespace: shop}
spec:
  hosts: [orders, orders.internal]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http}]
  workloadSelector: {labels: {app: orders}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: shop}
spec:
  hosts: [private]
  exportTo: ["."]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.9}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: shop}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wildcard, namespace: shop}
spec:
  hosts: ["*.cdn.example.com"]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: cdn.example.com}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: bank}
spec:
  hosts: [ledger]
  resolution: DNS
  ports: [{number: 80, name: http}]
  endpoints: [{address: ledger.example.net}]
"""


def _entries(text: str = MESH) -> list[ServiceEntry]:
    return [item for item in load_documents(text, "test.yaml") if isinstance(item, ServiceEntry)]


def _table(entries: list[ServiceEntry]) -> VipTable:
    return VipTable().reconcile(hosts_wanting_addresses(entries), VipPolicy(), now=0.0)


def test_hosts_with_endpoints_get_addresses_passthrough_and_wildcards_do_not() -> None:
    assert hosts_wanting_addresses(_entries()) == {
        "payment.shop.svc.cluster.local",
        "orders.shop.svc.cluster.local",
        "orders.internal",
        "private.shop.svc.cluster.local",
        "ledger.bank.svc.cluster.local",
    }  # not api.example.com (resolution NONE, no selector) nor *.cdn.example.com


def test_from_its_own_namespace_a_service_has_its_short_name() -> None:
    entries = _entries()
    found = service_addresses(entries, _table(entries), "shop", "240.240.0.0/16")
    by_host = {item.host: item for item in found.items}
    payment = by_host["payment.shop.svc.cluster.local"]
    assert payment.names == (
        "payment.shop.svc.cluster.local",
        "payment.shop",
        "payment.shop.svc",
    )
    assert payment.short_names == ("payment",)
    assert [port.number for port in payment.ports] == [80, 9090]
    assert payment.address.startswith("240.240.0.")
    assert by_host["orders.internal"].names == ("orders.internal",)
    assert by_host["orders.internal"].short_names == ()
    assert "private.shop.svc.cluster.local" in by_host
    assert found.namespace == "shop" and found.vip_range == "240.240.0.0/16"


def test_from_another_namespace_no_short_name_and_no_hidden_service() -> None:
    entries = _entries()
    found = service_addresses(entries, _table(entries), "bank", "240.240.0.0/16")
    by_host = {item.host: item for item in found.items}
    assert "private.shop.svc.cluster.local" not in by_host  # exportTo: "."
    assert by_host["payment.shop.svc.cluster.local"].short_names == ()
    assert by_host["ledger.bank.svc.cluster.local"].short_names == ("ledger",)


def test_without_a_namespace_each_service_lists_its_own_short_names() -> None:
    entries = _entries()
    table = _table(entries)
    found = service_addresses(entries, table, None, "240.240.0.0/16")
    assert [item.host for item in found.items] == sorted(item.host for item in found.items)
    by_host = {item.host: item for item in found.items}
    assert by_host["ledger.bank.svc.cluster.local"].short_names == ("ledger",)
    assert by_host["private.shop.svc.cluster.local"].namespace == "shop"
    assert {item.address for item in found.items} == {str(a) for a in table.assigned.values()}


def test_two_namespaces_defining_one_host_share_its_address_and_the_viewers_wins() -> None:
    twice = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: a}
spec:
  hosts: [api.example.org]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: b}
spec:
  hosts: [api.example.org]
  resolution: STATIC
  ports: [{number: 8080, name: http}]
  endpoints: [{address: 10.0.0.2}]
"""
    entries = _entries(twice)
    table = _table(entries)
    assert len(table.assigned) == 1
    from_b = service_addresses(entries, table, "b", "r").items
    assert [(item.namespace, item.ports[0].number) for item in from_b] == [("b", 8080)]
    from_c = service_addresses(entries, table, "c", "r").items
    assert [item.namespace for item in from_c] == ["a"]
    everyone = service_addresses(entries, table, None, "r").items
    assert [item.namespace for item in everyone] == ["a", "b"]
    assert everyone[0].address == everyone[1].address


def test_a_name_is_given_to_one_address_only() -> None:
    # `payment.shop` is a host of its own and also the alias of payment.shop.svc.cluster.local.
    clash = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: odd, namespace: other}
spec:
  hosts: [payment.shop]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.2}]
"""
    entries = _entries(clash)
    found = service_addresses(entries, _table(entries), "shop", "r").items
    names = [name for item in found for name in (*item.names, *item.short_names)]
    assert len(names) == len(set(names))
    by_host = {item.host: item for item in found}
    assert by_host["payment.shop"].names == ("payment.shop",)
    assert "payment.shop" not in by_host["payment.shop.svc.cluster.local"].names
