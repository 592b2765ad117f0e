"""Issue 5: `trellis run` injects a sidecar into plain processes (explicit capture).

A real control plane; two replicas (v1, v2) of a service `echo` and a client
`caller`, each a plain Python program started by `trellis run`. The caller
reaches `http://echo/` through HTTP_PROXY, over mTLS; stopping v1 takes it
out of the registry while the caller keeps calling; every launcher exits with
its application's status and leaves no sidecar and no registration behind.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..controlplane.mesh_procs import ControlPlane, until
from .launch_procs import (
    Launched,
    app_command,
    process_gone,
    service_entry,
    serving,
    workload_entry,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path / "cp").start()
    yield plane
    plane.stop()


@pytest.fixture
def launched() -> Iterator[list[Launched]]:
    started: list[Launched] = []
    yield started
    for item in started:
        item.kill()


def requests_total(admin_port: int, **labels: str) -> float:
    url = f"http://127.0.0.1:{admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "istio_requests_total"
        and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def test_two_replicas_and_a_caller_over_mtls(
    control: ControlPlane, launched: list[Launched], tmp_path: Path
) -> None:
    def launch(name: str, args: list[str], command: list[str]) -> Launched:
        item = Launched(control, tmp_path, name, args, command).start()
        launched.append(item)
        return item

    echo = {
        version: launch(
            f"echo-{version}",
            ["--service", "echo", "--version", version],
            app_command("echo_server.py", version),
        )
        for version in ("v1", "v2")
    }
    ports = {version: item.ready() for version, item in echo.items()}
    used = [port for found in ports.values() for key, port in found.items() if key != "pid"]
    assert len(set(used)) == len(used), ports  # two replicas at once, no shared port
    for version, item in echo.items():
        until(partial(serving, control, item.name), 15, f"echo-{version} serving")

    # The registration: one entry per replica, the sidecar's inbound port as the service
    # port, the labels Istio's injector would give, and the service created once.
    entry = workload_entry(control, "echo-v1")
    assert entry["spec"]["ports"] == {"http": ports["v1"]["inbound"]}
    assert entry["spec"]["labels"] == {
        "app": "echo",
        "version": "v1",
        "security.istio.io/tlsMode": "istio",
    }
    assert entry["spec"]["serviceAccount"] == "echo-v1"
    service = service_entry(control, "echo")
    assert service["spec"]["hosts"] == ["echo.default.svc.cluster.local"]
    assert service["spec"]["workloadSelector"] == {"labels": {"app": "echo"}}

    # The caller runs while v1 is stopped: its calls move to v2 without failing.
    caller = launch("caller", [], app_command("caller.py", "http://echo/hello", "4", "7"))
    caller_ports = caller.ready()
    v1_mtls = {"reporter": "destination", "connection_security_policy": "mutual_tls"}
    until(
        lambda: requests_total(ports["v1"]["admin"], **v1_mtls) >= 5,
        10,
        f"calls reaching v1 over mTLS\n{caller.describe()}",
    )
    echo["v1"].signal(signal.SIGTERM)
    assert echo["v1"].wait() == 0, echo["v1"].describe()  # the echo server exits 0 on SIGTERM
    assert workload_entry(control, "echo-v1") is None
    assert caller.wait() == 7, caller.describe()
    summary = json.loads(caller.output().strip().splitlines()[-1])
    assert summary["failures"] == [], summary
    assert summary["versions"].get("v1", 0) >= 5 and summary["versions"].get("v2", 0) >= 5

    # Every call that reached a replica arrived over mutual TLS, from the caller's identity.
    received = {
        version: requests_total(
            ports[version]["admin"], reporter="destination", response_code="200"
        )
        for version in ("v2",)
    }
    assert received["v2"] >= summary["versions"]["v2"]
    mtls = requests_total(
        ports["v2"]["admin"],
        reporter="destination",
        connection_security_policy="mutual_tls",
        source_principal="spiffe://cluster.local/ns/default/sa/caller",
    )
    assert mtls == received["v2"]
    # The sidecar labels its metrics with the workload's app and version.
    labelled = requests_total(
        ports["v2"]["admin"], reporter="destination", destination_app="echo",
        destination_version="v2",
    )  # fmt: skip
    assert labelled == received["v2"]

    # The launchers that ended left nothing: no registration, no sidecar, no port.
    assert workload_entry(control, "caller") is None
    assert service_entry(control, "caller") is None  # it never listened: no service
    for pid in (caller_ports["pid"], ports["v1"]["pid"]):
        until(partial(process_gone, pid), 5, f"sidecar {pid} to end")
    assert service_entry(control, "echo") is not None  # stays for the other replica
    assert serving(control, "echo-v2")
    # While they ran and stopped, the control plane could build every proxy's config.
    assert "cannot build config" not in control.log_text()
