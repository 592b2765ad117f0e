"""Istio's metrics merging: the sidecar's /stats/prometheus includes the application's
own metrics when its node declares them (annotation prometheus.io/port)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .bootstrap import NODE, bootstrap, free_port, simple_http
from .harness import ProxyFactory
from .proxyproc import metric_sum

APP_METRICS = (
    "# HELP shop_orders_total Orders placed.\n"
    "# TYPE shop_orders_total counter\n"
    'shop_orders_total{kind="book"} 42\n'
    "# EOF\n"
)


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/custom/metrics":
            self.send_error(404)
            return
        body = APP_METRICS.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def app_metrics() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Metrics)
    thread = threading.Thread(target=server.serve_forever, name="app metrics", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _node(port: int, path: str = "/custom/metrics") -> dict[str, object]:
    metadata: dict[str, object] = {**NODE["metadata"]}  # type: ignore[dict-item]
    metadata["ANNOTATIONS"] = {"prometheus.io/port": str(port), "prometheus.io/path": path}
    return {**NODE, "metadata": metadata}


def test_application_metrics_are_merged_and_failures_counted(
    start_proxy: ProxyFactory, app_metrics: ThreadingHTTPServer
) -> None:
    port = app_metrics.server_address[1]
    config = simple_http(free_port(), free_port(), [free_port()])
    config["node"] = _node(int(port))
    proxy = start_proxy(config)
    samples = proxy.samples()  # parses as one valid exposition: no stray "# EOF"
    assert metric_sum(samples, "shop_orders_total", kind="book") == 42
    assert metric_sum(samples, "istio_agent_scrape_failures_total", type="application") == 0
    assert metric_sum(samples, "envoy_server_live") == 1  # the proxy's own metrics too

    app_metrics.shutdown()
    app_metrics.server_close()
    samples = proxy.samples()
    assert metric_sum(samples, "shop_orders_total") == 0
    assert metric_sum(samples, "istio_agent_scrape_failures_total", type="application") == 1
    assert metric_sum(samples, "envoy_server_live") == 1


def test_a_bad_metrics_annotation_is_rejected_naming_it(start_proxy: ProxyFactory) -> None:
    config = bootstrap(free_port(), [], [])
    config["node"] = _node(70000)
    proxy = start_proxy(config, wait_ready=False, expect_exit=True)
    assert proxy.wait_exit(10) == 1
    assert "prometheus.io/port" in proxy.stderr()
    assert "expected a port 1-65535" in proxy.stderr()
