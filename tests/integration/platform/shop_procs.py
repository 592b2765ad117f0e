"""The shop (examples/shop) started with `trellis run`, and what a test reads about it.

Each service is a plain program; its launcher registers it in namespace
`shop` with its service's name as service account (`payment` for both
versions), as examples/shop/mesh.yaml assumes, and tells it its port in
`$PORT` (a `sh -c` wrapper passes it as the `--port` the services take).
Requests "from" a workload go through that workload's sidecar (a `Caller`):
in explicit capture its outbound port is the `HTTP_PROXY` the launcher gives
the program; in transparent capture the request is made inside the
workload's network namespace, where iptables hands it to the sidecar - by a
one-shot program (`ip netns exec`), or by the relay the client workload runs
on a Unix socket (tests/integration/platform/apps/unix_relay.py).
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from ..controlplane.mesh_procs import ControlPlane
from .launch_procs import Launched, SidecarInfo, api_get

SHOP_DIR = Path(__file__).resolve().parents[3] / "examples" / "shop"
MESH_YAML = SHOP_DIR / "mesh.yaml"
NAMESPACE = "shop"
CONNECT_ATTEMPTS = 50
STARTED = re.compile(r"trellis\.run: started \S+ \(pid (\d+)\)")


@dataclass(frozen=True, slots=True)
class ShopWorkload:
    name: str
    script: str
    service: str = ""
    version: str = ""

    def run_args(self) -> list[str]:
        service = self.service or self.name
        args = ["-n", NAMESPACE, "--service", service, "--service-account", service]
        return args + (["--version", self.version] if self.version else [])

    def command(self) -> list[str]:
        program = [sys.executable, str(SHOP_DIR / self.script)]
        if self.version:
            program += ["--version", self.version]
        return ["sh", "-c", 'exec "$0" "$@" --port "$PORT"', *program]


SERVICES = (
    ShopWorkload("db", "db.py"),
    ShopWorkload("catalog", "catalog.py"),
    ShopWorkload("cart", "cart.py"),
    ShopWorkload("payment-v1", "payment.py", "payment", "v1"),
    ShopWorkload("payment-v2", "payment.py", "payment", "v2"),
    ShopWorkload("web", "web.py"),
)


def app_pid(launched: Launched) -> int | None:
    """The program's pid, from the launcher's log (`sh` execs the service: the same pid)."""
    found = STARTED.search(launched.log())
    return int(found.group(1)) if found else None


class Caller(Protocol):
    """Sends requests as one workload: they leave through its sidecar."""

    def send(
        self, method: str, url: str, document: object = None, timeout: float = 15.0
    ) -> tuple[int, bytes]: ...


def _body(document: object) -> tuple[bytes | None, dict[str, str]]:
    data = None if document is None else json.dumps(document).encode()
    return data, ({"content-type": "application/json"} if data is not None else {})


@dataclass(frozen=True, slots=True)
class ProxyCaller:
    """Explicit capture: through the sidecar's outbound port, as the program's HTTP_PROXY."""

    port: int

    def send(
        self, method: str, url: str, document: object = None, timeout: float = 15.0
    ) -> tuple[int, bytes]:
        handler = urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{self.port}"})
        data, headers = _body(document)
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.build_opener(handler).open(request, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        # A full listen queue answers EAGAIN at once on a Unix socket: wait a little and retry.
        for attempt in range(CONNECT_ATTEMPTS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except BlockingIOError:
                sock.close()
                if attempt == CONNECT_ATTEMPTS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
                continue
            except BaseException:
                sock.close()
                raise
            self.sock = sock
            return


@dataclass(frozen=True, slots=True)
class RelayCaller:
    """Transparent capture: through the relay the workload runs on the Unix socket `path`."""

    path: str

    def send(
        self, method: str, url: str, document: object = None, timeout: float = 15.0
    ) -> tuple[int, bytes]:
        data, headers = _body(document)
        connection = _UnixConnection(self.path, timeout)
        try:
            connection.request(method, url, data, headers)
            answer = connection.getresponse()
            return answer.status, answer.read()
        finally:
            connection.close()


_ONE_SHOT = """
import base64, json, sys, urllib.error, urllib.request
method, url, data = sys.argv[1], sys.argv[2], sys.argv[3].encode() or None
headers = {"content-type": "application/json"} if data else {}
request = urllib.request.Request(url, data=data, headers=headers, method=method)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(request, timeout=float(sys.argv[4])) as answer:
        status, body = answer.status, answer.read()
except urllib.error.HTTPError as exc:
    status, body = exc.code, exc.read()
print(json.dumps([status, base64.b64encode(body).decode()]))
"""


@dataclass(frozen=True, slots=True)
class NamespaceCaller:
    """Transparent capture: a one-shot program in the workload's network namespace."""

    namespace: str

    def send(
        self, method: str, url: str, document: object = None, timeout: float = 15.0
    ) -> tuple[int, bytes]:
        data, _ = _body(document)
        command = ["ip", "netns", "exec", self.namespace, sys.executable, "-c", _ONE_SHOT]
        command += [method, url, (data or b"").decode(), str(timeout)]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout + 10, check=True
        )
        status, body = json.loads(done.stdout)
        return int(status), base64.b64decode(body)


def caller(info: SidecarInfo) -> Caller:
    """Requests as the workload of `info`'s sidecar."""
    if info.namespace is None:
        return ProxyCaller(info.outbound)
    return NamespaceCaller(info.namespace)


def direct(info: SidecarInfo, path: str, document: object = None) -> Any:
    """POST `document` (or GET) to the workload's program itself, bypassing every proxy
    (transparent capture: from inside its namespace, to its loopback port); the JSON answer."""
    url = f"http://127.0.0.1:{info.app}{path}"
    method = "GET" if document is None else "POST"
    if info.namespace is not None:
        status, body = NamespaceCaller(info.namespace).send(method, url, document, 5)
        assert status == 200, (status, body)
        return json.loads(body)
    data = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(url, data=data, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as answer:
        return json.load(answer)


@dataclass(frozen=True, slots=True)
class Checkout:
    status: int
    version: str | None
    body: bytes


def checkout(client: Caller, user: str, product: str) -> Checkout:
    """Put one product into `user`'s cart and check out through web, from a sidecar."""
    item = {"product_id": product, "quantity": 1}
    status, body = client.send("POST", f"http://web/cart/{user}/add", item)
    if status != 200:
        return Checkout(status, None, body)
    status, body = client.send("POST", f"http://web/checkout/{user}")
    version = json.loads(body)["payment"]["version"] if status == 200 else None
    return Checkout(status, version, body)


def admin_addresses(control: ControlPlane) -> dict[str, str]:
    """Workload name -> admin HOST:PORT of every connected sidecar of the shop."""
    answer = api_get(control, "/api/v1/proxies") or {}
    return {
        item["workload"]: item["adminAddress"]
        for item in answer.get("items", [])
        if item.get("namespace") == NAMESPACE and item.get("adminAddress")
    }


def metrics(address: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample a sidecar's /stats/prometheus shows."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{address}/stats/prometheus", timeout=5) as answer:
        text = answer.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: Iterable[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def config_dump(address: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{address}/config_dump", timeout=5) as answer:
        text: str = answer.read().decode()
        return text
