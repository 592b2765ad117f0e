"""Conformance with a real third-party xDS client: grpcio in proxyless mode (`xds:///`).

`trellis control-plane` runs as a process; Istio config goes in through its REST
API; two gRPC backends (v1, v2) are WorkloadEntries of a GRPC ServiceEntry. A
grpcio client in a subprocess (`GRPC_XDS_BOOTSTRAP`, node metadata
`GENERATOR: grpc`) follows the VirtualService split, a live change of it, and
NACKs a cluster load-balancing policy it does not implement; the NACK is shown
by `GET /api/v1/proxies` and `trellis proxy-status`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from ..bootstrap import free_port

T = TypeVar("T")

HOST = "payment.shop.svc.cluster.local"
PORT = 50051
METHOD = "/trellis.test.Echo/Who"
NODE_ID = "grpc-client"

MESH = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: payment, namespace: shop}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: grpc, protocol: GRPC}}]
  workloadSelector: {{labels: {{app: payment}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: payment-v1, namespace: shop}}
spec: {{address: 127.0.0.1, ports: {{grpc: %(v1)d}}, labels: {{app: payment, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: payment-v2, namespace: shop}}
spec: {{address: 127.0.0.1, ports: {{grpc: %(v2)d}}, labels: {{app: payment, version: v2}}}}
"""

RULE = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: payment, namespace: shop}}
spec:
  host: {HOST}
  trafficPolicy: {{loadBalancer: {{simple: %(lb)s}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""

SPLIT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
  - route:
    - {destination: {host: payment, subset: v1}, weight: %(v1)d}
    - {destination: {host: payment, subset: v2}, weight: %(v2)d}
    retries: {attempts: 2, retryOn: "unavailable,5xx"}
"""

# `count N TARGET...`: N calls to the first target, then one to each other target,
# one JSON line. `run SECONDS TARGET`: calls for SECONDS, one JSON line per 0.5 s.
CLIENT = f"""
import collections, json, sys, time, grpc

def call(channel):
    return channel.unary_unary("{METHOD}")(b"", timeout=10, wait_for_ready=True).decode()

def outcome(channel, ok, errors):
    try:
        ok[call(channel)] += 1
    except grpc.RpcError as error:
        errors[error.code().name + ": " + (error.details() or "")[:200]] += 1

mode, amount, targets = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
channels = [grpc.insecure_channel(target) for target in targets]
ok, errors = collections.Counter(), collections.Counter()
if mode == "count":
    for _ in range(int(amount)):
        outcome(channels[0], ok, errors)
    aliases = {{}}
    for target, channel in zip(targets[1:], channels[1:]):
        alias_ok, alias_errors = collections.Counter(), collections.Counter()
        outcome(channel, alias_ok, alias_errors)
        aliases[target] = {{"ok": alias_ok, "errors": alias_errors}}
    print(json.dumps({{"ok": ok, "errors": errors, "aliases": aliases}}), flush=True)
else:
    end = time.monotonic() + amount
    window_end = time.monotonic() + 0.5
    while time.monotonic() < end:
        outcome(channels[0], ok, errors)
        if time.monotonic() >= window_end:
            print(json.dumps({{"ok": ok, "errors": errors}}), flush=True)
            ok, errors = collections.Counter(), collections.Counter()
            window_end += 0.5
    print(json.dumps({{"ok": ok, "errors": errors}}), flush=True)
"""


def _until(check: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class ControlPlane:
    """`trellis control-plane` as a process, and its REST API."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.xds_port = free_port()
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.log = data_dir / "control-plane.log"

    @contextmanager
    def running(self) -> Iterator[ControlPlane]:
        command = [sys.executable, "-m", "trellis.cli.main", "control-plane"]
        command += ["--data-dir", str(self.data_dir), "--api-port", str(self.api_port)]
        command += ["--xds-address", f"127.0.0.1:{self.xds_port}"]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            _until(self._healthy, 20, f"the control plane\n{self.log.read_text()[-3000:]}")
            yield self
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def apply(self, text: str) -> None:
        request = urllib.request.Request(
            f"{self.api}/api/v1/apply",
            data=text.encode(),
            headers={"content-type": "application/yaml"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.read()

    def proxies(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.api}/api/v1/proxies", timeout=5) as response:
            items: list[dict[str, Any]] = json.load(response)["items"]
            return items


@contextmanager
def backend(version: str) -> Iterator[int]:
    """A gRPC server whose one method answers with its version."""

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        return version.encode()

    handler = grpc.method_handlers_generic_handler(
        "trellis.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait(5)


class Client:
    """The CLIENT script in a subprocess (grpc keeps one xDS client per process)."""

    def __init__(self, tmp: Path, xds_port: int) -> None:
        self.bootstrap = tmp / "grpc-bootstrap.json"
        self.log = tmp / "grpc-client.log"
        server = {
            "server_uri": f"127.0.0.1:{xds_port}",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }
        node = {
            "id": NODE_ID,
            "cluster": "client",
            "metadata": {"GENERATOR": "grpc", "NAMESPACE": "shop", "WORKLOAD_NAME": "client"},
        }
        self.bootstrap.write_text(json.dumps({"xds_servers": [server], "node": node}))

    def start(self, *args: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
        env.update(GRPC_XDS_BOOTSTRAP=str(self.bootstrap))
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-c", CLIENT, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
            )

    def count(self, calls: int, *targets: str) -> dict[str, Any]:
        proc = self.start("count", str(calls), *targets)
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 0, self.log.read_text()[-3000:]
        result: dict[str, Any] = json.loads(out)
        return result


class Windows:
    """The JSON lines of a `run` client, read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        finally:
            self.proc.kill()
            self._thread.join(5)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def _within(v2: int, total: int, share: float) -> bool:
    """`v2` of `total` is within 4 standard deviations of a binomial(total, share)."""
    return abs(v2 - total * share) <= 4 * math.sqrt(total * share * (1 - share))


def _cds_nack(control: ControlPlane) -> str:
    for proxy in control.proxies():
        nack = proxy["types"].get("CDS", {}).get("lastNack")
        if proxy["id"] == NODE_ID and nack:
            return str(nack["message"])
    return ""


@pytest.mark.timeout(90)
def test_grpcio_proxyless_client_follows_trellis_config(tmp_path: Path) -> None:
    target = f"xds:///{HOST}:{PORT}"
    control = ControlPlane(tmp_path / "data")
    with backend("v1") as v1, backend("v2") as v2, control.running():
        control.apply(MESH % {"v1": v1, "v2": v2})
        control.apply(RULE % {"lb": "ROUND_ROBIN"})
        control.apply(SPLIT % {"v1": 80, "v2": 20})
        client = Client(tmp_path, control.xds_port)

        # 80/20 over 1000 calls; the short names a client in `shop` may use work too.
        aliases = ["xds:///payment.shop:50051", "xds:///payment:50051", "xds:///payment"]
        result = client.count(1000, target, *aliases)
        assert not result["errors"], result["errors"]
        assert sum(result["ok"].values()) == 1000
        assert _within(result["ok"].get("v2", 0), 1000, 0.2), result["ok"]
        for alias in aliases:
            assert sum(result["aliases"][alias]["ok"].values()) == 1, result["aliases"]

        # A live change to 50/50 while the client calls: no call fails.
        windows = Windows(client.start("run", "8", target))
        try:
            switched = _live_changes(control, windows)
        finally:
            windows.wait(20)
        assert windows.proc.returncode == 0, client.log.read_text()[-3000:]
        errors = [w["errors"] for w in windows.lines if w["errors"]]
        assert not errors, errors
        later = windows.lines[switched:]
        v1_calls = sum(w["ok"].get("v1", 0) for w in later)
        v2_calls = sum(w["ok"].get("v2", 0) for w in later)
        assert v1_calls + v2_calls >= 200, later
        assert _within(v2_calls, v1_calls + v2_calls, 0.5), (v1_calls, v2_calls)


def _live_changes(control: ControlPlane, windows: Windows) -> int:
    """Switch to 50/50, then push a cluster grpcio rejects; where the 50/50 windows start."""
    _until(lambda: len(windows.lines) >= 2, 15, "the client's first windows")
    control.apply(SPLIT % {"v1": 50, "v2": 50})

    def first_even() -> int | None:
        for i, window in enumerate(windows.lines):
            if window["ok"].get("v2", 0) > 0.6 * window["ok"].get("v1", 0):
                return i + 1  # the window after the one the change arrived in
        return None

    switched = _until(first_even, 5, "the 50/50 split to reach the client")
    assert switched is not None

    # A load-balancing policy grpcio does not implement: NACKed, shown, old config kept.
    control.apply(RULE % {"lb": "RANDOM"})
    nack = _until(lambda: _cds_nack(control), 5, "grpcio to NACK the RANDOM clusters")
    assert "lb_policy" in nack and f"outbound|{PORT}|v1|{HOST}" in nack, nack
    [proxy] = [p for p in control.proxies() if p["id"] == NODE_ID]
    assert "grpc" in proxy["userAgent"].lower(), proxy
    assert proxy["types"]["CDS"]["state"] == "STALE", proxy
    assert {proxy["types"][t]["state"] for t in ("LDS", "RDS", "EDS")} == {"SYNCED"}, proxy
    status = subprocess.run(
        [sys.executable, "-m", "trellis.cli.main", "proxy-status", "--server", control.api],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    row = next(line for line in status.stdout.splitlines() if line.startswith(NODE_ID))
    assert row.split()[1] == "STALE" and "CDS: xDS response validation errors" in row, row
    return switched
