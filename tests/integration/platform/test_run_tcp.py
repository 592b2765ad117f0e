"""`trellis run --capture transparent` with a TCP service: the client reaches it by name,
through its virtual IP, over mTLS between the sidecars; nothing in either program knows
the mesh. The server sidecar's metrics say the connections were mutual TLS from the
client's identity."""

from __future__ import annotations

import http.client
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from trellis.platform.netns import transparent_unavailable

from ..controlplane.mesh_procs import ControlPlane, until
from .launch_procs import Launched, app_command

pytestmark = pytest.mark.timeout(90)

SERVICE_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcpecho, namespace: default}
spec:
  hosts: [tcpecho.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: tcp-echo, protocol: TCP}]
  workloadSelector: {labels: {app: tcpecho}}
"""


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cp").start()
    yield plane
    plane.stop()


def _metrics(address: str) -> str:
    conn = http.client.HTTPConnection(address, 15020, timeout=5.0)
    try:
        conn.request("GET", "/stats/prometheus")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _opened(metrics: str) -> list[str]:
    """The server side's istio_tcp_connections_opened_total lines with a count above 0."""
    pattern = re.compile(
        r'^istio_tcp_connections_opened_total\{([^}]*reporter="destination"[^}]*)\} (\d+)'
    )
    return [
        m.group(1)
        for line in metrics.splitlines()
        if (m := pattern.match(line)) and int(m.group(2)) > 0
    ]


def test_a_tcp_service_by_name_over_mutual_tls(control: ControlPlane, tmp_path: Path) -> None:
    if (why := transparent_unavailable()) is not None:
        pytest.skip(why)
    control.apply(SERVICE_ENTRY)
    tag = f"{random.randrange(16**4):04x}"
    network = {
        "TRELLIS_NET_BRIDGE": f"trt{tag}",
        "TRELLIS_NET_SUBNET": f"10.218.{random.randrange(256)}.0/24",
        "TRELLIS_NET_PREFIX": f"tt{tag}",
        "TRELLIS_NET_STATE_DIR": str(tmp_path / "net"),
    }
    capture = ["--capture", "transparent"]
    server = Launched(
        control, tmp_path, "tcpecho", [*capture, "--port", "7000"], app_command("tcp_echo.py")
    )
    client = Launched(
        control,
        tmp_path,
        "tcpclient",
        capture,
        app_command("tcp_client.py", "tcpecho", "7000", "5"),
    )
    server.env.update(network)
    client.env.update(network)
    server.start()
    try:
        sidecar = server.sidecar(30)
        client.start()
        assert client.wait(60) == 0, f"{client.output()}\n{client.describe()}\n{server.describe()}"
        summary = json.loads(client.output().strip().splitlines()[-1])
        assert summary == {"echoed": 5, "failures": []}, summary

        opened = until(lambda: _opened(_metrics(sidecar.address)) or None, 10, "tcp metrics")
        assert opened is not None
        labels = " ".join(opened)
        assert 'connection_security_policy="mutual_tls"' in labels, labels
        assert 'source_principal="spiffe://cluster.local/ns/default/sa/tcpclient"' in labels
        assert 'destination_service="tcpecho.default.svc.cluster.local"' in labels, labels
    finally:
        client.kill()
        server.kill()
