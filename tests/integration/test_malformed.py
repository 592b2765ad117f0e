"""Bad input over real sockets: 4xx, connection closed, nothing smuggled, proxy still alive."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .bootstrap import free_port, simple_http
from .client import raw_exchange, request
from .harness import ProxyFactory, proxy_manager, upstream_manager
from .malformed_corpus import CASES, HOST, Case
from .proxyproc import ProxyProcess
from .upstream import HttpUpstream


@dataclass(frozen=True, slots=True)
class Env:
    proxy: ProxyProcess
    port: int
    up: HttpUpstream


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("malformed")
    with upstream_manager() as make_up, proxy_manager(request.config, workdir) as start:
        up = make_up("up")
        port = free_port()
        hcm = {"max_request_headers_kb": 16, "request_headers_timeout": "1s"}
        config = simple_http(free_port(), port, [up.port], hcm_extra=hcm)
        yield Env(start(config, name="malformed"), port, up)


def _still_serving(env: Env) -> None:
    assert env.proxy.alive(), f"proxy died\n{env.proxy.describe()}"
    resp = request(env.port, "GET", "/after-case", timeout=5)
    assert resp.status == 200, f"normal request after the bad one: {resp}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_request(env: Env, case: Case) -> None:
    env.up.clear()
    result = raw_exchange(env.port, case.data, timeout=3)
    status = result.status
    assert status in case.statuses, (
        f"expected one of {sorted(case.statuses)}, got {status}: {result}"
    )
    if status is not None and status >= 400:
        assert result.closed, f"connection left open after {status}: {result}"
    _still_serving(env)
    seen = [r for r in env.up.requests if r.path != "/after-case"]
    assert not [r for r in seen if "smuggled" in r.target], (
        f"smuggled request reached the upstream: {seen}"
    )
    if not case.may_forward:
        assert seen == [], f"rejected request reached the upstream: {seen}"


def test_slow_request_headers_time_out(env: Env) -> None:
    """Slowloris: one header byte every 0.2 s; request_headers_timeout is 1 s."""
    env.up.clear()
    start = time.monotonic()
    answer = b""
    closed_at = None
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + HOST + b"X-Slow: ")
        sock.settimeout(0.2)
        while time.monotonic() - start < 5:
            try:
                sock.sendall(b"a")
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - start
                break
            answer += data
            if not data:
                closed_at = time.monotonic() - start
                break
    assert closed_at is not None, "connection still open after 5 s of trickled headers"
    assert 0.8 <= closed_at <= 2.5, f"closed after {closed_at:.2f}s (request_headers_timeout 1s)"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    assert env.up.requests == []
    _still_serving(env)


_PREFIXES = [
    b"",
    b"GET / HTTP/1.1\r\n" + HOST,
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\n",
]
_TOKENS = [
    b"GET", b"POST", b" ", b"/", b"HTTP/1.1", b"\r\n", b"\n", b"\r", b":", b"Host", b"svc",
    b"Content-Length", b"Transfer-Encoding", b"chunked", b"0", b"-1", b"ffffffffffffffff",
    b"\x00", b"\t", b",", b"Connection", b"Upgrade", b"Expect", b"100-continue",
]  # fmt: skip
_FUZZ_INPUT = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda p, b: p + b, st.sampled_from(_PREFIXES), st.binary(max_size=300)),
    st.builds(
        lambda p, t: p + b"".join(t),
        st.sampled_from(_PREFIXES),
        st.lists(st.sampled_from(_TOKENS), max_size=40),
    ),
)


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=_FUZZ_INPUT)
def test_random_bytes_never_kill_the_proxy(env: Env, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", env.port), timeout=2) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.1)
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    assert env.proxy.alive(), f"proxy died on input {data!r}\n{env.proxy.describe()}"


def test_serving_after_fuzz(env: Env) -> None:
    _still_serving(env)


# --- connection limit ------------------------------------------------------------------

_OVERLOAD = {
    "resource_monitors": [
        {
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 4,
            },
        }
    ]
}


def test_max_connections_limit(start_proxy: ProxyFactory, upstream: HttpUpstream) -> None:
    """Envoy's overload manager `global_downstream_max_connections` monitor, limit 4."""
    port = free_port()
    config = simple_http(free_port(), port, [upstream.port])
    config["overload_manager"] = _OVERLOAD
    start_proxy(config)
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    try:
        for sock in held:  # each of the four is really served
            sock.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200"), (
                "a connection under the limit was not served"
            )
        extra = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", timeout=3)
        assert extra.closed and extra.status in (None, 503), f"fifth connection was served: {extra}"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("no connection accepted after the held ones were closed")
