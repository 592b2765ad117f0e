"""A small mesh with steady traffic for the dashboard's tests, and OTLP requests to send it.

A control plane that scrapes every second; a service `echo` (one replica, v1)
and a `caller` that GETs it through its sidecar (mTLS) about every 10 ms, both
started with `trellis run`. Traces are built from opentelemetry-proto messages.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from trellis.xds.otlp_trace_pb2 import (
    AnyValue,
    ExportTraceServiceRequest,
    KeyValue,
    Resource,
    ResourceSpans,
    ScopeSpans,
    Span,
)

from ..controlplane.mesh_procs import ControlPlane, until
from .launch_procs import Launched, app_command, serving

CALLER_SECONDS = 300  # longer than the tests; the caller is stopped at teardown


@dataclass
class Mesh:
    control: ControlPlane
    echo: Launched
    caller: Launched
    workdir: Path
    extra: list[Launched] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.control.api_port}"


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def error_of(url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> int:
    """The status of a request that is expected to fail."""
    request = urllib.request.Request(url, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(request, timeout=5):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def busy_edge(mesh: Mesh, window: str = "10s", least: float = 0.0) -> dict[str, Any] | None:
    """The graph once its caller -> echo edge shows more than `least` requests/s, else None."""
    graph: dict[str, Any] = get_json(f"{mesh.api}/api/v1/graph?window={window}")
    for edge in graph["edges"]:
        if edge["source"] == "workload/default/caller" and edge["rps"] > least:
            return graph
    return None


@contextmanager
def running_mesh(workdir: Path) -> Iterator[Mesh]:
    """The mesh of the module docstring, with traffic flowing; everything stopped after."""
    # The sidecars trace every request into the control plane's own trace store.
    control = ControlPlane(
        workdir / "cp",
        "--scrape-interval", "1s",
        "--tracing-otlp-address", "self",
        "--tracing-sampling", "100",
    ).start()  # fmt: skip
    started: list[Launched] = []

    def launch(name: str, args: list[str], command: list[str]) -> Launched:
        item = Launched(control, workdir, name, args, command).start()
        started.append(item)
        return item

    try:
        echo = launch(
            "echo-v1", ["--service", "echo", "--version", "v1"], app_command("echo_server.py", "v1")
        )
        echo.ready()
        until(partial(serving, control, echo.name), 15, "echo-v1 serving")
        caller = launch(
            "caller", [], app_command("caller.py", "http://echo/hello", str(CALLER_SECONDS), "0")
        )
        caller.ready()
        mesh = Mesh(control, echo, caller, workdir)
        # Steady traffic (the caller's first requests wait for certificates and connections).
        steady = partial(busy_edge, mesh, "5s", 2.0)
        until(steady, 30, f"traffic in the graph\n{control.log_text()[-2000:]}")
        yield mesh
    finally:
        for item in reversed(started):
            item.kill()
        control.stop()


def otlp_span(
    trace_id: bytes, span_id: int, parent: int | None, name: str, start_ms: float, end_ms: float
) -> Span:
    base = 1_700_000_000_000_000_000
    return Span(
        trace_id=trace_id,
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent is not None else b"",
        name=name,
        kind=Span.SPAN_KIND_SERVER if parent is None or span_id % 2 else Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=base + int(start_ms * 1e6),
        end_time_unix_nano=base + int(end_ms * 1e6),
        attributes=[KeyValue(key="http.method", value=AnyValue(string_value="GET"))],
    )


def otlp_export(service: str, *spans: Span) -> ExportTraceServiceRequest:
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
    )
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=list(spans))])
        ]
    )


def post_otlp_http(api: str, request: ExportTraceServiceRequest) -> bytes:
    """POST /v1/traces (OTLP/HTTP protobuf); the raw ExportTraceServiceResponse."""
    http_request = urllib.request.Request(
        f"{api}/v1/traces",
        data=request.SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
        method="POST",
    )
    with urllib.request.urlopen(http_request, timeout=5) as response:
        assert response.headers["content-type"] == "application/x-protobuf"
        body: bytes = response.read()
        return body


def artifacts_dir() -> Path:
    """Where screenshots are copied for people to look at: test-artifacts/ (ignored by git)."""
    root = Path(
        os.environ.get("TRELLIS_TEST_ARTIFACTS", Path(__file__).parents[3] / "test-artifacts")
    )
    root.mkdir(parents=True, exist_ok=True)
    return root


CHROMIUM_MISSING = "needs Debian's chromium and chromium-driver (make test installs them as root)"


def headless_chromium() -> Any:
    """Headless Chromium through its WebDriver (selenium), or None without the Debian
    packages `chromium` and `chromium-driver`."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        return None
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,900")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))
