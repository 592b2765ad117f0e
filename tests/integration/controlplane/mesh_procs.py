"""`trellis control-plane` and `trellis proxy --xds ... --join-token-file ...` as subprocesses.

The control plane runs with its CA (always on); a sidecar gets a join token from
the control plane's REST API, obtains its certificate before serving, and takes
the rest of its config over ADS. Both are stopped by pid, never by name. Also:
a load generator through a client sidecar, and a probe of the certificate a
listener serves.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from ..bootstrap import address, free_port
from ..client import Response, request, send
from ..proxyproc import ProxyProcess

T = TypeVar("T")


def until(check: Callable[[], T], timeout: float = 15.0, what: str = "") -> T:
    """Poll `check` every 0.1 s until it returns something true; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ControlPlane:
    """One `trellis control-plane` subprocess on free loopback ports."""

    def __init__(self, data_dir: Path, *extra_args: str) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.xds_port = free_port()
        self.api_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "control-plane.log"

    def start(self) -> ControlPlane:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "trellis.cli.main", "control-plane"]
        command += ["--data-dir", str(self.data_dir), "--api-port", str(self.api_port)]
        command += ["--xds-address", f"127.0.0.1:{self.xds_port}", *self.extra_args]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        until(self._healthy, what=f"the control plane API\n{self.log_text()[-3000:]}")
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def _post(self, path: str, body: bytes, content_type: str) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            data=body,
            headers={"content-type": content_type},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result

    def apply(self, text: str) -> dict[str, Any]:
        return self._post("/api/v1/apply", text.encode(), "application/yaml")

    def join_token(self, namespace: str, service_account: str, workload: str) -> str:
        """A join token from `POST /api/v1/join-tokens` (loopback needs no API token)."""
        body = {"namespace": namespace, "serviceAccount": service_account, "workload": workload}
        answer = self._post("/api/v1/join-tokens", json.dumps(body).encode(), "application/json")
        token: str = answer["token"]
        return token

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class SidecarProcess(ProxyProcess):
    """`trellis proxy --xds` with a join token: no bootstrap file, identity from the CA."""

    def __init__(
        self,
        control: ControlPlane,
        workdir: Path,
        name: str,
        token_file: Path,
        metadata: Mapping[str, str],
        labels: Mapping[str, str] | None = None,
    ) -> None:
        admin = {"admin": {"address": address(free_port())}, "static_resources": {}}
        super().__init__(admin, workdir, name)
        self.name = name
        self.token_file = token_file
        self.command = [
            sys.executable, "-m", "trellis.cli.main", "proxy",
            "--xds", f"127.0.0.1:{control.xds_port}",
            "--node-id", name,
            "--admin-port", str(self.admin_port),
            "--join-token-file", str(token_file),
            "--metadata", f"WORKLOAD_NAME={name}",
        ]  # fmt: skip
        for key, value in metadata.items():
            self.command += ["--metadata", f"{key}={value}"]
        for key, value in (labels or {}).items():
            self.command += ["--label", f"{key}={value}"]

    def start(self, *, wait_ready: bool = True) -> SidecarProcess:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                self.command, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        if wait_ready:
            self.wait_ready(timeout=30.0)  # the first certificate comes before the admin port
        return self

    def certificate(self) -> dict[str, Any]:
        """The leaf of `/certs`: serial_number, subject_alt_names, expiration_time..."""
        leaf: dict[str, Any] = self.admin_json("/certs")["certificates"][0]["cert_chain"][0]
        return leaf

    def serial(self) -> str:
        serial: str = self.certificate()["serial_number"]
        return serial


class Load:
    """GETs to `host` through a client sidecar's outbound `port` until a deadline.

    One client keeps its connection to the sidecar, one opens a connection per
    request, and every ~1.3 s a burst of three slow concurrent requests makes the
    sidecar open extra upstream connections (new handshakes), which a short
    DestinationRule `idleTimeout` closes again before the next burst. Every outcome
    is counted.
    """

    def __init__(self, port: int, seconds: float, host: str = "payment") -> None:
        self.port = port
        self.host = host
        self.deadline = time.monotonic() + seconds
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        loops = (self._keep_alive, self._fresh, self._bursts)
        self.threads = [threading.Thread(target=loop, daemon=True) for loop in loops]

    def _get(self, how: str, path: str = "/api/pay") -> None:
        try:
            outcome: Response | Exception = request(
                self.port, "GET", f"http://{self.host}{path}", host=self.host
            )
        except (OSError, http.client.HTTPException) as exc:
            outcome = exc
        self._record(outcome, how)

    def _record(self, outcome: Response | Exception, how: str) -> None:
        with self.lock:
            if isinstance(outcome, Response) and outcome.status == 200:
                self.ok += 1
            else:
                self.failures.append(f"{how} at {time.monotonic():.2f}: {outcome}")

    def _keep_alive(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for _ in range(100_000):
            if time.monotonic() > self.deadline:
                break
            try:
                response = send(conn, "GET", f"http://{self.host}/api/pay", host=self.host)
                self._record(response, "kept")
            except (OSError, http.client.HTTPException) as exc:
                self._record(exc, "kept")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()

    def _fresh(self) -> None:
        for _ in range(100_000):
            if time.monotonic() > self.deadline:
                break
            self._get("fresh")

    def _bursts(self) -> None:
        for _ in range(1000):
            if time.monotonic() > self.deadline:
                break
            burst = [
                threading.Thread(target=self._get, args=("burst", "/delay/0.2"), daemon=True)
                for _ in range(3)
            ]
            for thread in burst:
                thread.start()
            for thread in burst:
                thread.join(15)
            time.sleep(1.1)  # longer than the idle timeout plus the 1 s idle sweep

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.join(max(0.0, self.deadline - time.monotonic()) + 15)


def served_serial(port: int) -> str:
    """The serial of the certificate a fresh TLS handshake with `port` is answered with.

    No client certificate: the server's comes first, then it refuses us.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["istio"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return format(x509.load_der_x509_certificate(der).serial_number, "x")
