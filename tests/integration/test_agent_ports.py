"""The ports Istio's agent serves beside Envoy (DESIGN.md §4): `trellis proxy
--stats-port` (15020, the merged `/stats/prometheus`) and `--health-port` (15021,
`/healthz/ready`: 200 once ready, 503 before and while draining). They are
reachable from outside the workload, so they offer nothing else."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .bootstrap import Json, free_port, simple_http, xds_bootstrap
from .client import request
from .proxyproc import proxy_command
from .test_xds_proxy import NODE, ControlPlane, _snapshot
from .upstream import HttpUpstream

WAIT = 10.0
APP_METRICS = "# TYPE shop_orders_total counter\nshop_orders_total 7\n"


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _until(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the proxy exited while waiting for {what}"
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def _total(text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def _families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


@contextmanager
def _proxy(config: Json, workdir: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`trellis proxy` with `config` and `args`; stopped (and checked) at the end."""
    path = workdir / "bootstrap.json"
    path.write_text(json.dumps(config))
    log = workdir / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            proxy_command(path, *args), stdout=out, stderr=out, stdin=subprocess.DEVNULL
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-4000:]


@pytest.fixture
def app_metrics() -> Iterator[int]:
    """The application's own Prometheus endpoint, `GET /metrics`; yields its port."""

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = APP_METRICS.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, name="app metrics", daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_the_stats_port_serves_merged_metrics_and_nothing_that_changes_the_proxy(
    tmp_path: Path, upstream: HttpUpstream, app_metrics: int
) -> None:
    admin, listen, stats, health = free_port(), free_port(), free_port(), free_port()
    config = simple_http(admin, listen, [upstream.port])
    annotations = ["--annotation", f"prometheus.io/port={app_metrics}"]
    ports = ["--stats-port", str(stats), "--health-port", str(health)]
    with _proxy(config, tmp_path, *ports, *annotations) as proc:
        _until("the health port", lambda: _get(health, "/healthz/ready")[0] == 200, proc)
        assert request(listen, "GET", "/").status == 200

        status, text = _get(stats, "/stats/prometheus")
        assert status == 200
        merged = _samples(text)
        assert merged["envoy_server_live"] == 1
        assert merged["shop_orders_total"] == 7  # the application's, merged (Istio's 15020)
        assert _total(text, "istio_requests_total") == 1  # the request just proxied
        # The same families as the admin port's /stats/prometheus.
        assert _families(text) == _families(_get(admin, "/stats/prometheus")[1])
        assert _get(stats, "/healthz/ready") == (200, "LIVE\n")

        for port, path, method in (
            (stats, "/config_dump", "GET"),
            (stats, "/clusters", "GET"),
            (stats, "/quitquitquit", "POST"),
            (stats, "/drain_listeners", "POST"),
            (stats, "/logging?level=debug", "POST"),
            (health, "/stats/prometheus", "GET"),
            (health, "/ready", "GET"),
            (health, "/quitquitquit", "POST"),
        ):
            assert _get(port, path, method)[0] == 404, (port, path)
        # Still serving: none of those reached the proxy.
        assert _get(health, "/healthz/ready") == (200, "LIVE\n")
        assert request(listen, "GET", "/").status == 200
        assert _get(admin, "/config_dump")[0] == 200  # the admin port keeps them


def test_the_health_port_answers_503_until_the_first_config_arrives(tmp_path: Path) -> None:
    plane = ControlPlane()
    plane.start()
    try:
        health, listen = free_port(), free_port()
        node = {"id": NODE, "cluster": "web", "metadata": {"WORKLOAD_NAME": "web"}}
        config = xds_bootstrap(node, free_port(), plane.port)
        with _proxy(config, tmp_path, "--health-port", str(health)) as proc:
            _until("the health port", lambda: _get(health, "/healthz/ready")[0] > 0, proc)
            # Connected to the control plane, which has nothing for this proxy yet.
            time.sleep(0.5)
            assert _get(health, "/healthz/ready") == (503, "PRE_INITIALIZING\n")
            upstream = HttpUpstream("v1").start()
            try:
                plane.publish(_snapshot("1", listen, {"v1": upstream.port}, {"v1": 1}))
                _until("ready", lambda: _get(health, "/healthz/ready") == (200, "LIVE\n"), proc)
                assert request(listen, "GET", "/").status == 200  # ready means serving
            finally:
                upstream.stop()
    finally:
        plane.close()


def test_the_health_port_answers_503_while_draining(tmp_path: Path, upstream: HttpUpstream) -> None:
    health, listen = free_port(), free_port()
    config = simple_http(free_port(), listen, [upstream.port], hcm_extra={"drain_timeout": "5s"})
    with _proxy(config, tmp_path, "--health-port", str(health)) as proc:
        _until("ready", lambda: _get(health, "/healthz/ready")[0] == 200, proc)
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(request, listen, "GET", "/delay/2", timeout=10)
            deadline = time.monotonic() + WAIT
            while upstream.active < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert upstream.active == 1, "the slow request did not reach the upstream"
            proc.send_signal(signal.SIGTERM)
            # The in-flight request holds the drain open; the probe says not ready.
            _until("draining", lambda: _get(health, "/healthz/ready")[0] == 503, proc)
            assert _get(health, "/healthz/ready") == (503, "DRAINING\n")
            assert slow.result(timeout=10).status == 200
        assert proc.wait(10) == 0
