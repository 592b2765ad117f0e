"""The shop on a Trellis mesh on this machine: a control plane and one `trellis run` per workload.

Explicit capture: each service gets `HTTP_PROXY` pointing at its own sidecar
and is reached by its peers through their sidecars, over mutual TLS.
Transparent capture (root on Linux): each service runs in a network namespace
of its own, where `http://payment` resolves to the service's virtual IP and
iptables hands the connection to the sidecar. The services keep their plain
command lines either way; the launcher tells each its port in `$PORT`, which a
`sh -c` wrapper turns into the `--port` flag they take.

Every process runs in its own session, so a Ctrl-C at the terminal reaches
only the driver, which then stops them in order: the launchers (each takes its
workload out of its service, stops the program, drains its sidecar and
deregisters), then the control plane.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trellis.platform.api_client import acknowledged
from trellis.platform.paths import runtime_base
from trellis.platform.ports import PortAllocator, PortLease

SHOP_DIR = Path(__file__).resolve().parent
MESH_YAML = SHOP_DIR / "mesh.yaml"
NAMESPACE = "shop"
HTTP_TIMEOUT = 5.0
POLL = 0.1
STOP_TIMEOUT = 25.0
"""How long a launcher may take to stop (leave its service, stop the program, drain)."""
_PORT_FLAG = 'exec "$0" "$@" --port "$PORT"'
_READY = re.compile(
    r"sidecar \(pid (\d+)\) ready: outbound \(HTTP_PROXY\) 127\.0\.0\.1:(\d+), "
    r"inbound 127\.0\.0\.1:\d+ -> application 127\.0\.0\.1:(\d+), admin (127\.0\.0\.1:\d+)"
)
_READY_IN_NAMESPACE = re.compile(
    r"sidecar \(pid (\d+)\) ready in network namespace (\S+) at [0-9.]+: outbound capture "
    r":\d+, inbound capture :\d+ -> application 127\.0\.0\.1:(\d+), admin ([0-9.]+:\d+)"
)
_STARTED = re.compile(r"trellis\.run: started \S+ \(pid (\d+)\)")
_PRIVATE_ENV = ("TRELLIS_SERVER", "TRELLIS_TOKEN", "TRELLIS_XDS_ADDRESS", "TRELLIS_JOIN_TOKEN")
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class ShopError(Exception):
    """The shop could not be started or stopped; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Workload:
    """One program of the shop and how `trellis run` registers it."""

    name: str
    script: str
    service: str = ""
    version: str = ""
    args: tuple[str, ...] = ()
    serves: bool = True
    """A server takes `--port $PORT`; a client (the shopper) listens on nothing."""

    @property
    def service_name(self) -> str:
        return self.service or self.name

    def run_args(self) -> list[str]:
        """`trellis run` flags: namespace shop, service account = the service's name."""
        args = ["--name", self.name, "-n", NAMESPACE, "--service", self.service_name]
        args += ["--service-account", self.service_name]
        return args + (["--version", self.version] if self.version else [])

    def command(self, python: str = sys.executable) -> list[str]:
        program = [python, str(SHOP_DIR / self.script), *self.args]
        return ["sh", "-c", _PORT_FLAG, *program] if self.serves else program


SHOP = (
    Workload("db", "db.py"),
    Workload("catalog", "catalog.py"),
    Workload("cart", "cart.py"),
    Workload("payment-v1", "payment.py", "payment", "v1", ("--version", "v1")),
    Workload("payment-v2", "payment.py", "payment", "v2", ("--version", "v2")),
    Workload("web", "web.py"),
)
"""The services, in start order (peers first); they stop in reverse."""


def shopper(*args: str) -> Workload:
    """The traffic driver as a mesh workload: its calls to `http://web` go through its sidecar."""
    return Workload("shopper", "shopper.py", args=("--web", "http://web", *args), serves=False)


def clean_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for the mesh's processes: no proxy variables (the launcher sets the
    application's), no credentials or addresses of another control plane."""
    return {
        key: value
        for key, value in environ.items()
        if key.lower() not in _PROXY_ENV and not key.startswith(_PRIVATE_ENV)
    }


def trellis(*args: str) -> list[str]:
    return [sys.executable, "-m", "trellis.cli.main", *args]


def request_json(
    url: str, body: bytes | None = None, content_type: str = "application/json"
) -> Any:
    """GET (or POST `body`) on a loopback URL, never through a proxy; the JSON answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"content-type": content_type} if body is not None else {}
    method = "POST" if body is not None else "GET"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    with opener.open(request, timeout=HTTP_TIMEOUT) as answer:
        return json.load(answer)


def fetch_text(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=HTTP_TIMEOUT) as answer:
        text: str = answer.read().decode("utf-8", "replace")
        return text


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _stop_process(proc: subprocess.Popen[bytes], signum: int, timeout: float) -> int:
    """Signal a process we started, wait (bounded), SIGKILL if it does not end."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class ControlPlane:
    """`trellis control-plane` on two reserved loopback ports with its data in `data_dir`."""

    def __init__(self, data_dir: Path, log: Path, env: Mapping[str, str]) -> None:
        self.data_dir = data_dir
        self.log = log
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._lease: PortLease | None = None
        self.api_port = 0
        self.xds_port = 0

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def xds(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    def start(self, timeout: float = 30.0) -> None:
        # Reserved as the launchers reserve theirs, so no sidecar is handed these ports.
        self._lease = PortAllocator(runtime_base(dict(self.env))).allocate(2)
        self.api_port, self.xds_port = self._lease.ports
        command = trellis("control-plane", "--data-dir", str(self.data_dir))
        command += ["--api-port", str(self.api_port), "--xds-address", self.xds]
        # Sidecars log every request as JSON to their stdout (the launchers' sidecar logs).
        command += ["--access-log-file", "/dev/stdout"]
        # Spans go to the control plane itself (its dashboard's traces); mesh.yaml's
        # Telemetry samples every request of the shop.
        command += ["--tracing-otlp-address", "self"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ShopError(f"the control plane exited:\n{tail(self.log)}")
            with contextlib.suppress(OSError, ValueError):
                if request_json(f"{self.server}/healthz").get("status") == "ok":
                    return
            time.sleep(POLL)
        raise ShopError(
            f"the control plane's API did not answer in {timeout:g}s:\n{tail(self.log)}"
        )

    def api(self, path: str, body: bytes | None = None, content_type: str = "") -> Any:
        return request_json(f"{self.server}{path}", body, content_type or "application/json")

    def apply(self, path: Path, *, force: bool = False) -> list[dict[str, Any]]:
        """Apply a YAML file; the stored resources (kind, namespace, name, resourceVersion)."""
        suffix = "?force=true" if force else ""
        try:
            answer = self.api(f"/api/v1/apply{suffix}", path.read_bytes(), "application/yaml")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ShopError(f"applying {path} failed ({exc.code}): {detail}") from None
        results: list[dict[str, Any]] = answer.get("results", [])
        return results

    def proxies(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api("/api/v1/proxies").get("items", [])
        return items

    def workload_entry(self, name: str) -> dict[str, Any] | None:
        path = f"/apis/networking.istio.io/v1/namespaces/{NAMESPACE}/workloadentries/{name}"
        try:
            entry: dict[str, Any] = self.api(path)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return entry

    def stop(self, timeout: float = 15.0) -> int | None:
        status = None
        if self.proc is not None:
            status = _stop_process(self.proc, signal.SIGTERM, timeout)
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        return status


@dataclass(frozen=True, slots=True)
class SidecarInfo:
    """What the launcher's log says about its sidecar once it is ready.

    Explicit capture: `outbound` is the program's HTTP_PROXY port on 127.0.0.1.
    Transparent capture: `namespace` is the workload's network namespace (its
    program listens on 127.0.0.1:`app` in there) and `outbound` is None.
    """

    pid: int
    app: int
    admin: str
    outbound: int | None = None
    namespace: str | None = None

    @classmethod
    def from_log(cls, text: str) -> SidecarInfo | None:
        if (explicit := _READY.search(text)) is not None:
            pid, outbound, app, admin = explicit.groups()
            return cls(int(pid), int(app), admin, outbound=int(outbound))
        if (inside := _READY_IN_NAMESPACE.search(text)) is not None:
            pid, namespace, app, admin = inside.groups()
            return cls(int(pid), int(app), admin, namespace=namespace)
        return None

    @staticmethod
    def pids_in(text: str) -> list[int]:
        found = _READY.findall(text) + _READY_IN_NAMESPACE.findall(text)
        return [int(groups[0]) for groups in found]

    def send(self, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        """A request as this workload's program would make it (through its sidecar for a
        service name; to itself for 127.0.0.1): (status, body)."""
        if self.namespace is not None:
            return _in_namespace(self.namespace, url, body)
        proxies = {"http": f"http://127.0.0.1:{self.outbound}"} if self.outbound else {}
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
        headers = {"content-type": "application/json"} if body is not None else {}
        request = urllib.request.Request(url, data=body, headers=headers)
        try:
            with opener.open(request, timeout=HTTP_TIMEOUT) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()


_ONE_REQUEST = """
import sys, urllib.error, urllib.request
url, body = sys.argv[1], sys.argv[2].encode() or None
request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(request, timeout=float(sys.argv[3])) as answer:
        status, data = answer.status, answer.read()
except urllib.error.HTTPError as exc:
    status, data = exc.code, exc.read()
sys.stdout.write(f"{status}\\n{data.decode(errors='replace')}")
"""


def _in_namespace(namespace: str, url: str, body: bytes | None) -> tuple[int, bytes]:
    """One request made inside a workload's network namespace (as root: `ip netns exec`)."""
    command = ["ip", "netns", "exec", namespace, sys.executable, "-c", _ONE_REQUEST]
    command += [url, (body or b"").decode(), str(HTTP_TIMEOUT)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=HTTP_TIMEOUT + 10, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        raise ShopError(f"a request in network namespace {namespace} failed: {exc}") from None
    status, _, data = done.stdout.partition(b"\n")
    return int(status), data


class Launcher:
    """`trellis run` for one workload of the shop, its output in `log_dir/NAME.log`."""

    def __init__(
        self,
        plane: ControlPlane,
        workload: Workload,
        log_dir: Path,
        env: Mapping[str, str],
        capture: str = "explicit",
    ) -> None:
        self.plane = plane
        self.workload = workload
        self.capture = capture
        self.log = log_dir / f"{workload.name}.log"
        self.out = log_dir / f"{workload.name}.out"
        self.sidecar_log = log_dir / f"{workload.name}.sidecar.log"
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.workload.name

    def start(self) -> Launcher:
        command = trellis("run", *self.workload.run_args(), "-s", self.plane.server)
        command += ["--capture", self.capture, "--sidecar-log", str(self.sidecar_log)]
        if self.capture == "explicit":  # transparent: the control plane's Unix socket
            command += ["--xds", self.plane.xds]
        command += ["--", *self.workload.command()]
        with self.log.open("ab") as log, self.out.open("ab") as out:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sidecar(self) -> SidecarInfo | None:
        return (
            SidecarInfo.from_log(self.log.read_text(errors="replace"))
            if self.log.exists()
            else None
        )

    def pids(self) -> list[int]:
        """The launcher's, its sidecar's and its program's pids (those it has logged)."""
        pids = [self.proc.pid] if self.proc is not None else []
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        pids += SidecarInfo.pids_in(text)
        pids += [int(found) for found in _STARTED.findall(text)]
        return pids

    def describe(self) -> str:
        return (
            f"--- {self.name}: trellis run and the program ({self.log}):\n{tail(self.log)}\n"
            f"--- {self.name}'s sidecar ({self.sidecar_log}):\n{tail(self.sidecar_log, 8)}"
        )

    def send(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        return None if self.proc is None else _stop_process(self.proc, signum, timeout)


def start_shop(
    plane: ControlPlane, log_dir: Path, env: Mapping[str, str], capture: str = "explicit"
) -> list[Launcher]:
    """Start every service of the shop with `trellis run` (they start side by side)."""
    return [Launcher(plane, workload, log_dir, env, capture).start() for workload in SHOP]


def wait_serving(plane: ControlPlane, launchers: Sequence[Launcher], timeout: float) -> None:
    """Wait until each workload is registered and in its service (its program answers), then
    until every sidecar has that config. ShopError names the first workload that failed."""
    deadline = time.monotonic() + timeout
    waiting = list(launchers)
    versions: list[int] = []
    while waiting:
        for launcher in list(waiting):
            if not launcher.running:
                raise ShopError(f"{launcher.name} stopped while starting:\n{launcher.describe()}")
            entry = plane.workload_entry(launcher.name)
            if entry is not None and "app" in (entry.get("spec") or {}).get("labels", {}):
                versions.append(int(entry["metadata"].get("resourceVersion", 0)))
                waiting.remove(launcher)
        if waiting and time.monotonic() > deadline:
            raise ShopError(
                f"{waiting[0].name} is not serving after {timeout:g}s:\n{waiting[0].describe()}"
            )
        if waiting:
            time.sleep(POLL)
    wait_synced(plane, max(versions, default=0), max(1.0, deadline - time.monotonic()))


def wait_synced(plane: ControlPlane, version: int, timeout: float) -> None:
    """Wait until every connected proxy runs config built from store `version` or later."""
    deadline = time.monotonic() + timeout
    while not acknowledged(plane.proxies(), version):
        if time.monotonic() > deadline:
            states = {item.get("id"): item.get("snapshotVersion") for item in plane.proxies()}
            raise ShopError(f"the sidecars did not get config version {version}: {states}")
        time.sleep(POLL)


def still_running(pids: Iterable[int]) -> list[int]:
    """Those of `pids` that are still running processes (a zombie counts as gone)."""
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        except OSError:  # no /proc: ask the kernel
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            alive.append(pid)
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            alive.append(pid)
    return alive


def set_faults(payment: SidecarInfo, fail_rate: float, delay_ms: int = 0) -> dict[str, Any]:
    """Tell a payment instance, on its own (loopback) port, to fail a share of payments."""
    body = json.dumps({"fail_rate": fail_rate, "delay_ms": delay_ms}).encode()
    status, answer = payment.send(f"http://127.0.0.1:{payment.app}/admin/faults", body)
    if status != 200:
        raise ShopError(f"payment did not take the faults ({status}): {answer[:200]!r}")
    result: dict[str, Any] = json.loads(answer)
    return result


def admin_addresses(plane: ControlPlane) -> dict[str, str]:
    """Workload name -> its sidecar's admin HOST:PORT, for the shop's connected proxies."""
    return {
        str(item.get("workload")): str(item["adminAddress"])
        for item in plane.proxies()
        if item.get("namespace") == NAMESPACE and item.get("adminAddress")
    }


def scrape(addresses: Iterable[str]) -> list[str]:
    """Each sidecar's `/stats/prometheus` (a sidecar that is gone is skipped)."""
    texts = []
    for address in addresses:
        with contextlib.suppress(OSError):
            texts.append(fetch_text(f"http://{address}/stats/prometheus"))
    return texts
