"""VHDS end to end: `trellis control-plane` and `trellis proxy --xds` (delta, the
default) with real HTTP upstreams.

The proxy announces VHDS in its node, so its route configurations arrive without
virtual hosts and each service's virtual host comes as a VirtualHost resource. A
VirtualService applied under traffic reaches the proxy as virtual hosts only (the
route configuration's RDS version stays), traffic follows it with no failed
request, and `/config_dump`, `trellis proxy-config` and the proxy status show the
virtual hosts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..bootstrap import free_port
from ..client import request
from ..harness import upstream_manager
from .mesh_procs import ControlPlane, Load, SidecarProcess, until

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: payment}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: shop}
spec:
  hosts: [ledger.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payment-v1, namespace: shop}
spec: {address: 127.0.0.1, ports: {http: %(v1)d}, labels: {app: payment, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payment-v2, namespace: shop}
spec: {address: 127.0.0.1, ports: {http: %(v2)d}, labels: {app: payment, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger, namespace: shop}
spec: {address: 127.0.0.1, ports: {http: %(ledger)d}, labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payment, namespace: shop}
spec:
  host: payment.shop.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
  - match: [{uri: {prefix: /v1-only}}]
    route: [{destination: {host: payment, subset: v1}}]
  - route:
    - {destination: {host: payment, subset: v1}, weight: %(v1)d}
    - {destination: {host: payment, subset: v2}, weight: %(v2)d}
"""


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cp").start()
    try:
        yield plane
    finally:
        plane.stop()


def _vhds_routes(dump: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The dynamic route configurations that take VHDS: name -> (RDS version, config)."""
    for config in dump["configs"]:
        if config["@type"].endswith("RoutesConfigDump"):
            return {
                entry["route_config"]["name"]: (entry["version_info"], entry["route_config"])
                for entry in config.get("dynamic_route_configs", [])
                if "vhds" in entry["route_config"]
            }
    return {}


def _payment_host(config: dict[str, Any]) -> dict[str, Any]:
    hosts: list[dict[str, Any]] = config["virtual_hosts"]
    (host,) = (h for h in hosts if "payment" in h.get("domains", []))
    return host


def _weights(host: dict[str, Any]) -> dict[str, int]:
    """The catch-all route's clusters and weights (one cluster: weight 100)."""
    action = host["routes"][-1]["route"]
    if "cluster" in action:
        return {action["cluster"]: 100}
    return {c["name"]: int(c["weight"]) for c in action["weighted_clusters"]["clusters"]}


def _vhds_status(control: ControlPlane, node_id: str) -> dict[str, Any] | None:
    url = f"http://127.0.0.1:{control.api_port}/api/v1/proxies"
    with urllib.request.urlopen(url, timeout=5) as answer:
        items = json.load(answer)["items"]
    for item in items:
        if item["id"] == node_id:
            status: dict[str, Any] | None = item["types"].get("VHDS")
            return status
    return None


def _synced(control: ControlPlane, node_id: str) -> dict[str, Any]:
    """The proxy's VHDS status once it has ACKed what was sent; {} before."""
    status = _vhds_status(control, node_id)
    return status if status is not None and status["state"] == "SYNCED" else {}


def test_a_virtual_service_reaches_the_proxy_as_virtual_hosts_under_traffic(
    control: ControlPlane, tmp_path: Path
) -> None:
    with upstream_manager() as make_up:
        apps = {name: make_up(name) for name in ("v1", "v2", "ledger")}
        control.apply(MESH % {name: app.port for name, app in apps.items()})
        outbound = free_port()
        token_file = tmp_path / "web.token"
        token_file.write_text(control.join_token("shop", "web", "web") + "\n")
        meta = {"NAMESPACE": "shop", "TRELLIS_OUTBOUND_PORT": str(outbound)}
        web = SidecarProcess(control, tmp_path, "web", token_file, meta).start()
        try:
            _follows_the_virtual_service(control, web, outbound)
        finally:
            web.stop()


def _follows_the_virtual_service(control: ControlPlane, web: SidecarProcess, port: int) -> None:
    def served(path: str = "/pay") -> str | None:
        return request(port, "GET", f"http://payment{path}", host="payment").header("x-upstream")

    until(lambda: served() in ("v1", "v2"), what="web -> payment through the sidecar")
    assert request(port, "GET", "http://ledger/", host="ledger").header("x-upstream") == "ledger"

    # Routes came split: the route configuration with `vhds`, its hosts by VHDS.
    routes = _vhds_routes(web.admin_json("/config_dump"))
    assert routes, "no route configuration with vhds in the proxy's config dump"
    name, (rds_version, config) = next(iter(routes.items()))
    assert all(h["name"].startswith(f"{name}/") for h in config["virtual_hosts"])
    before = until(lambda: _synced(control, "web"), what="VHDS acknowledged by the proxy")
    assert name in before["resourceNames"] and before["acks"] >= 1

    with Load(port, seconds=4.0) as load:
        control.apply(ROUTES % {"v1": 0, "v2": 100})
        until(lambda: all(served() == "v2" for _ in range(10)), what="the 0/100 split")
        control.apply(ROUTES % {"v1": 100, "v2": 0})
        until(lambda: all(served() == "v1" for _ in range(10)), what="the 100/0 split")
    assert load.ok > 0 and not load.failures, load.failures[:3]
    assert Counter(served("/v1-only/x") for _ in range(10)) == {"v1": 10}

    dump = web.admin_json("/config_dump")
    version_after, config_after = _vhds_routes(dump)[name]
    assert version_after == rds_version  # the route configuration itself was not resent
    weights = _weights(_payment_host(config_after))
    assert [c for c, w in weights.items() if w] == ["outbound|80|v1|payment.shop.svc.cluster.local"]
    after = until(lambda: _synced(control, "web"), what="the new virtual hosts acknowledged")
    assert after["ackedVersion"] != before["ackedVersion"] and after["lastNack"] is None

    server = f"http://127.0.0.1:{control.api_port}"
    shown = subprocess.run(
        [sys.executable, "-m", "trellis.cli.main", "proxy-config", "web", "routes", "-s", server],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    payment_rows = [line for line in shown.splitlines() if "payment" in line]
    assert any("/v1-only" in line for line in payment_rows), shown
    assert any("ledger" in line for line in shown.splitlines()), shown
