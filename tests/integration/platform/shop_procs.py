"""The shop (examples/shop) started with `trellis run`, and what a test reads about it.

Each service is a plain program; its launcher registers it in namespace
`shop` with its service's name as service account (`payment` for both
versions), as examples/shop/mesh.yaml assumes, and tells it its port in
`$PORT` (a `sh -c` wrapper passes it as the `--port` the services take).
Requests "from" a workload go through that workload's sidecar: its outbound
port is the `HTTP_PROXY` the launcher gives the program.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..controlplane.mesh_procs import ControlPlane
from .launch_procs import Launched, api_get

SHOP_DIR = Path(__file__).resolve().parents[3] / "examples" / "shop"
MESH_YAML = SHOP_DIR / "mesh.yaml"
NAMESPACE = "shop"
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


def send(
    proxy_port: int, method: str, url: str, document: object = None, timeout: float = 15.0
) -> tuple[int, bytes]:
    """One request through a sidecar's outbound listener (as the program's HTTP_PROXY would)."""
    handler = urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy_port}"})
    data = None if document is None else json.dumps(document).encode()
    headers = {"content-type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.build_opener(handler).open(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def direct(port: int, path: str, document: object = None) -> Any:
    """GET (or POST `document`) on a loopback port, bypassing every proxy; the JSON answer."""
    data = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as answer:
        return json.load(answer)


@dataclass(frozen=True, slots=True)
class Checkout:
    status: int
    version: str | None
    body: bytes


def checkout(proxy_port: int, user: str, product: str) -> Checkout:
    """Put one product into `user`'s cart and check out through web, from a sidecar."""
    item = {"product_id": product, "quantity": 1}
    status, body = send(proxy_port, "POST", f"http://web/cart/{user}/add", item)
    if status != 200:
        return Checkout(status, None, body)
    status, body = send(proxy_port, "POST", f"http://web/checkout/{user}")
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
