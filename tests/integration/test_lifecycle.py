"""Process lifecycle: admin endpoints, /quitquitquit, SIGTERM drain, bad bootstraps."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from .bootstrap import Json, free_port, simple_http
from .client import Response, request
from .harness import ProxyFactory, UpstreamFactory
from .proxyproc import proxy_command
from .upstream import HttpUpstream


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True


def test_ready(start_proxy: ProxyFactory, upstream: HttpUpstream) -> None:
    proxy = start_proxy(simple_http(free_port(), free_port(), [upstream.port]))
    status, body = proxy.admin("GET", "/ready")
    assert (status, body.strip()) == (200, "LIVE")
    assert request(proxy.listener_port("http"), "GET", "/").status == 200


def test_config_dump_shows_clusters_and_listeners(
    start_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    up = make_upstream()
    port = free_port()
    proxy = start_proxy(simple_http(free_port(), port, [up.port]))
    status, text = proxy.admin("GET", "/config_dump")
    assert status == 200
    assert '"backend"' in text
    assert str(up.port) in text
    assert str(port) in text
    proxy.admin_json("/config_dump")  # it is JSON


def test_clusters_lists_endpoints_with_counters(
    start_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    a, b = make_upstream("a"), make_upstream("b")
    port = free_port()
    proxy = start_proxy(simple_http(free_port(), port, [a.port, b.port]))
    for _ in range(6):
        assert request(port, "GET", "/").status == 200
    assert request(port, "GET", "/status/503").status == 503
    status, text = proxy.admin("GET", "/clusters")
    assert status == 200
    totals = {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"^backend::127\.0\.0\.1:(\d+)::rq_total::(\d+)$", text, re.MULTILINE)
    }
    assert set(totals) == {a.port, b.port}, text
    assert totals[a.port] == len(a.requests) and totals[b.port] == len(b.requests), text
    assert sum(totals.values()) == 7


def test_quitquitquit_exits(start_proxy: ProxyFactory, upstream: HttpUpstream) -> None:
    proxy = start_proxy(simple_http(free_port(), free_port(), [upstream.port]))
    proxy.expect_exit = True
    status, _ = proxy.admin("POST", "/quitquitquit")
    assert status == 200
    assert proxy.wait_exit(8) == 0, proxy.describe()


def test_quitquitquit_needs_post(start_proxy: ProxyFactory, upstream: HttpUpstream) -> None:
    """A stray GET (a browser, a crawler) must not stop the proxy."""
    proxy = start_proxy(simple_http(free_port(), free_port(), [upstream.port]))
    status, _ = proxy.admin("GET", "/quitquitquit")
    assert status != 200
    time.sleep(0.3)
    assert proxy.alive(), "GET /quitquitquit stopped the proxy"


def test_prometheus_content_type(start_proxy: ProxyFactory, upstream: HttpUpstream) -> None:
    proxy = start_proxy(simple_http(free_port(), free_port(), [upstream.port]))
    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=5)
    try:
        conn.request("GET", "/stats/prometheus")
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert (resp.getheader("content-type") or "").startswith("text/plain"), resp.getheaders()


def test_sigterm_drains_in_flight_requests(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    port = free_port()
    proxy = start_proxy(
        simple_http(free_port(), port, [upstream.port], hcm_extra={"drain_timeout": "5s"})
    )
    proxy.expect_exit = True
    with ThreadPoolExecutor(10) as pool:
        futures = [
            pool.submit(request, port, "GET", f"/delay/1.5?i={i}", timeout=10) for i in range(10)
        ]
        deadline = time.monotonic() + 5
        while upstream.active < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upstream.active == 10, "the slow requests did not all reach the upstream"
        sent_term = time.monotonic()
        proxy.signal(signal.SIGTERM)
        refused_at = None
        while time.monotonic() - sent_term < 1.0:
            if _refused(port):
                refused_at = time.monotonic() - sent_term
                break
            time.sleep(0.02)
        results: list[Response] = [f.result(timeout=10) for f in futures]
    assert [r.status for r in results] == [200] * 10, [str(r) for r in results]
    assert refused_at is not None, "the listener still accepted connections 1 s after SIGTERM"
    rc = proxy.wait_exit(6)
    exited_after = time.monotonic() - sent_term
    assert rc == 0, f"exit status {rc} after SIGTERM\n{proxy.describe()}"
    assert exited_after < 5.5, f"exited {exited_after:.1f}s after SIGTERM (drain timeout 5s)"


def test_sigterm_drain_timeout_bounds_exit(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    port = free_port()
    proxy = start_proxy(
        simple_http(free_port(), port, [upstream.port], hcm_extra={"drain_timeout": "1s"})
    )
    proxy.expect_exit = True
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(request, port, "GET", "/delay/8", timeout=15)
        deadline = time.monotonic() + 5
        while upstream.active < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        sent_term = time.monotonic()
        proxy.signal(signal.SIGTERM)
        rc = proxy.wait_exit(5)
        took = time.monotonic() - sent_term
        with contextlib.suppress(OSError):
            fut.result(timeout=10)  # cut at the drain deadline: that is the point
    assert rc is not None, "proxy still running 5s after SIGTERM with drain_timeout 1s"
    assert took < 2.5, f"exited {took:.1f}s after SIGTERM with drain_timeout 1s"


def _bad(config: Json, tmp_path: Path, suffix: str = ".json") -> tuple[int | None, str]:
    path = tmp_path / f"bad{suffix}"
    path.write_text(yaml.safe_dump(config) if suffix == ".yaml" else json.dumps(config))
    try:
        done = subprocess.run(proxy_command(path), capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"proxy kept running with a bad bootstrap: {exc.stderr!r}")
    return done.returncode, done.stderr.decode(errors="replace")


def _base() -> Json:
    return simple_http(free_port(), free_port(), [free_port()])


def _set(config: Json, path: str, value: Any) -> Json:
    node: Any = config
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    node[keys[-1]] = value
    return config


CLUSTER = "static_resources.clusters.0"
HCM = "static_resources.listeners.0.filter_chains.0.filters.0.typed_config"
ROUTE = f"{HCM}.route_config.virtual_hosts.0.routes.0.route"


@pytest.mark.parametrize(
    ("path", "value", "names"),
    [
        (f"{CLUSTER}.conect_timeout", "1s", ["conect_timeout"]),
        (f"{CLUSTER}.lb_policy", "MAGLEV", ["lb_policy"]),
        (
            f"{CLUSTER}.outlier_detection",
            {"failure_percentage_threshold": 50},
            ["failure_percentage_threshold"],
        ),
        (f"{ROUTE}.request_mirror_policies", [{"cluster": "backend"}], ["request_mirror_policies"]),
        (f"{ROUTE}.cluster", "no-such-cluster", ["no-such-cluster"]),
        (f"{HCM}.http_filters", [], ["http_filters"]),
        (f"{HCM}.codec_type", "HTTP3", ["codec_type"]),
        ("static_resources.listeners.0.address", {"pipe": {"path": "/tmp/x.sock"}}, ["pipe"]),
    ],
)
def test_bad_bootstrap_rejected_naming_the_field(
    tmp_path: Path, path: str, value: Any, names: list[str]
) -> None:
    rc, err = _bad(_set(_base(), path, value), tmp_path)
    assert rc in (1, 2), f"exit status {rc}\n{err}"
    field_path = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", path)  # clusters.0.x -> clusters[0].x
    assert field_path in err, f"stderr does not name the field path {field_path!r}:\n{err}"
    for name in names:
        assert name in err, f"stderr does not name {name!r}:\n{err}"
    assert "Traceback" not in err, err


def test_bad_bootstrap_yaml_syntax(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("static_resources:\n  listeners: [\n")
    done = subprocess.run(proxy_command(path), capture_output=True, timeout=20, check=False)
    assert done.returncode in (1, 2), done
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    assert done.stderr.strip(), "no error message"


def test_missing_bootstrap_file(tmp_path: Path) -> None:
    done = subprocess.run(
        proxy_command(tmp_path / "nope.yaml"), capture_output=True, timeout=20, check=False
    )
    assert done.returncode in (1, 2), done
    assert b"nope.yaml" in done.stderr, done.stderr.decode()
    assert b"Traceback" not in done.stderr


def test_yaml_bootstrap_accepted(tmp_path: Path, upstream: HttpUpstream) -> None:
    """The same bootstrap as YAML (the proxy fixture writes JSON)."""
    port, admin = free_port(), free_port()
    config = simple_http(admin, port, [upstream.port])
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    with (tmp_path / "yaml.stderr").open("wb") as err:
        proc = subprocess.Popen(proxy_command(path), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if request(port, "GET", "/", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "yaml.stderr").read_text()
        assert request(port, "GET", "/").body == b"ok from upstream"
    finally:
        proc.terminate()
        proc.wait(10)


def test_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "trellis"
    assert script.exists(), f"console script {script} missing"
    done = subprocess.run(
        [str(script), "proxy", "--help"], capture_output=True, timeout=20, check=False
    )
    assert done.returncode == 0, done
    assert b"--bootstrap" in done.stdout
