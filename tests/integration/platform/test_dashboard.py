"""Issue 6: the control plane's dashboard API over a real mesh with traffic.

A control plane scraping every second, `echo` and a `caller` started with
`trellis run` (see dashboard_procs). The graph, the per-service signals and
the proxies' scrape status come from the sidecars' real metrics; traces are
sent to the control plane's OTLP receiver over gRPC and over HTTP.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from trellis.xds.otlp_trace_pb2 import ExportTraceServiceResponse

from ..controlplane.mesh_procs import until
from .dashboard_procs import (
    CHROMIUM_MISSING,
    Mesh,
    artifacts_dir,
    error_of,
    get_json,
    headless_chromium,
    otlp_export,
    otlp_span,
    post_otlp_http,
    running_mesh,
)
from .test_run import requests_total

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("dashboard")) as started:
        yield started


def edges_by_pair(graph: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(edge["source"], edge["target"]): edge for edge in graph["edges"]}


def test_graph_shows_the_edges_with_their_signals(mesh: Mesh) -> None:
    graph = get_json(f"{mesh.api}/api/v1/graph?window=10s")
    kinds = {node["id"]: node["kind"] for node in graph["nodes"]}
    assert kinds == {
        "workload/default/caller": "workload",
        "service/default/echo": "service",
        "workload/default/echo-v1": "workload",
    }
    edges = edges_by_pair(graph)
    call = edges[("workload/default/caller", "service/default/echo")]
    answer = edges[("service/default/echo", "workload/default/echo-v1")]
    for edge in (call, answer):
        assert edge["rps"] > 1, edge  # the caller sends ~20/s; a scrape a second
        assert edge["success"] == 1.0 and edge["errors"] == 0
        assert edge["mtls"] == "yes"
        assert 0 < edge["p50"] <= edge["p90"] <= edge["p99"] < 5000
    assert graph["seconds"] > 0 and graph["window"] == 10.0
    (row,) = graph["rows"]
    assert (row["source"], row["destination"], row["service"], row["version"]) == (
        "caller",
        "echo-v1",
        "echo",
        "v1",
    )
    # The counts agree with what the receiving sidecar itself reports.
    admin = mesh.echo.sidecar().admin
    total = requests_total(int(admin.rsplit(":", 1)[1]), reporter="destination")
    assert 0 < row["requests"] <= total
    assert {scrape["proxy"] for scrape in graph["scrapes"]} == {"caller.default", "echo-v1.default"}
    assert all(scrape["ok"] for scrape in graph["scrapes"]), graph["scrapes"]
    # A namespace nobody is in shows nothing; a bad window is a clear error.
    assert get_json(f"{mesh.api}/api/v1/graph?namespace=elsewhere")["edges"] == []
    assert error_of(f"{mesh.api}/api/v1/graph?window=soon") == 400


def test_service_stats_are_time_series(mesh: Mesh) -> None:
    def echo_series() -> dict[str, Any] | None:
        answer = get_json(f"{mesh.api}/api/v1/services/stats?window=1m&step=2s")
        found = [item for item in answer["items"] if item["name"] == "echo"]
        return found[0] if found and len(found[0]["series"]) >= 3 else None

    echo = until(echo_series, 20, "three points of echo's signals")
    assert echo is not None
    assert echo["namespace"] == "default"
    assert echo["current"]["rps"] > 1 and echo["current"]["success"] == 1.0
    times = [point["t"] for point in echo["series"]]
    assert times == sorted(times)
    assert any(point["rps"] > 0 for point in echo["series"])


def test_the_api_is_behind_the_same_auth_and_documented(mesh: Mesh) -> None:
    rebound = {"host": "attacker.example"}  # loopback caller, foreign Host: refused
    for path in ("/api/v1/graph", "/api/v1/services/stats", "/api/v1/traces", "/api/v1/config"):
        assert error_of(f"{mesh.api}{path}", rebound) == 403, path
    paths = get_json(f"{mesh.api}/openapi.json")["paths"]
    for path in ("/api/v1/graph", "/api/v1/services/stats", "/api/v1/traces", "/v1/traces"):
        assert path in paths, path
    config = get_json(f"{mesh.api}/api/v1/config")
    kinds = {item["kind"] for item in config["items"]}
    assert {"ServiceEntry", "WorkloadEntry"} <= kinds


def test_otlp_traces_over_grpc_and_http(mesh: Mesh) -> None:
    trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    web = otlp_export(
        "web",
        otlp_span(trace_id, 1, None, "GET /checkout", 0, 40),
        otlp_span(trace_id, 2, 1, "cart.shop.svc.cluster.local:80/*", 5, 30),
    )
    cart = otlp_export("cart", otlp_span(trace_id, 3, 2, "GET /cart", 8, 28))
    with grpc.insecure_channel(f"127.0.0.1:{mesh.control.xds_port}") as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=type(web).SerializeToString,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        answer = export(web, timeout=5)
    assert not answer.HasField("partial_success")
    body = post_otlp_http(mesh.api, cart)
    assert not ExportTraceServiceResponse.FromString(body).HasField("partial_success")

    listed = get_json(f"{mesh.api}/api/v1/traces?service=cart")["items"]
    summary = next(item for item in listed if item["traceId"] == trace_id.hex())
    assert (summary["rootService"], summary["rootName"]) == ("web", "GET /checkout")
    assert summary["spanCount"] == 3 and summary["durationMs"] == 40.0
    assert summary["services"] == ["cart", "web"]
    trace = get_json(f"{mesh.api}/api/v1/traces/{trace_id.hex()}")
    parents = {span["spanId"][-1]: span["parentSpanId"] for span in trace["spans"]}
    assert parents == {"1": None, "2": "0000000000000001", "3": "0000000000000002"}

    assert error_of(f"{mesh.api}/api/v1/traces/{'0' * 31}") == 400
    assert error_of(f"{mesh.api}/api/v1/traces/{'e' * 32}") == 404
    as_json = {"content-type": "application/json"}
    assert error_of(f"{mesh.api}/v1/traces", as_json, b"{}") == 415
    garbage = {"content-type": "application/x-protobuf"}
    assert error_of(f"{mesh.api}/v1/traces", garbage, b"\xff\xff\xff") == 400


def test_the_dashboard_page_is_served_without_external_resources(
    mesh: Mesh, tmp_path: Path
) -> None:
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(f"{mesh.api}/", timeout=5) as response:
        assert response.url.endswith("/dashboard")
        page = response.read().decode()
    assert 'src="/dashboard/app.js"' in page and "http" not in page.replace("http-equiv", "")
    with urllib.request.urlopen(f"{mesh.api}/dashboard/app.js", timeout=5) as response:
        script = response.read().decode()
    assert "/api/v1/graph" in script and "https://" not in script


def _browser() -> Any:
    """Headless Chromium through its WebDriver; skips when the Debian packages are missing."""
    browser = headless_chromium()
    if browser is None:
        pytest.skip(CHROMIUM_MISSING)
    return browser


def test_dashboard_in_headless_chromium(mesh: Mesh, tmp_path: Path) -> None:
    """The page draws the mesh's edges with their rates, opens a trace's waterfall, and
    leaves a screenshot (tmp dir and test-artifacts/dashboard.png)."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.wait import WebDriverWait  # noqa: PLC0415

    # A real trace: the caller's sidecar (client span) -> echo's sidecar (server span).
    summary = until(partial(_real_trace, mesh), 15, "a trace from caller to echo")
    assert summary is not None
    trace_id = summary["traceId"]
    browser = _browser()
    try:
        browser.set_page_load_timeout(15)
        browser.get(f"{mesh.api}/dashboard")
        wait = WebDriverWait(browser, 15, poll_frequency=0.2)

        def busy_edges(driver: Any) -> list[Any]:
            found = driver.find_elements(By.CSS_SELECTOR, "#graph g.edge")
            return (
                found
                if found and all(float(e.get_attribute("data-rps")) > 0 for e in found)
                else []
            )

        edges = wait.until(busy_edges)
        pairs = {(e.get_attribute("data-source"), e.get_attribute("data-target")) for e in edges}
        assert pairs == {
            ("workload/default/caller", "service/default/echo"),
            ("service/default/echo", "workload/default/echo-v1"),
        }
        for edge in edges:
            assert edge.get_attribute("data-mtls") == "yes"
            assert edge.find_elements(By.CSS_SELECTOR, "g.lock")  # the lock icon is drawn
            label = " ".join(t.text for t in edge.find_elements(By.CSS_SELECTOR, "text.edge-label"))
            assert "rps" in label and "100%" in label and "p99" in label, label
        nodes = browser.find_elements(By.CSS_SELECTOR, "#graph g.node")
        assert {node.get_attribute("data-node-id") for node in nodes} == {
            "workload/default/caller",
            "service/default/echo",
            "workload/default/echo-v1",
        }
        rows = browser.find_elements(By.CSS_SELECTOR, "#edges tr.edge-row")
        assert [row.get_attribute("data-destination") for row in rows] == ["echo-v1"]
        graph_shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(graph_shot))

        browser.find_element(By.CSS_SELECTOR, "#tabs button[data-view=proxies]").click()
        proxies = wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#proxies tr.proxy[data-sync=synced]")
        )
        assert {row.get_attribute("data-proxy-id") for row in proxies} == {
            "caller.default",
            "echo-v1.default",
        }

        browser.find_element(By.CSS_SELECTOR, "#tabs button[data-view=traces]").click()
        row = wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, f"tr.trace[data-trace-id='{trace_id}']")
        )
        row.click()
        bars = wait.until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "#waterfall .span-bar")
                if len(d.find_elements(By.CSS_SELECTOR, "#waterfall .span-bar")) == 2
                else []
            )
        )
        parents = {
            bar.get_attribute("data-span-id"): bar.get_attribute("data-parent-id") for bar in bars
        }
        roots = [span for span, parent in parents.items() if not parent]
        assert len(roots) == 1, parents  # the caller's client span
        (child,) = set(parents) - set(roots)
        assert parents[child] == roots[0], parents  # echo's server span under it
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", bars[0])
        trace_shot = tmp_path / "dashboard-trace.png"
        assert browser.save_screenshot(str(trace_shot))
    finally:
        browser.quit()
    artifacts = artifacts_dir()
    shutil.copy(graph_shot, artifacts / "dashboard.png")
    shutil.copy(trace_shot, artifacts / "dashboard-trace.png")


def _real_trace(mesh: Mesh) -> dict[str, Any] | None:
    """A recent trace the sidecars sent the control plane, from caller to echo."""
    items = get_json(f"{mesh.api}/api/v1/traces?limit=20")["items"]
    wanted = {"caller.default", "echo.default"}
    found: dict[str, Any] | None = next(
        (item for item in items if set(item["services"]) == wanted and item["spanCount"] == 2),
        None,
    )
    return found


def _trellis(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trellis.cli.main", *args, "--server", mesh.api]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_trellis_top_and_dashboard(mesh: Mesh) -> None:
    once = _trellis(mesh, "top", "--once", "--window", "10s")
    assert once.returncode == 0, once.stderr
    header, *lines = once.stdout.splitlines()
    assert header.split()[:5] == ["SOURCE", "DESTINATION", "SERVICE", "VERSION", "REQ/S"]
    (line,) = lines
    cells = line.split()
    assert cells[:4] == ["caller.default", "echo-v1.default", "echo.default", "v1"]
    assert float(cells[4]) > 0 and cells[5] == "100.0%" and cells[-1] == "yes"

    rows = json.loads(_trellis(mesh, "top", "-o", "json", "-n", "default").stdout)
    assert [(row["source"], row["destination"]) for row in rows] == [("caller", "echo-v1")]
    elsewhere = _trellis(mesh, "top", "--once", "-n", "elsewhere")
    assert elsewhere.returncode == 0 and "No traffic" in elsewhere.stdout
    bad = _trellis(mesh, "top", "--once", "--window", "soon")
    assert bad.returncode == 2 and "--window" in bad.stderr

    shown = _trellis(mesh, "dashboard")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"{mesh.api}/dashboard"
