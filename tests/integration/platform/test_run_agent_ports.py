"""`trellis run --capture transparent`: the sidecar serves Istio's agent ports, 15020
(merged metrics) and 15021 (readiness), at the workload's namespace address, where
the host (a prober, Prometheus) reaches them past the capture rules."""

from __future__ import annotations

import http.client
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis.platform.netns import transparent_unavailable

from ..controlplane.mesh_procs import ControlPlane
from .launch_procs import Launched, app_command

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cp").start()
    yield plane
    plane.stop()


def _get(host: str, port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=5.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_the_sidecars_health_and_metrics_ports_answer_at_the_namespace_address(
    control: ControlPlane, tmp_path: Path
) -> None:
    if (why := transparent_unavailable()) is not None:
        pytest.skip(why)
    tag = f"{random.randrange(16**4):04x}"
    launched = Launched(
        control, tmp_path, "pinged", ["--capture", "transparent"], app_command("echo_server.py")
    )
    launched.env.update(
        TRELLIS_NET_BRIDGE=f"tra{tag}",
        TRELLIS_NET_SUBNET=f"10.217.{random.randrange(256)}.0/24",
        TRELLIS_NET_PREFIX=f"ta{tag}",
        TRELLIS_NET_STATE_DIR=str(tmp_path / "net"),
    )
    launched.start()
    try:
        sidecar = launched.sidecar(30)
        assert sidecar.namespace is not None and sidecar.address != "127.0.0.1"
        assert "merged metrics :15020, health :15021" in launched.log()

        assert _get(sidecar.address, 15021, "/healthz/ready") == (200, "LIVE\n")
        status, metrics = _get(sidecar.address, 15020, "/stats/prometheus")
        assert status == 200 and "envoy_server_live 1" in metrics, metrics[:500]
        # From outside, only what Istio's agent offers: no config dump, no quit.
        assert _get(sidecar.address, 15020, "/config_dump")[0] == 404
        assert _get(sidecar.address, 15021, "/quitquitquit")[0] == 404

        launched.signal()
        # 143: the application had not yet installed its SIGTERM handler; either way it ends.
        assert launched.wait(30) in (0, 143), launched.describe()
    finally:
        launched.kill()
