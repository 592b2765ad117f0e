"""xDS and the CA over the control plane's Unix socket (`trellis proxy --xds unix:PATH`).

A real `trellis control-plane` serves DATA_DIR/xds.sock (mode 0600) besides its
TCP port; a real `trellis proxy` with a join token gets its certificate and its
listeners through the socket, also from inside a network namespace of its own
(where the host's 127.0.0.1 is out of reach). Stale socket files are replaced,
live ones are not, and a clean stop removes the file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trellis.controlplane.api_mesh import MeshInfo

from ..bootstrap import free_port
from ..client import Response, request
from ..upstream import HttpUpstream
from .api_helpers import in_process
from .mesh_procs import ControlPlane, SidecarProcess, until

PAYMENT = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payment, namespace: default}
spec:
  hosts: [payment.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: payment}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payment, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: %(port)d}
  serviceAccount: payment
  labels: {app: payment}
"""
WEB = "spiffe://cluster.local/ns/default/sa/web"


def get_json(control: ControlPlane, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{control.api_port}{path}", timeout=5) as answer:
        return json.load(answer)


def unix_sidecar(
    control: ControlPlane, workdir: Path, name: str, metadata: dict[str, str]
) -> SidecarProcess:
    """`trellis proxy --xds unix:DATA_DIR/xds.sock` with a join token (the CA over the socket)."""
    token_file = workdir / f"{name}.token"
    token_file.write_text(control.join_token("default", name, name) + "\n")
    proxy = SidecarProcess(control, workdir, name, token_file, {"NAMESPACE": "default", **metadata})
    at = proxy.command.index("--xds")
    proxy.command[at + 1] = f"unix:{control.data_dir / 'xds.sock'}"
    return proxy


def dynamic_listeners(dump: dict[str, Any]) -> list[str]:
    for config in dump["configs"]:
        if config["@type"].endswith("ListenersConfigDump"):
            return [item["name"] for item in config.get("dynamic_listeners", [])]
    return []


def ads_endpoint(dump: dict[str, Any]) -> dict[str, Any]:
    """The address of the bootstrap's `xds-grpc` cluster, as the config dump shows it."""
    for config in dump["configs"]:
        if config["@type"].endswith("BootstrapConfigDump"):
            for cluster in config["bootstrap"]["static_resources"]["clusters"]:
                if cluster["name"] == "xds-grpc":
                    endpoints = cluster["load_assignment"]["endpoints"]
                    address: dict[str, Any] = endpoints[0]["lb_endpoints"][0]["endpoint"]["address"]
                    return address
    raise AssertionError("no xds-grpc cluster in the bootstrap")


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cp").start()
    try:
        yield plane
    finally:
        plane.stop()


def test_a_proxy_gets_its_certificate_and_config_over_the_socket(
    control: ControlPlane, tmp_path: Path
) -> None:
    path = control.data_dir / "xds.sock"
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert get_json(control, "/api/v1/mesh") == {
        "kind": "Mesh",
        "trustDomain": "cluster.local",
        "rootNamespace": "trellis-system",
        "xdsAddress": f"127.0.0.1:{control.xds_port}",
        "xdsSocket": str(path),
    }
    app = HttpUpstream("payment-app").start()
    outbound = free_port()
    sidecar = unix_sidecar(control, tmp_path, "web", {"TRELLIS_OUTBOUND_PORT": str(outbound)})
    try:
        control.apply(PAYMENT % {"port": app.port})
        sidecar.start()  # ready only once the CA answered over the socket
        assert sidecar.certificate()["subject_alt_names"] == [{"uri": WEB}]
        until(lambda: dynamic_listeners(sidecar.admin_json("/config_dump")), what="listeners")
        assert ads_endpoint(sidecar.admin_json("/config_dump")) == {"pipe": {"path": str(path)}}

        def pay() -> Response | None:
            answer = request(outbound, "GET", "http://payment/pay", host="payment")
            return answer if answer.status == 200 else None

        response = until(pay, what="web -> payment through the outbound listener")
        assert response is not None and response.header("x-upstream") == "payment-app"
        proxies = get_json(control, "/api/v1/proxies")["items"]
        assert [(p["id"], p["peer"].startswith("unix:")) for p in proxies] == [("web", True)]
        assert sidecar.alive()

        control.stop()
        assert not path.exists()  # a clean stop removes the socket file
        assert request(outbound, "GET", "http://payment/pay", host="payment").status == 200
    finally:
        sidecar.stop()
        app.stop()
    assert sidecar.crash_report() is None


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "cp"
    data_dir.mkdir()
    path = data_dir / "xds.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a control plane that died leaves the file, nobody listening
    stale.close()
    first = ControlPlane(data_dir).start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            probe.connect(str(path))  # the new control plane answers on it
        inode = os.stat(path).st_ino

        second = run_control_plane(tmp_path / "cp2", "--xds-socket", str(path))
        assert second.returncode == 1, second.stderr
        assert "another process is serving on this socket" in second.stderr
        assert os.stat(path).st_ino == inode  # the first control plane's socket is untouched
    finally:
        first.stop()

    not_a_socket = tmp_path / "file.sock"
    not_a_socket.write_text("keep me")
    third = run_control_plane(tmp_path / "cp3", "--xds-socket", str(not_a_socket))
    assert third.returncode == 1, third.stderr
    assert "exists and is not a socket" in third.stderr
    assert not_a_socket.read_text() == "keep me"


def test_the_socket_can_be_switched_off_and_a_bad_path_is_named(tmp_path: Path) -> None:
    control = ControlPlane(tmp_path / "cp", "--xds-socket", "").start()
    try:
        assert not (control.data_dir / "xds.sock").exists()
        assert get_json(control, "/api/v1/mesh")["xdsSocket"] is None
    finally:
        control.stop()
    long_path = "/tmp/" + "x" * 120 + ".sock"
    refused = run_control_plane(tmp_path / "cp2", "--xds-socket", long_path)
    assert refused.returncode == 2, refused.stderr
    assert "--xds-socket" in refused.stderr and "at most 107" in refused.stderr


def test_the_mesh_route_is_in_the_openapi_document() -> None:
    info = MeshInfo("example.org", "trellis-system", "127.0.0.1:15010", "/run/xds.sock")
    client = in_process(mesh=info)
    assert client.get("/api/v1/mesh").json()["trustDomain"] == "example.org"
    spec = client.get("/openapi.json").json()
    answer = spec["paths"]["/api/v1/mesh"]["get"]["responses"]["200"]["content"]
    assert answer["application/json"]["schema"] == {"$ref": "#/components/schemas/MeshDocument"}
    schema = spec["components"]["schemas"]["MeshDocument"]
    assert set(schema["required"]) == {"trustDomain", "rootNamespace", "xdsAddress", "xdsSocket"}
    assert in_process().get("/api/v1/mesh").status_code == 404  # not given: not served


def run_control_plane(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A control plane expected to exit at start: its exit status and output."""
    command = [sys.executable, "-m", "trellis.cli.main", "control-plane"]
    command += ["--data-dir", str(data_dir), "--api-port", str(free_port())]
    command += ["--xds-address", f"127.0.0.1:{free_port()}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


# --- across network namespaces -----------------------------------------------------


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    name = f"trellis-xds-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(
            ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, timeout=10
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


FETCH = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as answer:
        sys.stdout.write(answer.read().decode())
except (OSError, urllib.error.URLError) as exc:
    sys.stdout.write(f"unreachable: {exc}")
    sys.exit(3)
"""


def fetch_in(namespace: str, url: str) -> str | None:
    """GET `url` from inside `namespace`; the body, or None when nothing answers."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", FETCH, url],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    return done.stdout if done.returncode == 0 else None


def test_a_proxy_in_another_network_namespace_reaches_the_control_plane(
    control: ControlPlane, tmp_path: Path, netns: str
) -> None:
    assert fetch_in(netns, f"http://127.0.0.1:{control.api_port}/healthz") is None  # not the host's
    control.apply(PAYMENT % {"port": 18080})
    sidecar = unix_sidecar(control, tmp_path, "web", {"TRELLIS_OUTBOUND_PORT": "15001"})
    sidecar.command = ["ip", "netns", "exec", netns, *sidecar.command]
    admin = f"http://127.0.0.1:{sidecar.admin_port}"
    sidecar.start(wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while fetch_in(netns, f"{admin}/ready") is None:
            assert sidecar.alive(), sidecar.describe()
            assert time.monotonic() < deadline, f"not ready in its namespace\n{sidecar.describe()}"
            time.sleep(0.2)
        certs = json.loads(fetch_in(netns, f"{admin}/certs") or "{}")
        leaf = certs["certificates"][0]["cert_chain"][0]
        assert leaf["subject_alt_names"] == [{"uri": WEB}]
        listeners = until(
            lambda: dynamic_listeners(json.loads(fetch_in(netns, f"{admin}/config_dump") or "{}")),
            what="listeners over ADS in the namespace",
        )
        assert listeners
        proxies = get_json(control, "/api/v1/proxies")["items"]
        assert [p["id"] for p in proxies] == ["web"]
    finally:
        sidecar.stop()
    assert sidecar.crash_report() is None
