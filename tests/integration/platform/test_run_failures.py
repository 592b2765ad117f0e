"""`trellis run` when things go wrong: refusals, a dying sidecar, a killed launcher,
a port taken between allocation and bind. Nothing may be left behind.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trellis.platform.launch_settings import LaunchSettings
from trellis.platform.launcher import run
from trellis.platform.spec import WorkloadSpec

from ..controlplane.mesh_procs import ControlPlane, until
from .launch_procs import APPS, Launched, app_command, process_gone, serving, workload_entry

pytestmark = pytest.mark.timeout(60)

MANUAL_ENTRY = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: manual, namespace: default}
spec: {address: 127.0.0.1, ports: {http: 9}}
"""


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("cp")).start()
    yield plane
    plane.stop()


Launch = Callable[[str, list[str], list[str]], Launched]


@pytest.fixture
def launch(control: ControlPlane, tmp_path: Path) -> Iterator[Launch]:
    """launch(name, args, command) -> a started `trellis run`, ended after the test."""
    started: list[Launched] = []

    def start(name: str, args: list[str], command: list[str]) -> Launched:
        item = Launched(control, tmp_path, name, args, command)
        started.append(item)
        return item.start()

    yield start
    for item in started:
        item.kill()


def echo_pid(item: Launched) -> int:
    found = until(
        lambda: re.search(r"\(pid (\d+)\) listening", item.output()), 10, "the echo server"
    )
    assert found is not None
    return int(found.group(1))


def test_refusals_start_nothing(control: ControlPlane, launch: Launch) -> None:
    control.apply(MANUAL_ENTRY)
    taken = launch("manual", [], ["true"])
    assert taken.wait() == 125
    assert "WorkloadEntry default/manual exists and was not registered by trellis run" in (
        taken.log()
    )

    unreachable = launch("web", ["--server", "http://127.0.0.1:9"], ["true"])
    assert unreachable.wait() == 125
    assert "cannot reach the control plane at http://127.0.0.1:9" in unreachable.log()

    missing = launch("web", [], ["/nonexistent/program"])
    assert missing.wait() == 127
    assert "/nonexistent/program: command not found" in missing.log()
    assert "sidecar" not in missing.log()
    assert workload_entry(control, "web") is None

    first = launch("twice", [], app_command("echo_server.py"))
    first.ready()
    second = launch("twice", [], ["true"])
    assert second.wait() == 125
    assert "workload default/twice is already running on this machine" in second.log()
    assert serving(control, "twice") or until(lambda: serving(control, "twice"), 10, "twice")


def test_a_dead_sidecar_stops_the_application(control: ControlPlane, launch: Launch) -> None:
    item = launch("fragile", [], app_command("echo_server.py"))
    sidecar = item.ready()
    app = echo_pid(item)
    until(lambda: serving(control, "fragile"), 10, "fragile serving")
    os.kill(sidecar["pid"], signal.SIGKILL)
    assert item.wait() == 125, item.describe()
    assert "the sidecar ended (killed by SIGKILL) while the application ran" in item.log()
    assert "listener inbound_" in item.log()  # the sidecar's log tail is shown
    assert process_gone(app)
    assert workload_entry(control, "fragile") is None


def test_a_killed_launcher_takes_its_children_and_the_next_one_cleans_up(
    control: ControlPlane, launch: Launch
) -> None:
    first = launch("phoenix", [], app_command("echo_server.py"))
    sidecar = first.ready()["pid"]
    app = echo_pid(first)
    until(lambda: serving(control, "phoenix"), 10, "phoenix serving")
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(5)
    until(lambda: process_gone(sidecar) and process_gone(app), 10, "the orphans to end")
    assert workload_entry(control, "phoenix") is not None  # stale: nobody removed it

    second = launch("phoenix", [], app_command("echo_server.py"))
    second.ready()
    assert "replacing the stale registration of WorkloadEntry default/phoenix" in second.log()
    until(lambda: serving(control, "phoenix"), 10, "phoenix serving again")
    second.signal(signal.SIGINT)  # passed on: Python dies of it (130), the launcher says so
    assert second.wait() == 130
    assert "passing SIGINT to the application" in second.log()
    assert workload_entry(control, "phoenix") is None


def test_a_port_taken_before_the_proxy_binds_it_is_replaced(
    control: ControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trellis.run")
    marker = tmp_path / "clashed"
    settings = LaunchSettings(
        workload=WorkloadSpec(name="clash"),
        command=(sys.executable, "-c", "raise SystemExit(4)"),
        server=f"http://127.0.0.1:{control.api_port}",
        xds=f"127.0.0.1:{control.xds_port}",
        proxy_command=(sys.executable, str(APPS / "clashing_proxy.py"), str(marker)),
        ready_timeout=15.0,
        drain_time=0.5,
    )
    assert run(settings) == 4
    assert marker.exists()
    text = caplog.text
    assert "address already in use" in text.lower() and "trying other ports" in text, text
    ready = [line for line in text.splitlines() if "ready: outbound" in line]
    assert len(ready) == 1
    assert workload_entry(control, "clash") is None
