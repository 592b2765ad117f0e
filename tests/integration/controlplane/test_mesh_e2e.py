"""End to end: `trellis control-plane` and three `trellis proxy` processes, real HTTP.

web (explicit-proxy client) -> web's sidecar -> payment v1 / v2 sidecars (inbound)
-> the payment applications. Istio config goes in through the REST API while
traffic flows; the control plane is killed and restarted under traffic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ..bootstrap import free_port, xds_bootstrap
from ..client import Response, request
from ..harness import proxy_manager, upstream_manager
from ..upstream import HttpUpstream

T = TypeVar("T")

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
  - match: [{uri: {prefix: /v2-only}}]
    route: [{destination: {host: payment, subset: v2}}]
  - route:
    - {destination: {host: payment, subset: v1}, weight: %(v1)d}
    - {destination: {host: payment, subset: v2}, weight: %(v2)d}
    retries: {attempts: 3, retryOn: 5xx}
"""


class ControlPlaneProcess:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.xds_port = free_port()
        self.api_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "control-plane.log"

    def start(self) -> None:
        command = [sys.executable, "-m", "trellis.cli.main", "control-plane"]
        command += ["--data-dir", str(self.data_dir), "--api-port", str(self.api_port)]
        command += ["--xds-address", f"127.0.0.1:{self.xds_port}", "--log-level", "debug"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        _until(self._healthy, what=f"the control plane API\n{self.log.read_text()[-3000:]}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def apply(self, text: str) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/api/v1/apply",
            data=text.encode(),
            headers={"content-type": "application/yaml"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _until(check: Callable[[], T], timeout: float = 15.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _node(node_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"id": node_id, "cluster": metadata["WORKLOAD_NAME"], "metadata": metadata}


class Traffic:
    """Requests through web's sidecar in a thread; every outcome is kept."""

    def __init__(self, port: int, path: str = "/pay") -> None:
        self.port = port
        self.path = path
        self.results: list[Response] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.results) < 20000:
            self.results.append(self.get(self.path))

    def get(self, path: str) -> Response:
        return request(self.port, "GET", f"http://payment{path}", host="payment")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def failures(self) -> list[Response]:
        return [r for r in self.results if r.status != 200]


@pytest.fixture()
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    control = ControlPlaneProcess(tmp_path / "data")
    control.data_dir.mkdir()
    control.start()
    try:
        yield control
    finally:
        control.stop()


def test_virtual_service_applied_under_traffic_and_control_plane_restart(
    plane: ControlPlaneProcess, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    with upstream_manager() as make_up, proxy_manager(pytestconfig, tmp_path) as start:
        apps: dict[str, HttpUpstream] = {"v1": make_up("v1"), "v2": make_up("v2")}
        workload_ports = {"v1": free_port(), "v2": free_port()}
        plane.apply(MESH % workload_ports)
        outbound = free_port()
        for version, app in apps.items():
            port = workload_ports[version]
            meta = {
                "WORKLOAD_NAME": f"payment-{version}",
                "NAMESPACE": "shop",
                "LABELS": {"app": "payment", "version": version},
                "TRELLIS_APP_PORTS": f"{port}:{app.port}",
                "TRELLIS_OUTBOUND_PORT": str(free_port()),
            }
            start(xds_bootstrap(_node(f"payment-{version}", meta), free_port(), plane.xds_port))
        web_meta = {
            "WORKLOAD_NAME": "web",
            "NAMESPACE": "shop",
            "LABELS": {"app": "web"},
            "TRELLIS_OUTBOUND_PORT": str(outbound),
        }
        # web speaks delta xDS (what `trellis proxy --xds` uses), the payment sidecars
        # state of the world: both protocols follow the same changes and the restart.
        web = xds_bootstrap(_node("web", web_meta), free_port(), plane.xds_port, "DELTA_GRPC")
        start(web, name="web")
        traffic = Traffic(outbound)
        _until(lambda: traffic.get("/pay").status == 200, what="web -> payment through the mesh")

        with traffic:
            time.sleep(0.5)
            plane.apply(ROUTES % {"v1": 90, "v2": 10})
            _until(lambda: traffic.get("/v2-only").header("x-upstream") == "v2", what="the VS")
            time.sleep(0.5)
        assert not traffic.failures(), traffic.failures()[:3]

        served = Counter(traffic.get("/pay").header("x-upstream") for _ in range(400))
        # 90/10 over 400 requests: expected 40 on v2, sd ~6; allow a wide band.
        assert 15 <= served["v2"] <= 70 and served["v1"] + served["v2"] == 400, served

        # Retries on 503 come from the route: each first attempt fails, the client never sees it.
        flaky = [traffic.get(f"/flaky/e2e{i}/1/status/503") for i in range(20)]
        assert all(r.status == 200 for r in flaky), [r.status for r in flaky]

        # The control plane dies: traffic goes on; back up, a new change reaches the proxies.
        with Traffic(outbound) as during:
            plane.kill()
            time.sleep(1.0)
        assert during.results and not during.failures(), during.failures()[:3]
        plane.start()
        plane.apply(ROUTES % {"v1": 0, "v2": 100})
        _until(
            lambda: all(traffic.get("/pay").header("x-upstream") == "v2" for _ in range(10)),
            timeout=30,
            what="the proxies to resync with the restarted control plane",
        )
