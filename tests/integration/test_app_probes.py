"""The application's probes through a real `trellis proxy` (Istio's app-health on 15020).

The injector hands the proxy the application's original probes in
$TRELLIS_KUBE_APP_PROBERS; the kubelet then asks `--stats-port` for
`/app-health/<container>/livez|readyz|startupz`, and the proxy probes the
application on 127.0.0.1: real HTTP (plain and TLS), TCP and gRPC servers here.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from trellis.core.app_probe import APP_PROBERS_ENV

from .bootstrap import bootstrap, free_port
from .pki import TestCa
from .proxyproc import proxy_command
from .test_agent_ports import _get, _proxy, _until

SLOW_SECONDS = 4.0


@dataclass
class App:
    """The application's HTTP server: what it answers, and the probe requests it saw."""

    server: ThreadingHTTPServer
    seen: list[dict[str, str]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def _serve(server: ThreadingHTTPServer) -> None:
    threading.Thread(target=server.serve_forever, name="app", daemon=True).start()


def _app_server(tls: ssl.SSLContext | None = None) -> App:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            if self.path == "/slow":
                time.sleep(SLOW_SECONDS)
            status = {"/healthz": 200, "/slow": 200, "/sick": 503, "/moved": 302}.get(self.path)
            self.send_response(status or 404)
            if status == 302:
                self.send_header("Location", "/healthz")
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    _serve(server)
    return App(server, seen)


@pytest.fixture
def app() -> Iterator[App]:
    served = _app_server()
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def tls_app(tmp_path: Path) -> Iterator[App]:
    issued = TestCa().issue("spiffe://cluster.local/ns/shop/sa/web")
    (tmp_path / "app.pem").write_text(issued.chain_pem)
    (tmp_path / "app.key").write_text(issued.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "app.pem", tmp_path / "app.key")
    served = _app_server(context)
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def tcp_port() -> Iterator[int]:
    """A port something listens on (the kernel completes the handshake)."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield int(listener.getsockname()[1])
    listener.close()


@pytest.fixture
def grpc_health() -> Iterator[int]:
    """grpc.health.v1.Health/Check: SERVING, except NOT_SERVING for the service `down`."""

    def check(request: bytes, context: Any) -> bytes:
        service = request[2 : 2 + request[1]].decode() if request else ""
        return b"\x08\x02" if service == "down" else b"\x08\x01"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {"Check": grpc.unary_unary_rpc_method_handler(check)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(grace=None).wait(5)


def _http(port: int, path: str = "/healthz", timeout: int = 1, **extra: Any) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port, **extra}, "timeoutSeconds": timeout}


def _probing_proxy(
    probes: dict[str, Any], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, Any]:
    """The stats port and a `trellis proxy` (a context manager) given `probes`."""
    monkeypatch.setenv(APP_PROBERS_ENV, json.dumps(probes))
    stats = free_port()
    return stats, _proxy(bootstrap(free_port(), [], []), workdir, "--stats-port", str(stats))


def _timed_get(port: int, path: str) -> tuple[int, float]:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SLOW_SECONDS + 2)
    try:
        conn.request("GET", path, headers={"User-Agent": "kube-probe/1.29"})
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


def test_http_probes_answer_with_the_applications_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app: App, tls_app: App
) -> None:
    header = {"name": "X-Probe", "value": "kubelet"}
    probes = {
        "/app-health/web/livez": _http(app.port, httpHeaders=[header]),
        "/app-health/web/readyz": _http(app.port, "/sick"),
        "/app-health/web/startupz": _http(app.port, "/moved"),
        "/app-health/tls/livez": _http(tls_app.port, scheme="HTTPS"),
        "/app-health/slow/livez": _http(app.port, "/slow", timeout=1),
    }
    stats, proxy = _probing_proxy(probes, tmp_path, monkeypatch)
    with proxy as proc:
        _until("the stats port", lambda: _get(stats, "/healthz/ready")[0] == 200, proc)
        assert _get(stats, "/app-health/web/livez")[0] == 200
        # As the kubelet would have asked: its Host with the application's port, the
        # probe's own headers, no keep-alive.
        asked = app.seen[-1]
        assert asked["path"] == "/healthz"
        assert asked["x-probe"] == "kubelet"
        assert asked["host"] == f"127.0.0.1:{app.port}"
        assert asked["connection"] == "close"
        assert _get(stats, "/app-health/web/readyz")[0] == 503  # the application's own
        assert _get(stats, "/app-health/web/startupz")[0] == 200  # a redirect is success
        assert _get(stats, "/app-health/tls/livez")[0] == 200  # TLS, not verified
        assert tls_app.seen[-1]["path"] == "/healthz"
        assert _timed_get(stats, "/app-health/web/livez")[0] == 200
        assert app.seen[-1]["user-agent"] == "kube-probe/1.29"

        # The probe's timeoutSeconds bounds the answer, whatever the application does.
        status, took = _timed_get(stats, "/app-health/slow/livez")
        assert status == 500
        assert 0.9 <= took < SLOW_SECONDS - 1, took

        assert _get(stats, "/app-health/other/livez")[0] == 404  # not a probe of this pod

        # The application goes away: the probe fails, as Istio's agent answers it.
        app.server.shutdown()
        app.server.server_close()
        assert _get(stats, "/app-health/web/livez")[0] == 500


def test_tcp_and_grpc_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tcp_port: int, grpc_health: int
) -> None:
    probes = {
        "/app-health/db/livez": {"tcpSocket": {"port": tcp_port}, "timeoutSeconds": 1},
        "/app-health/db/readyz": {"tcpSocket": {"port": free_port()}, "timeoutSeconds": 1},
        "/app-health/api/livez": {"grpc": {"port": grpc_health}, "timeoutSeconds": 2},
        "/app-health/api/readyz": {
            "grpc": {"port": grpc_health, "service": "down"},
            "timeoutSeconds": 2,
        },
        "/app-health/api/startupz": {"grpc": {"port": free_port()}, "timeoutSeconds": 1},
    }
    stats, proxy = _probing_proxy(probes, tmp_path, monkeypatch)
    with proxy as proc:
        _until("the stats port", lambda: _get(stats, "/healthz/ready")[0] == 200, proc)
        assert _get(stats, "/app-health/db/livez")[0] == 200  # something listens
        assert _get(stats, "/app-health/db/readyz")[0] == 500  # nothing listens
        assert _get(stats, "/app-health/api/livez")[0] == 200  # SERVING
        assert _get(stats, "/app-health/api/readyz")[0] == 500  # NOT_SERVING
        assert _get(stats, "/app-health/api/startupz")[0] == 500  # no gRPC server


@pytest.mark.parametrize(
    ("value", "args", "message"),
    [
        (
            '{"/app-health/web/livez": {"tcpSocket": {"port": "http"}}}',
            ("--stats-port", "0"),
            f"{APP_PROBERS_ENV}: /app-health/web/livez.tcpSocket.port: expected a port",
        ),
        ("{nope", ("--stats-port", "0"), f"{APP_PROBERS_ENV}: not JSON"),
        (
            '{"/app-health/web/livez": {"tcpSocket": {"port": 80}}}',
            (),
            f"{APP_PROBERS_ENV}: the probes are served on --stats-port",
        ),
    ],
)
def test_malformed_probes_stop_the_proxy_at_startup(
    tmp_path: Path, value: str, args: tuple[str, ...], message: str
) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap(free_port(), [], [])))
    done = subprocess.run(
        proxy_command(path, *args),
        env={**os.environ, APP_PROBERS_ENV: value},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_probes_go_to_the_pods_ip_like_the_kubelets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application listening only on its pod's IP (here 127.0.0.2) passes, because
    the proxy probes INSTANCE_IP, as the kubelet and Istio's agent do."""
    listener = socket.create_server(("127.0.0.2", 0))
    port = int(listener.getsockname()[1])
    try:
        probes = {"/app-health/db/livez": {"tcpSocket": {"port": port}, "timeoutSeconds": 1}}
        monkeypatch.setenv("INSTANCE_IP", "127.0.0.2")
        stats, proxy = _probing_proxy(probes, tmp_path, monkeypatch)
        with proxy as proc:
            _until("the stats port", lambda: _get(stats, "/healthz/ready")[0] == 200, proc)
            assert _get(stats, "/app-health/db/livez")[0] == 200
        monkeypatch.delenv("INSTANCE_IP")  # outside a pod: the loopback, where it is not
        (tmp_path / "again").mkdir()
        stats, proxy = _probing_proxy(probes, tmp_path / "again", monkeypatch)
        with proxy as proc:
            _until("the stats port", lambda: _get(stats, "/healthz/ready")[0] == 200, proc)
            assert _get(stats, "/app-health/db/livez")[0] == 500
    finally:
        listener.close()
