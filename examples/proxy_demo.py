"""Demo of `trellis proxy`: weighted split, retries, direct response, redirect, metrics.

Starts two demo upstream instances and one proxy from an Envoy v3 bootstrap, sends a few
requests through it and reports what happened. Exits 1 when something misbehaves.
"""

from __future__ import annotations

import collections
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from demo_upstream import DemoUpstream

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SPLIT = {"svc-a": 75, "svc-b": 25}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx answers back to the caller instead of following them."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET without redirects or environment proxies: (status, lower-cased headers, body)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(url, timeout=10) as response:
            status, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    return int(status), {k.lower(): v for k, v in headers.items()}, bytes(body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def addr(port: int) -> dict[str, object]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def cluster(name: str, *ports: int) -> dict[str, object]:
    hosts = [{"endpoint": {"address": addr(port)}} for port in ports]
    assignment = {"cluster_name": name, "endpoints": [{"lb_endpoints": hosts}]}
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": assignment}


def bootstrap(port: int, admin_port: int, a_port: int, b_port: int) -> dict[str, object]:
    """An Envoy v3 Bootstrap with the four demo routes."""
    split = [{"name": name, "weight": weight} for name, weight in SPLIT.items()]
    added = [{"header": {"key": "x-demo-route", "value": "api-split"}}]
    routes = [
        {
            "match": {"prefix": "/api/"},
            "route": {"weighted_clusters": {"clusters": split}, "timeout": "5s"},
            "response_headers_to_add": added,
        },
        {
            "match": {"prefix": "/flaky"},
            "route": {"cluster": "svc-a", "retry_policy": {"retry_on": "5xx", "num_retries": 2}},
        },
        {
            "match": {"path": "/healthz"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
        },
        {
            "match": {"prefix": "/old/"},
            "redirect": {"prefix_rewrite": "/api/", "response_code": "MOVED_PERMANENTLY"},
        },
    ]
    manager = {
        "@type": HCM + "HttpConnectionManager",
        "stat_prefix": "demo",
        "route_config": {
            "name": "demo",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    filters = [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]
    listener = {
        "name": "demo-http",
        "address": addr(port),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": filters}],
    }
    metadata = {"WORKLOAD_NAME": "demo-client", "NAMESPACE": "default"}
    return {
        "node": {"id": "demo", "cluster": "demo", "metadata": metadata},
        "admin": {"address": addr(admin_port)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [cluster("svc-a", a_port), cluster("svc-b", b_port)],
        },
    }


def trellis_command() -> list[str]:
    """The `trellis` script beside this Python, else `python -m trellis.cli.main`."""
    script = Path(sys.executable).with_name("trellis")
    return [str(script)] if script.exists() else [sys.executable, "-m", "trellis.cli.main"]


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if get(url)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


class Report:
    """Prints findings and remembers whether any expectation failed."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.sent = 0  # requests sent through the proxy

    def expect(self, ok: bool, what: str) -> None:
        print(f"   {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


def exercise(base: str, a: DemoUpstream, report: Report) -> None:
    """Send the demo requests through the proxy at `base` and check the answers."""

    def through(path: str) -> tuple[int, dict[str, str], bytes]:
        report.sent += 1
        return get(base + path)

    weights = " / ".join(f"{name} {weight}%" for name, weight in SPLIT.items())
    print(f"1. Weighted split: 60 x GET /api/items -> {weights}")
    served: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    for _ in range(60):
        status, headers, body = through("/api/items")
        statuses[status] += 1
        served[headers.get("x-served-by", "?")] += 1
    print(f"   statuses {dict(statuses)}; served by a: {served['a']}, b: {served['b']}")
    report.expect(statuses == {200: 60}, "every /api request answered 200")
    report.expect(served["a"] > served["b"] > 0, "both instances served, a more often than b")
    status, headers, body = through("/api/echo")
    seen = json.loads(body).get("headers", {}) if status == 200 else {}
    print(f"   upstream saw x-request-id: {seen.get('x-request-id', '(none)')}")
    print(f"   response carried x-demo-route: {headers.get('x-demo-route', '(none)')}")
    report.expect("x-request-id" in seen, "proxy added x-request-id to the upstream request")
    report.expect(headers.get("x-demo-route") == "api-split", "route added x-demo-route")

    print("2. Retries: 6 x GET /flaky (svc-a fails every other attempt; retry_on 5xx, 2 retries)")
    before = a.flaky_attempts
    codes = [through("/flaky")[0] for _ in range(6)]
    attempts = a.flaky_attempts - before
    print(f"   client saw {codes}; upstream attempts: {attempts}")
    report.expect(codes == [200] * 6, "every /flaky request succeeded after a retry")
    report.expect(attempts == 12, "each request took two attempts")

    status, _, body = through("/healthz")
    print(f"3. Direct response: GET /healthz -> {status} {body!r}")
    report.expect((status, body) == (200, b"ok\n"), "answered by the proxy itself")

    status, headers, _ = through("/old/catalog?page=2")
    location = headers.get("location", "")
    print(f"4. Redirect: GET /old/catalog?page=2 -> {status} location: {location}")
    report.expect(status == 301 and location.endswith("/api/catalog?page=2"), "prefix redirect")

    status, headers, _ = through("/nothing-here")
    print(f"5. No route: GET /nothing-here -> {status}")
    report.expect(status == 404, "unmatched path gets 404")


def _labels(sample: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', sample))


def show_admin(admin: str, report: Report) -> None:
    """Print istio_requests_total (abridged labels) and per-endpoint cluster stats."""
    status, _, body = get(admin + "/stats/prometheus")
    samples = [s for s in body.decode().splitlines() if s.startswith("istio_requests_total{")]
    print(f"\nMetrics: admin /stats/prometheus (HTTP {status}), istio_requests_total, some labels:")
    total = 0.0
    for sample in samples:
        labels, value = _labels(sample), float(sample.rsplit(" ", 1)[1])
        total += value
        shown = ("reporter", "source_workload", "response_code", "response_flags")
        print("   " + " ".join(f"{k}={labels.get(k, '?')}" for k in shown) + f"  {value:g}")
    report.expect(total == report.sent, f"{report.sent} requests counted")
    status, _, body = get(admin + "/clusters")
    print(f"\nClusters: admin /clusters (HTTP {status}), per endpoint:")
    for line in body.decode().splitlines():
        if line.rsplit("::", 2)[-2] in {"rq_total", "rq_error", "health_flags"}:
            print("   " + line)
    report.expect(status == 200, "/clusters answered")


def main() -> int:
    a, b = DemoUpstream("a").start(), DemoUpstream("b").start()
    port, admin_port = free_port(), free_port()
    report = Report()
    proc: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="trellis-demo-") as tmp:
        config, log = Path(tmp, "bootstrap.yaml"), Path(tmp, "proxy.log")
        config.write_text(
            yaml.safe_dump(bootstrap(port, admin_port, a.port, b.port), sort_keys=False)
        )
        argv = [*trellis_command(), "proxy", "--bootstrap", str(config), "--log-level", "info"]
        print("Trellis proxy demo")
        print(f"   upstream a on 127.0.0.1:{a.port}, upstream b on 127.0.0.1:{b.port}")
        try:
            with log.open("wb") as sink:
                proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
            admin = f"http://127.0.0.1:{admin_port}"
            if not wait_ready(proc, admin + "/ready"):
                print(f"proxy did not become ready: {' '.join(argv)}\n" + log.read_text()[-3000:])
                return 1
            print(f"   proxy pid {proc.pid} on 127.0.0.1:{port}, admin on 127.0.0.1:{admin_port}\n")
            exercise(f"http://127.0.0.1:{port}", a, report)
            show_admin(admin, report)
        finally:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            a.stop()
            b.stop()
    if report.failures:
        print(f"\n{len(report.failures)} expectation(s) failed: " + "; ".join(report.failures))
        return 1
    print("\nAll expectations met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
