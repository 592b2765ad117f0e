"""Issue 5, end to end: the shop (examples/shop) on the mesh with `trellis run`, in explicit
capture and (as root on Linux) in transparent capture.

A real control plane; db, catalog, cart, payment v1 and v2 and web each started
by `trellis run` in namespace `shop`, and a `client` workload whose sidecar the
test sends its requests through (so they leave with the client's identity,
over mTLS, as the shopper's do in `make demo`). Then examples/shop/mesh.yaml
is applied and the test checks what the issue promises: checkouts work end
to end; every edge is mutual TLS; the 90/10 canary holds; payment v1 failing
20% of requests is invisible to users thanks to the retries while its sidecar
shows the 503s; web -> db is refused by the policy; a stopped workload leaves
the registry and its traffic moves to the other version without errors; and
nothing is left running at the end - in transparent capture, also no network
namespace, link, iptables chain or state record.

In transparent capture the test reaches into the namespaces: the client
workload is a relay on a Unix socket (requests it makes are captured by its
sidecar), and requests as web, or to payment's own port, run as one-shot
programs inside that workload's namespace.

The control plane configures no access log on the sidecars' listeners (like
Istio's default profile; there is no switch for one yet), so the policy that
refused web -> db is seen in what exists: the 403 `RBAC: access denied`,
db's `envoy_http_rbac_denied` and 403 series from web's principal, and the
policy's name in the RBAC filter of db's config dump.

Stopping payment v2 while the VirtualService still sends 10% to subset v2
would answer those requests 503 `no healthy upstream` (UH), as Envoy and Istio
do for a subset without endpoints, so before that step the route is changed
to the `payment` service as a whole (both versions, by endpoint).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from trellis.platform.api_client import acknowledged
from trellis.platform.netns import transparent_unavailable

from ..controlplane.mesh_procs import ControlPlane, until
from .dashboard_procs import CHROMIUM_MISSING, artifacts_dir, headless_chromium
from .launch_procs import APPS, Launched, api_get, process_gone, workload_entry
from .shop_procs import (
    MESH_YAML,
    NAMESPACE,
    SERVICES,
    Caller,
    Checkout,
    ProxyCaller,
    RelayCaller,
    admin_addresses,
    app_pid,
    caller,
    checkout,
    config_dump,
    direct,
    metrics,
    total,
)

pytestmark = pytest.mark.timeout(120)

REQUESTS = "istio_requests_total"
RBAC_DENIED = "envoy_http_rbac_denied_total"  # exposed as envoy_http_rbac_denied, as Envoy does
CANARY_CHECKOUTS = 200
FAULT_CHECKOUTS = 100
WEB = "spiffe://cluster.local/ns/shop/sa/web"
WE = "workloadentries"
BOTH_VERSIONS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payment, namespace: shop}
spec:
  hosts: [payment]
  http:
    - name: both-versions
      route:
        - destination: {host: payment}
      timeout: 5s
      retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,connect-failure"}
"""


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    # Every sidecar writes its access log (JSON) to its standard output: the launcher's
    # --sidecar-log file.
    # Spans go to the control plane's own trace store (mesh.yaml samples the shop at 100%).
    plane = ControlPlane(
        tmp_path / "cp", "--access-log-file", "/dev/stdout", "--tracing-otlp-address", "self"
    ).start()
    yield plane
    plane.stop()


@pytest.fixture
def launched() -> Iterator[dict[str, Launched]]:
    started: dict[str, Launched] = {}
    yield started
    for item in reversed(started.values()):
        item.kill()


def wait_synced(control: ControlPlane, version: int) -> None:
    """Until every connected proxy has the config of store `version` (or later)."""

    def synced() -> bool:
        return acknowledged((api_get(control, "/api/v1/proxies") or {})["items"], version)

    until(synced, 15, f"every proxy at config version {version}")


def apply(control: ControlPlane, text: str) -> None:
    answer = control.apply(text)
    wait_synced(control, max(int(r["resourceVersion"]) for r in answer["results"]))


def checkouts(client: Caller, prefix: str, count: int) -> list[Checkout]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda i: checkout(client, f"{prefix}-{i}", "p-mug"), range(count)))


class Capture:
    """How the test's workloads are launched: `--capture MODE`, and for transparent
    capture a bridge, subnet, name prefix and state directory of the test's own."""

    def __init__(self, mode: str, tmp_path: Path) -> None:
        self.mode = mode
        tag = f"{random.randrange(16**4):04x}"
        self.prefix = f"ts{tag}"
        self.bridge = f"trt{tag}"
        self.state_dir = tmp_path / "net"
        self.relay = tmp_path / "client.sock"
        self.env = {
            "TRELLIS_NET_BRIDGE": self.bridge,
            "TRELLIS_NET_SUBNET": f"10.216.{random.randrange(256)}.0/24",
            "TRELLIS_NET_PREFIX": self.prefix,
            "TRELLIS_NET_STATE_DIR": str(self.state_dir),
        }

    @property
    def transparent(self) -> bool:
        return self.mode == "transparent"

    def launch(
        self, control: ControlPlane, tmp_path: Path, name: str, args: list[str], command: list[str]
    ) -> Launched:
        launched = Launched(control, tmp_path, name, [*args, "--capture", self.mode], command)
        if self.transparent:
            launched.env.update(self.env)
        return launched.start()

    def client_command(self) -> list[str]:
        if self.transparent:
            return [sys.executable, str(APPS / "unix_relay.py"), str(self.relay)]
        return ["sleep", "300"]

    def client(self, launched: Launched) -> Caller:
        if not self.transparent:
            return ProxyCaller(launched.sidecar().outbound)
        until(self.relay.exists, 10, f"the client's relay\n{launched.describe()}")
        return RelayCaller(str(self.relay))

    def leftovers(self) -> list[str]:
        """What the launchers' networks left behind (transparent capture)."""
        if not self.transparent:
            return []
        found = [f"netns {n}" for n in _lines(["ip", "netns", "list"]) if self.prefix in n]
        links = _lines(["ip", "-br", "link"])
        found += [f"link {n}" for n in links if n.startswith((self.prefix, self.bridge))]
        forward = _lines(["iptables", "-S", "FORWARD"])
        found += [f"iptables {rule}" for rule in forward if self.bridge in rule]
        found += [f"/etc/netns/{n}" for n in _listdir(Path("/etc/netns")) if self.prefix in n]
        found += [f"record {n}" for n in _listdir(self.state_dir) if n.endswith(".json")]
        return found


def _lines(command: list[str]) -> list[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=10)
    return done.stdout.splitlines()


def _listdir(path: Path) -> list[str]:
    return os.listdir(path) if path.is_dir() else []


@pytest.mark.parametrize("mode", ["explicit", "transparent"])
def test_the_shop_on_the_mesh(
    control: ControlPlane, launched: dict[str, Launched], tmp_path: Path, mode: str
) -> None:
    if mode == "transparent" and (why := transparent_unavailable()) is not None:
        pytest.skip(why)
    capture = Capture(mode, tmp_path)
    for workload in SERVICES:
        launched[workload.name] = capture.launch(
            control, tmp_path, workload.name, workload.run_args(), workload.command()
        )
    client_args = ["-n", NAMESPACE]
    launched["client"] = capture.launch(
        control, tmp_path, "client", client_args, capture.client_command()
    )
    sidecars = {name: item.sidecar(30) for name, item in launched.items()}
    for name in launched.keys() - {"client"}:
        until(partial(serving_in_shop, control, name), 30, f"{name} serving")
    pids = [item.proc.pid for item in launched.values() if item.proc is not None]
    pids += [info.pid for info in sidecars.values()]
    pids += [pid for item in launched.values() if (pid := app_pid(item)) is not None]
    assert control.proc is not None
    pids.append(control.proc.pid)

    # The mesh config applies cleanly once the services are registered (analysis passes).
    apply(control, MESH_YAML.read_text())
    client = capture.client(launched["client"])

    # A checkout end to end: client -> web -> cart (-> catalog, db) and web -> payment.
    status, body = client.send("GET", "http://web/products")
    assert status == 200 and b"p-mug" in body, body
    first = checkout(client, "first", "p-espresso")
    assert first.status == 200, first.body
    assert first.version in {"v1", "v2"}

    # That checkout is one trace across every hop, each span the child of the one before.
    spans = until(partial(_trace_through, control, ["web", "cart", "db"]), 15, "a traced checkout")
    assert spans is not None
    _assert_one_chain(spans, ["client", "web", "cart", "db"])

    # The canary: ~90/10 between payment v1 and v2 (4 standard deviations either way).
    done = checkouts(client, "canary", CANARY_CHECKOUTS)
    assert [c for c in done if c.status != 200] == []
    versions = Counter(c.version for c in done)
    assert set(versions) <= {"v1", "v2"}
    assert 3 <= versions["v2"] <= 37, versions

    # Every edge with traffic is mutual TLS, seen by each receiving sidecar.
    addresses = admin_addresses(control)
    assert set(addresses) == set(launched), addresses
    edges: set[tuple[str, str]] = set()
    for name, address in addresses.items():
        for sample_name, labels, value in metrics(address):
            if sample_name != REQUESTS or labels["reporter"] != "destination" or not value:
                continue
            source = labels["source_principal"].rsplit("/sa/", 1)[-1]
            edges.add((source, name))
            assert labels["connection_security_policy"] == "mutual_tls", (name, labels)
    expected = {("client", "web"), ("web", "catalog"), ("web", "cart"), ("cart", "catalog")}
    expected |= {("cart", "db"), ("web", "payment-v1"), ("web", "payment-v2")}
    assert edges == expected

    # payment v1 fails 20% of payments: users see no errors, v1's sidecar sees the 503s.
    v1 = sidecars["payment-v1"]
    direct(v1, "/admin/faults", {"fail_rate": 0.2})
    before = total(metrics(addresses["payment-v1"]), REQUESTS, reporter="destination")
    faulty = checkouts(client, "faults", FAULT_CHECKOUTS)
    failed = [c for c in faulty if c.status != 200]
    assert len(failed) <= 2, failed  # all four tries failing: 0.2**4 per checkout
    faults = direct(v1, "/admin/faults", {"fail_rate": 0.0})
    assert faults["failed"] >= 5, faults
    after = metrics(addresses["payment-v1"])
    assert total(after, REQUESTS, reporter="destination", response_code="503") >= 5
    assert total(after, REQUESTS, reporter="destination") - before > sum(
        c.version == "v1" for c in faulty
    )  # the retried tries came to v1 too

    # web -> db is refused by db-only-from-cart; client -> payment by payment-only-from-web.
    db = addresses["db"]
    denied_before = total(metrics(db), RBAC_DENIED)
    status, body = caller(sidecars["web"]).send("GET", "http://db/carts")
    assert (status, body) == (403, b"RBAC: access denied")
    db_samples = metrics(db)
    assert total(db_samples, RBAC_DENIED) == denied_before + 1
    assert total(db_samples, REQUESTS, response_code="403", source_principal=WEB) == 1
    assert "ns[shop]-policy[db-only-from-cart]-rule[0]" in config_dump(db)
    denial = until(
        lambda: _log_line(launched["db"].sidecar_log, '"authz":"denied"'), 5, "db's denial"
    )
    assert denial is not None  # `until` returns only a true value
    assert denial["authz_policy"] == "ns[shop]-policy[db-only-from-cart]-rule[0]"
    assert denial["downstream_peer_principal"] == WEB
    assert denial["response_code"] == 403
    trace_id = str(denial["trace_id"])  # the shop is traced (mesh.yaml's Telemetry)
    assert len(trace_id) == 32 and int(trace_id, 16) != 0, denial
    status, body = client.send("POST", "http://payment/pay", {"user": "x", "amount_cents": 1})
    assert (status, body) == (403, b"RBAC: access denied")

    # The dashboard draws the shop's edges with their rates and opens a checkout's trace.
    if mode == "explicit":  # the same control plane code in both modes: once is enough
        _dashboard_shows_the_shop(control, tmp_path)

    # payment v2 stops while checkouts go on: it leaves the registry, v1 takes its traffic.
    apply(control, BOTH_VERSIONS)
    background = Background(client)
    with background:
        until(lambda: background.versions()["v2"] >= 3, 20, "checkouts reaching payment v2")
        launched["payment-v2"].signal(signal.SIGTERM)
        assert launched["payment-v2"].wait(20) == 0, launched["payment-v2"].describe()
        assert workload_entry(control, "payment-v2", NAMESPACE) is None
        assert "payment-v2" not in admin_addresses(control)
        stopped_at = len(background.results)
        until(lambda: len(background.results) >= stopped_at + 20, 20, "checkouts after the stop")
    assert [c for c in background.results if c.status != 200] == []
    assert {c.version for c in background.results[stopped_at:]} == {"v1"}

    # Everything stops cleanly, in reverse order; nothing stays registered or running.
    for name, item in reversed(launched.items()):
        if item.proc is not None and item.proc.poll() is None:
            item.signal(signal.SIGTERM)
            # sleep dies of SIGTERM; the relay exits 0 on it
            expected_status = 143 if name == "client" and not capture.transparent else 0
            assert item.wait(25) == expected_status, item.describe()
    entries = api_get(control, f"/apis/networking.istio.io/v1/namespaces/{NAMESPACE}/{WE}")
    assert entries is not None and entries["items"] == []
    control.stop()
    for pid in pids:
        until(partial(process_gone, pid), 10, f"process {pid} to end")
    assert capture.leftovers() == []


def _trace_through(control: ControlPlane, apps: list[str]) -> list[dict[str, Any]] | None:
    """The spans of a recent trace that reached every app of `apps`, if there is one."""
    wanted = {f"{app}.{NAMESPACE}" for app in apps}
    for summary in (api_get(control, "/api/v1/traces?limit=100") or {}).get("items", []):
        if wanted <= set(summary["services"]):
            found = api_get(control, f"/api/v1/traces/{summary['traceId']}") or {}
            spans: list[dict[str, Any]] = found.get("spans", [])
            return spans
    return None


def _assert_one_chain(spans: list[dict[str, Any]], apps: list[str]) -> None:
    """One trace id; every span's parent in the trace but the root's; and a path of
    client span (caller's sidecar) -> server span (callee's sidecar) through `apps`."""
    by_id = {span["spanId"]: span for span in spans}
    assert len({span["traceId"] for span in spans}) == 1, spans
    roots = [span for span in spans if span["parentSpanId"] not in by_id]
    assert len(roots) == 1, roots
    server_of = {span["service"].split(".")[0]: span for span in spans if span["kind"] == "server"}
    for source, target in itertools.pairwise(apps):
        server = server_of[target]
        client_span = by_id[server["parentSpanId"]]
        assert client_span["kind"] == "client", client_span
        assert client_span["service"].split(".")[0] == source, (source, client_span)
        if source in server_of:  # the caller's own server span is that client span's parent
            assert by_id[client_span["parentSpanId"]]["service"] == server_of[source]["service"]


SHOP_EDGES = {
    ("workload/shop/client", "service/shop/web"),
    ("workload/shop/web", "service/shop/cart"),
    ("workload/shop/cart", "service/shop/catalog"),
    ("workload/shop/web", "service/shop/payment"),
    ("workload/shop/cart", "service/shop/db"),
    ("service/shop/payment", "workload/shop/payment-v1"),
    ("service/shop/payment", "workload/shop/payment-v2"),
}


def _dashboard_shows_the_shop(control: ControlPlane, tmp_path: Path) -> None:
    """In headless Chromium: the shop's edges with non-zero rates, and a checkout's trace
    (client -> web -> cart -> db) as a waterfall; screenshots in test-artifacts/."""
    browser = headless_chromium()
    if browser is None:
        print(f"the dashboard's browser check did not run: it {CHROMIUM_MISSING}")
        return
    from selenium.common.exceptions import (  # noqa: PLC0415
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.wait import WebDriverWait  # noqa: PLC0415

    seen: list[set[tuple[str, str]]] = [set()]

    def busy_shop_edges(driver: Any) -> set[tuple[str, str]] | None:
        busy = {
            (edge.get_attribute("data-source"), edge.get_attribute("data-target"))
            for edge in driver.find_elements(By.CSS_SELECTOR, "#graph g.edge")
            if float(edge.get_attribute("data-rps") or 0) > 0
        }
        seen[0] = busy
        return busy if busy >= SHOP_EDGES else None

    browser.set_page_load_timeout(15)
    try:
        browser.get(f"http://127.0.0.1:{control.api_port}/dashboard")
        # The page redraws every few seconds: an element can go stale between two reads.
        wait = WebDriverWait(
            browser, 45, poll_frequency=0.3, ignored_exceptions=(StaleElementReferenceException,)
        )
        try:
            wait.until(busy_shop_edges)
        except TimeoutException:
            raise AssertionError(f"the graph's busy edges: {sorted(seen[0])}") from None
        graph = tmp_path / "shop-dashboard.png"
        assert browser.save_screenshot(str(graph))
        # Picked now, when the last checkouts' spans are in: the page lists the newest 100.
        spans = until(
            partial(_trace_through, control, ["web", "cart", "db"]), 15, "a checkout trace"
        )
        assert spans is not None
        trace_id = spans[0]["traceId"]
        browser.find_element(By.CSS_SELECTOR, "#tabs button[data-view=traces]").click()
        row = wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, f"tr.trace[data-trace-id='{trace_id}']")
        )
        row.click()
        # At least the spans seen when the trace was picked (more may have come in since).
        bars = wait.until(
            lambda d: (
                found
                if len(found := d.find_elements(By.CSS_SELECTOR, "#waterfall .span-bar"))
                >= len(spans)
                else None
            )
        )
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", bars[0])
        trace = tmp_path / "shop-trace.png"
        assert browser.save_screenshot(str(trace))
    finally:
        browser.quit()
    for shot in (graph, trace):
        shutil.copy(shot, artifacts_dir() / shot.name)


def serving_in_shop(control: ControlPlane, name: str) -> bool:
    entry = workload_entry(control, name, NAMESPACE)
    return entry is not None and "app" in entry["spec"].get("labels", {})


class Background:
    """Checkouts one after another from the client's sidecar until the block ends (bounded)."""

    def __init__(self, client: Caller) -> None:
        self.client = client
        self.results: list[Checkout] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkouts", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        for i in range(2000):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            self.results.append(checkout(self.client, f"background-{i}", "p-mug"))

    def versions(self) -> Counter[str | None]:
        return Counter(c.version for c in list(self.results))

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _log_line(path: Path, needle: str) -> dict[str, object] | None:
    """The last JSON access-log line of a sidecar log that contains `needle`."""
    text = path.read_text(errors="replace") if path.exists() else ""
    for line in reversed(text.splitlines()):
        if needle in line and line.startswith("{"):
            found: dict[str, object] = json.loads(line)
            return found
    return None
