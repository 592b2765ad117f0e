"""A real Prometheus scrapes two real sidecars (client -> server over mTLS) and its
PromQL answers agree with the traffic that was sent; the Grafana dashboard's
expressions all parse and run on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest

from .bootstrap import free_port
from .client import request
from .harness import ProxyFactory
from .mesh_pair import SERVICE, start_pair
from .pki import TestCa
from .upstream import HttpUpstream

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "trellis-mesh.json"
OK, FAILED = 12, 4  # requests answered 200 (each delayed) and 503
DELAY = 0.2  # seconds the application takes for each 200
READY_TIMEOUT = 30.0
SCRAPED_TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="needs the `prometheus` binary (Debian package prometheus; `make test` installs "
    "it when run as root)",
)


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urlencode(params)}" if params else ""
        with urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def by(self, promql: str, label: str) -> dict[str, float]:
        return {row["metric"].get(label, ""): float(row["value"][1]) for row in self.query(promql)}


def _config(targets: list[str]) -> str:
    quoted = ", ".join(f"'{target}'" for target in targets)
    return (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: sidecars\n    metrics_path: /stats/prometheus\n"
        f"    static_configs:\n      - targets: [{quoted}]\n"
    )


def _wait(what: str, seconds: float, check: Any) -> Any:
    """Poll `check()` until it returns something truthy, at most `seconds`."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what} within {seconds:g}s (last: {last!r})")


def _ready(url: str) -> bool:
    try:
        with urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, URLError):
        return False


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus on 127.0.0.1 scraping `targets`; stopped by its pid at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(_config(targets))
        port = free_port()
        log = tmp_path / "prometheus.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not get ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        return Prometheus(url, process, log)

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, 15)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, 9)
                process.wait(5)


def test_promql_over_two_sidecars_matches_the_traffic(
    start_proxy: ProxyFactory, upstream: HttpUpstream, prometheus_factory: Any
) -> None:
    pair = start_pair(start_proxy, TestCa(), upstream.port)
    targets = [f"127.0.0.1:{proxy.admin_port}" for proxy in pair.proxies]
    prom: Prometheus = prometheus_factory(targets)
    _wait(
        "both sidecars scraped and up",
        SCRAPED_TIMEOUT,
        lambda: prom.by("sum(up) by (job)", "job").get("sidecars") == 2,
    )

    def send(ok: int, failed: int) -> None:
        for _ in range(ok):
            assert request(pair.client_port, "GET", f"/delay/{DELAY}", host="echo").status == 200
        for _ in range(failed):
            assert request(pair.client_port, "GET", "/status/503", host="echo").status == 503

    # One of each first, scraped before the rest: rate() needs two samples of a series.
    send(1, 1)
    source = 'sum(istio_requests_total{reporter="source"}) by (response_code)'
    _wait(
        "Prometheus to see the first requests",
        SCRAPED_TIMEOUT,
        lambda: prom.by(source, "response_code") == {"200": 1.0, "503": 1.0},
    )
    send(OK - 1, FAILED - 1)

    want = {"200": float(OK), "503": float(FAILED)}
    counts = _wait(
        "Prometheus to see every request",
        SCRAPED_TIMEOUT,
        lambda: (found := prom.by(source, "response_code")) == want and found,
    )
    assert counts == want  # exact: the client's sidecar counted each request once

    # The server's sidecar agrees, and names the client's workload (metadata exchange).
    destination = (
        'sum(istio_requests_total{reporter="destination"}) by (source_workload, source_app, '
        "destination_workload, destination_service, response_code)"
    )
    _wait(
        "Prometheus to see every request at the server",
        SCRAPED_TIMEOUT,
        lambda: sum(float(r["value"][1]) for r in prom.query(destination)) == OK + FAILED,
    )
    rows = prom.query(destination)
    assert {
        (r["metric"]["source_workload"], r["metric"]["source_app"],
         r["metric"]["destination_workload"], r["metric"]["destination_service"],
         r["metric"]["response_code"], float(r["value"][1]))
        for r in rows
    } == {
        ("web", "web", "echo-v2", SERVICE, "200", float(OK)),
        ("web", "web", "echo-v2", SERVICE, "503", float(FAILED)),
    }  # fmt: skip

    rates = prom.query(
        'sum(rate(istio_requests_total{reporter="destination"}[1m])) '
        "by (destination_service, response_code)"
    )
    by_code = {r["metric"]["response_code"]: float(r["value"][1]) for r in rates}
    assert {r["metric"]["destination_service"] for r in rates} == {SERVICE}
    assert set(by_code) == {"200", "503"}
    assert all(value > 0 for value in by_code.values()), by_code
    assert by_code["200"] < OK and by_code["503"] < FAILED  # per second over a minute

    # Every 200 took DELAY seconds upstream: p99 lies in Envoy's (100, 250] ms bucket.
    p99_rows = prom.query(
        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket"
        '{reporter="destination"}[1m])) by (le))'
    )
    assert len(p99_rows) == 1, p99_rows
    p99 = float(p99_rows[0]["value"][1])
    assert DELAY * 1000 * 0.5 < p99 <= 250.0, p99
    p99_client = float(
        prom.query(
            "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket"
            '{reporter="source"}[1m])) by (le))'
        )[0]["value"][1]
    )
    assert DELAY * 1000 * 0.5 < p99_client <= 250.0, p99_client

    # The Grafana dashboard's queries all run, and its traffic panels show this traffic.
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$service", ".*")
            result = prom.query(expr)
            if "istio_requests_total" in expr or "istio_request_duration" in expr:
                assert result, f"{panel['title']}: no data for {expr}"
