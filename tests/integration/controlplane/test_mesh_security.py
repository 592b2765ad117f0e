"""Issue 4 end to end: `trellis control-plane` (its CA) and `trellis proxy --join-token-file`.

web, cart (clients, explicit proxy) and payment (a server behind its sidecar's
inbound listener) each get a join token from the REST API and their certificate
from the control plane's CA; mesh-wide STRICT mTLS, AuthorizationPolicy on
payment, certificate rotation under load with a 5 s TTL, and a restarted
sidecar that obtains a new certificate.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..bootstrap import free_port
from ..client import Response, raw_exchange, request
from ..proxyproc import metric_sum
from ..upstream import HttpUpstream
from .mesh_procs import ControlPlane, Load, SidecarProcess, served_serial, until

NS = "default"
WEB = f"spiffe://cluster.local/ns/{NS}/sa/web"
CART = f"spiffe://cluster.local/ns/{NS}/sa/cart"
PAYMENT = f"spiffe://cluster.local/ns/{NS}/sa/payment"
REQUESTS = "istio_requests_total"

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payment, namespace: default}
spec:
  hosts: [payment.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: payment}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payment, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: %(port)d}
  serviceAccount: payment
  labels: {app: payment, security.istio.io/tlsMode: istio}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""

ALLOW_WEB = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payment-callers, namespace: default}
spec:
  selector: {matchLabels: {app: payment}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/web]}}]
    to: [{operation: {methods: [GET], paths: ["/api/*", /admin]}}]
  - from: [{source: {namespaces: [default]}}]
    to: [{operation: {paths: [/health]}}]
"""

DENY_ADMIN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: payment}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin]}}]
"""


@dataclass
class Mesh:
    control: ControlPlane
    app: HttpUpstream
    port: int  # payment's workload port: its sidecar's inbound listener
    workdir: Path
    sidecars: dict[str, SidecarProcess] = field(default_factory=dict)
    outbound: dict[str, int] = field(default_factory=dict)
    stopped: list[SidecarProcess] = field(default_factory=list)

    def sidecar(self, name: str) -> SidecarProcess:
        token_file = self.workdir / f"{name}.token"
        if not token_file.exists():
            token_file.write_text(self.control.join_token(NS, name, name) + "\n")
        outbound = self.outbound.setdefault(name, free_port())
        meta = {"NAMESPACE": NS, "SERVICE_ACCOUNT": name, "TRELLIS_OUTBOUND_PORT": str(outbound)}
        if name == "payment":
            meta["TRELLIS_APP_PORTS"] = f"{self.port}:{self.app.port}"
        proxy = SidecarProcess(self.control, self.workdir, name, token_file, meta)
        self.sidecars[name] = proxy
        return proxy

    def stop_sidecar(self, name: str) -> None:
        proxy = self.sidecars.pop(name)
        proxy.stop()
        self.stopped.append(proxy)

    def call(self, client: str, method: str = "GET", path: str = "/api/pay") -> Response:
        """A request from `client`'s application, through its sidecar's outbound listener."""
        body = b"{}" if method in ("POST", "PUT") else None
        url = f"http://payment{path}"
        return request(self.outbound[client], method, url, host="payment", body=body)

    def stop(self) -> list[str]:
        """Stop every sidecar; the problems (an early exit, a traceback) found."""
        problems = []
        for proxy in self.sidecars.values():
            if not proxy.started:
                continue
            if not proxy.alive():
                problems.append(f"{proxy.name} exited during the test\n{proxy.describe()}")
            proxy.stop()
        for proxy in [*self.sidecars.values(), *self.stopped]:
            crash = proxy.crash_report() if proxy.started else None
            if crash:
                problems.append(f"{proxy.name}: {crash}")
        return problems


@contextmanager
def mesh_running(workdir: Path, *control_args: str) -> Iterator[Mesh]:
    control = ControlPlane(workdir / "cp", *control_args).start()
    app = HttpUpstream("payment-app").start()
    mesh = Mesh(control, app, free_port(), workdir)
    problems: list[str] = []
    try:
        control.apply(MESH % {"port": mesh.port})
        names = ("payment", "web", "cart")
        started = [mesh.sidecar(name).start(wait_ready=False) for name in names]
        for proxy in started:
            proxy.wait_ready(timeout=30.0)
        until(lambda: mesh.call("web").status == 200, what="web -> payment")
        until(lambda: mesh.call("cart").status == 200, what="cart -> payment")
        yield mesh
    finally:
        problems = mesh.stop()
        app.stop()
        control.stop()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with mesh_running(tmp_path) as running:
        yield running


def test_strict_mtls_between_sidecars_and_plaintext_refused(mesh: Mesh) -> None:
    assert mesh.sidecars["web"].certificate()["subject_alt_names"] == [{"uri": WEB}]
    assert mesh.sidecars["payment"].certificate()["subject_alt_names"] == [{"uri": PAYMENT}]
    response = mesh.call("web", "GET", "/api/pay")
    assert response.status == 200 and response.header("x-upstream") == "payment-app", response

    server = mesh.sidecars["payment"].samples()
    mtls = {
        "reporter": "destination",
        "connection_security_policy": "mutual_tls",
        "destination_principal": PAYMENT,
    }
    for principal in (WEB, CART):
        assert metric_sum(server, REQUESTS, **mtls, source_principal=principal) >= 1, principal
    assert metric_sum(server, REQUESTS, connection_security_policy="none") == 0
    client = mesh.sidecars["web"].samples()
    assert metric_sum(client, REQUESTS, reporter="source", destination_principal=PAYMENT) >= 1

    mesh.app.clear()
    for attempt in range(3):
        result = raw_exchange(mesh.port, b"GET /api/pay HTTP/1.1\r\nHost: payment\r\n\r\n")
        assert result.closed and result.status is None, f"attempt {attempt}: {result}"
    assert mesh.app.requests == []
    # ...while the mesh path still works.
    assert mesh.call("web").status == 200


def test_authorization_policy_allow_deny_matrix(mesh: Mesh) -> None:
    mesh.control.apply(ALLOW_WEB)
    until(lambda: mesh.call("cart").status == 403, what="the ALLOW policy")
    denied = mesh.call("cart")
    assert (denied.status, denied.text) == (403, "RBAC: access denied"), denied
    assert mesh.call("web", "GET", "/api/pay").status == 200
    assert mesh.call("web", "GET", "/admin").status == 200  # allowed until the DENY comes

    mesh.control.apply(DENY_ADMIN)
    until(lambda: mesh.call("web", "GET", "/admin").status == 403, what="the DENY policy")

    mesh.app.clear()
    matrix = {
        ("web", "GET", "/api/pay"): 200,
        ("web", "GET", "/api/refund"): 200,
        ("web", "POST", "/api/pay"): 403,  # ALLOW names GET only
        ("web", "GET", "/admin"): 403,  # the DENY wins over a matching ALLOW
        ("web", "GET", "/other"): 403,  # no ALLOW rule matches
        ("web", "DELETE", "/health"): 200,  # the namespace rule
        ("cart", "GET", "/api/pay"): 403,  # not web's principal
        ("cart", "GET", "/admin"): 403,
        ("cart", "GET", "/health"): 200,
        ("cart", "POST", "/health"): 200,
    }
    before = mesh.sidecars["payment"].samples()
    got = {case: mesh.call(*case) for case in matrix}
    assert {case: r.status for case, r in got.items()} == matrix
    for case, response in got.items():
        if response.status == 403:
            assert response.text == "RBAC: access denied", (case, response)
    allowed = sorted((m, p) for (_, m, p), status in matrix.items() if status == 200)
    assert sorted((r.method, r.path) for r in mesh.app.requests) == allowed
    after = mesh.sidecars["payment"].samples()
    labels = {"reporter": "destination", "response_code": "403"}
    denials = metric_sum(after, REQUESTS, **labels) - metric_sum(before, REQUESTS, **labels)
    assert denials == list(matrix.values()).count(403)


IDLE_POOL = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payment, namespace: default}
spec:
  host: payment.default.svc.cluster.local
  trafficPolicy: {connectionPool: {http: {idleTimeout: 100ms}}}
"""


@dataclass(frozen=True, slots=True)
class Seen:
    """One look at the pair: both certificates' serials, payment's accepted connections."""

    web: str
    payment: str
    accepted: float


def watch(mesh: Mesh, stop: threading.Event, seen: list[Seen]) -> None:
    listener = {"envoy_listener_address": f"127.0.0.1:{mesh.port}"}
    for _ in range(1000):
        samples = mesh.sidecars["payment"].samples()
        accepted = metric_sum(samples, "envoy_listener_downstream_cx_total", **listener)
        web, payment = mesh.sidecars["web"].serial(), mesh.sidecars["payment"].serial()
        seen.append(Seen(web, payment, accepted))
        if stop.wait(0.2):
            return


def test_rotation_every_few_seconds_under_load_loses_no_request(tmp_path: Path) -> None:
    with mesh_running(tmp_path, "--cert-ttl", "5s") as mesh:
        mesh.control.apply(IDLE_POOL)
        web = mesh.sidecars["web"]
        until(lambda: '"0.100s"' in web.admin("GET", "/config_dump")[1], what="the idleTimeout")
        seen: list[Seen] = []
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(mesh, stop, seen), daemon=True)
        before = mesh.sidecars["payment"].samples()
        watcher.start()
        with Load(mesh.outbound["web"], seconds=13.0) as load:
            pass
        stop.set()
        watcher.join(10)
        after = mesh.sidecars["payment"].samples()

        assert not load.failures, load.failures[:5]
        assert load.ok > 100, load.ok
        for name in ("web", "payment"):
            serials = {getattr(s, name) for s in seen}
            assert len(serials) >= 3, (name, serials)  # at least two renewals
        # New mTLS handshakes (payment accepting connections) under several certificates.
        for name in ("web", "payment"):
            handshaken = {
                getattr(a, name)
                for a, b in itertools.pairwise(seen)
                if getattr(a, name) == getattr(b, name) and b.accepted > a.accepted
            }
            trace = " ".join(f"{s.web[:4]}/{s.payment[:4]}:{s.accepted:.0f}" for s in seen)
            assert len(handshaken) >= 3, (name, trace)
        # Every request reached payment over mTLS with web's identity.
        labels = {
            "reporter": "destination",
            "connection_security_policy": "mutual_tls",
            "source_principal": WEB,
            "response_code": "200",
        }
        served = metric_sum(after, REQUESTS, **labels) - metric_sum(before, REQUESTS, **labels)
        assert served == load.ok, (served, load.ok)
        # A new handshake is answered with the newest certificate, not the first one.
        current = mesh.sidecars["payment"].serial()
        assert served_serial(mesh.port) == current and current != seen[0].payment
        expiry = metric_sum(after, "istio_agent_cert_expiry_seconds", resource_name="default")
        assert 0 < expiry <= 5


def test_a_restarted_sidecar_obtains_a_new_identity(mesh: Mesh) -> None:
    first = mesh.sidecars["payment"].serial()
    mesh.stop_sidecar("payment")
    assert mesh.call("web").status != 200  # nobody on payment's inbound port now
    new = mesh.sidecar("payment").start()  # the same token file, the same ports
    again = new.certificate()
    assert again["subject_alt_names"] == [{"uri": PAYMENT}]
    assert again["serial_number"] != first
    until(lambda: mesh.call("web").status == 200, what="web -> the restarted payment sidecar")
    mtls = {"reporter": "destination", "connection_security_policy": "mutual_tls"}
    assert metric_sum(new.samples(), REQUESTS, **mtls, source_principal=WEB) >= 1
