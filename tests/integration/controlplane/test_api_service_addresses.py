"""`GET /api/v1/service-addresses` of a real `trellis control-plane` process.

ServiceEntries go in through the REST API; their virtual IPs come back through
the launcher's client (`ControlPlaneApi.service_addresses`), rendered as a
hosts file, stay put across a restart, and a removed service's address is
kept for it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from trellis.cli.main import cli
from trellis.platform.api_client import ControlPlaneApi
from trellis.platform.hosts import ServiceAddresses, render_hosts

from .mesh_procs import ControlPlane

SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: payment}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: bank}
spec:
  hosts: [ledger]
  resolution: STATIC
  ports: [{number: 80, name: http}, {number: 5432, name: tcp-db}]
  workloadSelector: {labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: shop}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
"""

NEWCOMER = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: newcomer, namespace: shop}
spec:
  hosts: [newcomer]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: newcomer}}
"""


def _addresses(control: ControlPlane, namespace: str | None) -> ServiceAddresses:
    async def ask() -> ServiceAddresses:
        api = ControlPlaneApi(f"127.0.0.1:{control.api_port}")
        try:
            return await api.service_addresses(namespace)
        finally:
            await api.aclose()

    return asyncio.run(ask())


def _by_host(found: ServiceAddresses) -> dict[str, str]:
    return {item.host: item.address for item in found.items}


def _get(control: ControlPlane, path: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{control.api_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _delete(control: ControlPlane, namespace: str, name: str) -> None:
    url = (
        f"http://127.0.0.1:{control.api_port}/apis/networking.istio.io/v1/namespaces/"
        f"{namespace}/serviceentries/{name}"
    )
    with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10):
        pass


def test_services_get_stable_virtual_ips_and_names(tmp_path: Path) -> None:
    control = ControlPlane(tmp_path / "cp").start()
    try:
        control.apply(SERVICES)
        from_shop = _addresses(control, "shop")
        addresses = _by_host(from_shop)
        # Listed as soon as the apply is acknowledged; passthrough (NONE) hosts get none.
        assert set(addresses) == {"payment.shop.svc.cluster.local", "ledger.bank.svc.cluster.local"}
        assert all(address.startswith("240.240.0.") for address in addresses.values())
        assert len(set(addresses.values())) == 2
        assert from_shop.vip_range == "240.240.0.0/16" and from_shop.namespace == "shop"
        ledger = next(item for item in from_shop.items if item.host.startswith("ledger"))
        assert [port.number for port in ledger.ports] == [80, 5432]

        hosts = render_hosts(from_shop.items, "shop")
        payment = addresses["payment.shop.svc.cluster.local"]
        assert (
            f"{payment}\tpayment.shop.svc.cluster.local payment.shop payment.shop.svc payment\n"
            in hosts
        )
        assert f"{addresses['ledger.bank.svc.cluster.local']}\tledger.bank.svc.cluster.local " in (
            hosts
        )
        assert " ledger\n" not in hosts  # a short name only in its own namespace
        assert "localhost" not in hosts  # the namespace's own lines come first

        # The unfiltered list says which namespace each short name is for.
        status, everything = _get(control, "/api/v1/service-addresses")
        assert status == 200 and everything["kind"] == "ServiceAddressList"
        short = {
            item["host"]: (item["namespace"], item["shortNames"]) for item in everything["items"]
        }
        assert short["ledger.bank.svc.cluster.local"] == ("bank", ["ledger"])

        status, openapi = _get(control, "/openapi.json")
        assert "/api/v1/service-addresses" in openapi["paths"]

        status, refused = _get(control, "/api/v1/service-addresses?namespace=Not_A_Namespace")
        assert status == 400 and refused["kind"] == "Status"
        assert "namespace 'Not_A_Namespace'" in refused["message"]

        # A removed service's address is held: a newcomer gets another, and it comes back.
        _delete(control, "shop", "payment")
        assert "payment.shop.svc.cluster.local" not in _by_host(_addresses(control, "shop"))
        control.apply(NEWCOMER)
        newcomer = _by_host(_addresses(control, "shop"))["newcomer.shop.svc.cluster.local"]
        assert newcomer not in addresses.values()
        control.apply(SERVICES)
        again = _by_host(_addresses(control, None))
        assert again["payment.shop.svc.cluster.local"] == payment

        control.stop()
        control.start()
        assert _by_host(_addresses(control, None)) == again
        assert "service-vips.json" in {path.name for path in (tmp_path / "cp").iterdir()}
    finally:
        control.stop()


def test_the_range_is_a_flag(tmp_path: Path) -> None:
    control = ControlPlane(tmp_path / "cp", "--service-vip-range", "10.250.3.0/24").start()
    try:
        control.apply(SERVICES)
        found = _addresses(control, None)
        assert found.vip_range == "10.250.3.0/24"
        assert sorted(_by_host(found).values()) == ["10.250.3.1", "10.250.3.2"]
    finally:
        control.stop()
    bad = CliRunner().invoke(
        cli,
        ["control-plane", "--data-dir", str(tmp_path / "x"), "--service-vip-range", "10.0.0.1/8"],
    )
    assert bad.exit_code == 2
    assert "--service-vip-range" in bad.output and "host bits set" in bad.output
