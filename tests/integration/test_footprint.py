"""The sidecar's memory budget (DESIGN.md §8, 40 MB) depends on what the process holds:
a proxy with a static bootstrap must not load the gRPC/h2 stack (only ADS, the CA client
and an OTLP/gRPC exporter need it), the tracer and its OTLP messages (only connection
managers with `tracing` need them), modules only an error path or `--help` needs (difflib,
shutil with bz2 and lzma), pathlib and urllib.parse (~0.5 MiB: files are read with `open`,
an admin query is parsed only when one comes), the Envoy extension messages its config does
not name (RBAC with CEL, TCP proxy, access loggers, OpenTelemetry: ~0.4 MiB), the admin API's
messages until a /config_dump or /certs is asked for (~0.3 MiB), the idna codec
(stringprep, unicodedata: ~0.4 MiB; an ASCII SNI skips it), nor start threads (uvloop
resolves names on libuv's thread pool, four threads that then stay for good)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from .bootstrap import free_port, simple_http
from .client import request
from .harness import ProxyFactory
from .mesh_pair import client_bootstrap, server_bootstrap
from .pki import TestCa
from .upstream import HttpUpstream

# Runs the real `trellis proxy` command line in this interpreter and, at exit, prints
# which of the modules the budget cares about it had loaded.
_RUNNER = """
import atexit, json, sys
WATCHED = ("h2", "hpack", "hyperframe", "grpc", "pydantic", "cryptography", "yaml", "click",
           "shutil", "bz2", "lzma", "difflib", "pathlib", "urllib", "trellis.runtime.grpc_stream",
           "trellis.runtime.ca_client", "trellis.runtime.identity", "trellis.runtime.tracing",
           "trellis.runtime.trace_export", "trellis.runtime.otlp", "trellis.xds.otlp_trace_pb2",
           "envoy.config.rbac", "envoy.extensions.filters.network.tcp_proxy", "google.api",
           "envoy.extensions.access_loggers", "envoy.config.trace.v3.opentelemetry_pb2",
           "stringprep", "unicodedata", "envoy.admin")
atexit.register(lambda: print(json.dumps(sorted(
    name for name in sys.modules if name in WATCHED or name.split(".")[0] in WATCHED))))
from trellis.proxy.cli import main
sys.exit(main(sys.argv[1:]))
"""

_READY_TIMEOUT = 15.0


def _admin(port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request(method, path)
        status = conn.getresponse().status
    finally:
        conn.close()
    return status


def _wait_ready(proc: subprocess.Popen[bytes], admin_port: int) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the proxy exited before it was ready"
        try:
            if _admin(admin_port, "GET", "/ready") == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the proxy was not ready within {_READY_TIMEOUT}s")


def _admin_port(config: dict[str, object]) -> int:
    admin = config["admin"]
    assert isinstance(admin, dict)
    return int(admin["address"]["socket_address"]["port_value"])


def _run_watched(
    config: dict[str, object],
    tmp_path: Path,
    exercise: Callable[[int], None],
    extra: Sequence[str] = (),
) -> list[str]:
    """Run `trellis proxy` on `config`, call `exercise(pid)` once it is ready, stop it
    through the admin and return the watched modules it had loaded."""
    admin_port = _admin_port(config)
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps(config))
    argv = [sys.executable, "-c", _RUNNER, "--bootstrap", str(bootstrap), "-l", "warning", *extra]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_ready(proc, admin_port)
        exercise(proc.pid)
        assert _admin(admin_port, "POST", "/quitquitquit") == 200
        out, err = proc.communicate(timeout=15.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5.0)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    loaded: list[str] = json.loads(out.decode().strip().splitlines()[-1])
    return loaded


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_static_proxy_runs_one_thread_without_the_grpc_stack(
    upstream: HttpUpstream, tmp_path: Path
) -> None:
    admin_port, listen_port = free_port(), free_port()
    stats_port, health_port = free_port(), free_port()
    # Istio's agent ports too (15020, 15021): servers of their own, no more threads or imports.
    extra = ["--stats-port", str(stats_port), "--health-port", str(health_port)]

    def exercise(pid: int) -> None:
        assert request(listen_port, "GET", "/").status == 200
        assert _admin(stats_port, "GET", "/stats/prometheus") == 200
        assert _admin(health_port, "GET", "/healthz/ready") == 200
        threads = os.listdir(f"/proc/{pid}/task")
        assert len(threads) == 1, f"expected only the main thread, found {len(threads)}"

    config = simple_http(admin_port, listen_port, [upstream.port])
    loaded = _run_watched(config, tmp_path, exercise, extra)
    assert loaded == [], f"a static proxy loaded {loaded}"


def test_mtls_client_sidecar_sends_sni_without_the_idna_codec(
    start_proxy: ProxyFactory, upstream: HttpUpstream, tmp_path: Path
) -> None:
    """The client of a mesh pair (mTLS with an SNI, as Istio configures every outbound
    cluster) serves through its server sidecar without loading what the static proxy
    must not load, the idna codec included."""
    ca = TestCa()
    server_port, client_port = free_port(), free_port()
    start_proxy(server_bootstrap(ca, upstream.port, server_port), name="echo-sidecar")

    def exercise(pid: int) -> None:
        assert request(client_port, "GET", "/", host="echo").status == 200

    config = client_bootstrap(ca, server_port, client_port)
    loaded = _run_watched(config, tmp_path, exercise)
    assert loaded == [], f"an mTLS client sidecar loaded {loaded}"


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read().decode().split("\0")[:-1]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("optimize", ["", "0"])
def test_trellis_proxy_replaces_itself_with_an_optimized_interpreter(
    upstream: HttpUpstream, tmp_path: Path, optimize: str
) -> None:
    """`trellis proxy` runs as `python -OO -X no_debug_ranges -m trellis.proxy` in the same
    process (the memory budget: no docstrings, asserts or column tables), unless
    TRELLIS_PROXY_OPTIMIZE=0."""
    admin_port, listen_port = free_port(), free_port()
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps(simple_http(admin_port, listen_port, [upstream.port])))
    argv = [sys.executable, "-m", "trellis.cli.main", "proxy", "--bootstrap", str(bootstrap)]
    environ = {**os.environ, "TRELLIS_PROXY_OPTIMIZE": optimize}
    proc = subprocess.Popen(argv, env=environ, stdin=subprocess.DEVNULL)
    try:
        _wait_ready(proc, admin_port)
        assert request(listen_port, "GET", "/").status == 200
        running = _cmdline(proc.pid)
        if optimize == "0":
            assert running == argv
        else:
            flags = ["-OO", "-X", "no_debug_ranges"]
            assert running == [sys.executable, *flags, "-m", "trellis.proxy", *argv[4:]]
        assert _admin(admin_port, "POST", "/quitquitquit") == 200
        assert proc.wait(timeout=15.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5.0)
