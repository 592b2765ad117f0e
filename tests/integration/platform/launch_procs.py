"""`trellis run` as a subprocess, and what a test reads about it.

The launcher's own log (stderr) names its sidecar's pid and ports; the
control plane's REST API shows the workload's registration.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..controlplane.mesh_procs import ControlPlane, until

APPS = Path(__file__).parent / "apps"
READY = re.compile(
    r"sidecar \(pid (\d+)\) ready: outbound \(HTTP_PROXY\) 127\.0\.0\.1:(\d+), "
    r"inbound 127\.0\.0\.1:(\d+) -> application 127\.0\.0\.1:(\d+), admin 127\.0\.0\.1:(\d+)"
)
READY_IN_NAMESPACE = re.compile(
    r"sidecar \(pid (\d+)\) ready in network namespace (\S+) at ([0-9.]+): "
    r"outbound capture :(\d+), inbound capture :(\d+) -> application 127\.0\.0\.1:(\d+), "
    r"admin ([0-9.]+):(\d+)"
)


@dataclass(frozen=True, slots=True)
class SidecarInfo:
    """What a launcher's log says about its ready sidecar, in either capture mode.

    Explicit: `outbound` is the application's HTTP_PROXY port on 127.0.0.1 and
    `namespace` is None. Transparent: `namespace` is the workload's network
    namespace and `address` its address there.
    """

    pid: int
    app: int
    admin: str
    outbound: int
    namespace: str | None = None
    address: str = "127.0.0.1"


def app_command(script: str, *args: str) -> list[str]:
    return [sys.executable, str(APPS / script), *args]


class Launched:
    """One `trellis run ... -- COMMAND` subprocess against `control`."""

    def __init__(
        self, control: ControlPlane, workdir: Path, name: str, args: list[str], command: list[str]
    ) -> None:
        self.control = control
        self.name = name
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.sidecar_log = workdir / f"{name}.sidecar.log"
        self.command = [
            sys.executable, "-m", "trellis.cli.main", "run", "--name", name,
            "--sidecar-log", str(self.sidecar_log), *args, "--", *command,
        ]  # fmt: skip
        env = dict(os.environ)
        env["TRELLIS_SERVER"] = f"http://127.0.0.1:{control.api_port}"
        env["TRELLIS_XDS_ADDRESS"] = f"127.0.0.1:{control.xds_port}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Launched:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env
            )
        return self

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def describe(self) -> str:
        sidecar = self.sidecar_log.read_text()[-3000:] if self.sidecar_log.exists() else ""
        return f"--- {self.name} launcher:\n{self.log()[-3000:]}\n--- sidecar:\n{sidecar}"

    def ready(self, timeout: float = 20.0) -> dict[str, int]:
        """pid, outbound, inbound, app and admin (ports) from the launcher's log."""

        def found() -> re.Match[str] | None:
            assert self.proc is not None
            assert self.proc.poll() is None, f"the launcher exited\n{self.describe()}"
            return READY.search(self.log())

        match = until(found, timeout, f"{self.name}'s sidecar\n{self.describe()}")
        assert match is not None
        keys = ("pid", "outbound", "inbound", "app", "admin")
        return dict(zip(keys, map(int, match.groups()), strict=True))

    def sidecar(self, timeout: float = 20.0) -> SidecarInfo:
        """The ready sidecar, whichever the capture mode (see `SidecarInfo`)."""

        def found() -> SidecarInfo | None:
            assert self.proc is not None
            assert self.proc.poll() is None, f"the launcher exited\n{self.describe()}"
            text = self.log()
            if (explicit := READY.search(text)) is not None:
                pid, outbound, _, app, admin = map(int, explicit.groups())
                return SidecarInfo(pid, app, f"127.0.0.1:{admin}", outbound)
            if (inside := READY_IN_NAMESPACE.search(text)) is not None:
                g = inside.groups()
                return SidecarInfo(int(g[0]), int(g[5]), f"{g[6]}:{g[7]}", int(g[3]), g[1], g[2])
            return None

        info = until(found, timeout, f"{self.name}'s sidecar\n{self.describe()}")
        assert info is not None
        return info

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """End the launcher if a test left it running (its children get SIGTERM from the kernel)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def api_get(control: ControlPlane, path: str) -> dict[str, Any] | None:
    """GET on the REST API; None for 404."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{control.api_port}{path}", timeout=5) as r:
            body: dict[str, Any] = json.load(r)
            return body
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def workload_entry(control: ControlPlane, name: str, namespace: str = "default") -> Any:
    path = f"/apis/networking.istio.io/v1/namespaces/{namespace}/workloadentries/{name}"
    return api_get(control, path)


def service_entry(control: ControlPlane, name: str, namespace: str = "default") -> Any:
    path = f"/apis/networking.istio.io/v1/namespaces/{namespace}/serviceentries/{name}"
    return api_get(control, path)


def serving(control: ControlPlane, name: str) -> bool:
    """Whether the workload's entry has joined its service (label `app`)."""
    entry = workload_entry(control, name)
    return entry is not None and "app" in entry["spec"].get("labels", {})


def process_gone(pid: int) -> bool:
    """True once `pid` is no longer a running process (gone, or a zombie of another parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"
