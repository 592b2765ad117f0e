"""A registration whose launcher died is removed once its sidecar stays gone."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from ..controlplane.mesh_procs import ControlPlane, until
from .launch_procs import Launched, app_command, serving, workload_entry

ENTRY = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: default
  {annotations}
spec:
  address: 127.0.0.1
  labels: {{app: orphan}}
"""


def test_a_launched_workload_without_a_sidecar_is_removed_and_others_are_kept(
    tmp_path: Path,
) -> None:
    control = ControlPlane(tmp_path / "cp", "--orphan-grace", "2s").start()
    try:
        owned = "annotations: {run.trellis.io/owner: 'host:1234:abcd'}"
        control.apply(ENTRY.format(name="launched", annotations=owned))
        control.apply(ENTRY.format(name="by-hand", annotations=""))
        started = time.monotonic()
        until(lambda: workload_entry(control, "launched") is None, 15, "the orphan's removal")
        assert time.monotonic() - started >= 1.5  # not before the grace
        assert workload_entry(control, "by-hand") is not None  # not ours to remove
        assert "removed WorkloadEntry default/launched" in control.log_text()

        # A workload whose sidecar is connected stays, however long it runs.
        live = Launched(control, tmp_path, "live", [], app_command("echo_server.py", "v1"))
        live.start()
        try:
            until(lambda: serving(control, "live"), 20, "the live workload serving")
            time.sleep(4)  # twice the grace
            assert workload_entry(control, "live") is not None, live.describe()
        finally:
            assert live.proc is not None
            live.proc.send_signal(signal.SIGTERM)
            live.proc.wait(30)
    finally:
        control.stop()
