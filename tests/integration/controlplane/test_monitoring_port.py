"""The control plane's own metrics (`trellis control-plane --monitoring-address`, istiod's 15014).

A real control plane serves `/metrics` on 127.0.0.1; a real sidecar gets its
certificate (a CSR with a join token) and its config over ADS, and a refused
CSR is sent beside it; the scraped exposition, read with prometheus_client's
parser, moves accordingly and keeps its counters once the sidecar is gone.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from trellis.core.addresses import SocketAddress
from trellis.runtime.ca_client import IdentityError, request_certificate

from ..bootstrap import free_port
from ..proxyproc import Sample, metric_sum
from .mesh_procs import ControlPlane, SidecarProcess, until

SERVICE_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payment, namespace: default}
spec:
  hosts: [payment.example, payment]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    port = free_port()
    plane = ControlPlane(tmp_path / "cp", "--monitoring-address", f"127.0.0.1:{port}")
    plane.monitoring_port = port  # type: ignore[attr-defined]
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def scrape(control: ControlPlane) -> tuple[str, str]:
    """(content type, body) of GET /metrics."""
    port: int = control.monitoring_port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.headers["content-type"], response.read().decode()


def samples(control: ControlPlane) -> list[Sample]:
    _, text = scrape(control)
    return [
        Sample(sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def refused_csr(control: ControlPlane) -> str:
    async def ask() -> str:
        address = SocketAddress("127.0.0.1", control.xds_port)
        try:
            await request_certificate(address, "not a csr", "not a token", call_timeout=5)
        except IdentityError as exc:
            return str(exc)
        return "answered"

    return asyncio.run(ask())


def test_metrics_follow_proxies_and_certificates(control: ControlPlane, tmp_path: Path) -> None:
    content_type, text = scrape(control)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert "istiod_uptime_seconds" in text and "pilot_xds{" not in text
    before = samples(control)
    assert metric_sum(before, "citadel_server_csr_count_total") == 0
    assert metric_sum(before, "pilot_services") == 0

    control.apply(SERVICE_ENTRY)
    assert "UNAUTHENTICATED" in refused_csr(control)
    token_file = tmp_path / "web.token"
    token_file.write_text(control.join_token("default", "web", "web") + "\n")
    sidecar = SidecarProcess(control, tmp_path, "web", token_file, {"NAMESPACE": "default"})
    try:
        sidecar.start()  # ready once its CSR was signed; then it connects over ADS

        def connected() -> list[Sample]:
            found = samples(control)
            return found if metric_sum(found, "pilot_xds") == 1 else []

        try:
            during = until(connected, timeout=30, what="pilot_xds 1")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{control.log_text()[-3000:]}") from None
        assert metric_sum(during, "pilot_xds_pushes_total") > 0
        assert metric_sum(during, "pilot_xds_pushes_total", type="cds") > 0
        assert metric_sum(during, "pilot_total_xds_rejects_total") == 0
        assert metric_sum(during, "citadel_server_csr_count_total") == 2
        assert metric_sum(during, "citadel_server_success_cert_issuance_count_total") == 1
        assert metric_sum(during, "citadel_server_authentication_failure_count_total") == 1
        assert metric_sum(during, "pilot_services") == 2  # the entry's two hosts
        assert metric_sum(during, "citadel_server_root_cert_expiry_timestamp") > 0
        assert metric_sum(during, "process_resident_memory_bytes") > 0 or sys.platform != "linux"
    finally:
        sidecar.stop()
    assert sidecar.crash_report() is None

    def disconnected() -> list[Sample]:
        found = samples(control)
        return found if metric_sum(found, "pilot_xds") == 0 else []

    after = until(disconnected, timeout=30, what="pilot_xds 0 once the sidecar stopped")
    pushes = metric_sum(after, "pilot_xds_pushes_total")
    assert pushes >= metric_sum(during, "pilot_xds_pushes_total")


def test_other_paths_are_not_found(control: ControlPlane) -> None:
    port: int = control.monitoring_port  # type: ignore[attr-defined]
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/config_dump", timeout=5)
    caught.value.close()
    assert caught.value.code == 404


def test_a_taken_monitoring_port_stops_the_start(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        command = [
            sys.executable, "-m", "trellis.cli.main", "control-plane",
            "--data-dir", str(tmp_path / "cp"), "--api-port", str(free_port()),
            "--xds-address", f"127.0.0.1:{free_port()}", "--xds-socket", "",
            "--monitoring-address", f"127.0.0.1:{port}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr.decode()[-2000:]
    assert f"cannot listen on 127.0.0.1:{port} for the monitoring server" in done.stderr.decode()
