"""HTTP/1.1 edge cases: ordering, early closes on either side, odd framing, body replay, load."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from .bootstrap import free_port, simple_http
from .client import read_until_closed, request, send
from .harness import ProxyFactory, proxy_manager, upstream_manager
from .proxyproc import ProxyProcess, delta
from .upstream import HttpUpstream


@dataclass(frozen=True, slots=True)
class Env:
    proxy: ProxyProcess
    port: int
    up: HttpUpstream


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("edges")
    with upstream_manager() as make_up, proxy_manager(request.config, workdir) as start:
        up = make_up("up")
        port = free_port()
        retry = {"retry_policy": {"retry_on": "5xx", "num_retries": 1}}
        config = simple_http(free_port(), port, [up.port], route_action=retry)
        yield Env(start(config, name="edges"), port, up)


@pytest.fixture(autouse=True)
def _clear(env: Env) -> None:
    env.up.clear()


def test_pipelined_slow_then_fast_stay_in_order(env: Env) -> None:
    reqs = b"GET /delay/0.3 HTTP/1.1\r\nHost: svc\r\n\r\n"
    reqs += b"GET /status/201 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(reqs)
        result = read_until_closed(sock, 5)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", result.data) == [b"200", b"201"], result


def test_client_connection_close_is_honoured(env: Env) -> None:
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        result = read_until_closed(sock, 3)
    assert result.status == 200 and result.closed, result


def test_downstream_disconnect_is_dc(env: Env) -> None:
    before = env.proxy.samples()
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(b"GET /delay/1 HTTP/1.1\r\nHost: svc\r\n\r\n")
        deadline = time.monotonic() + 3
        while env.up.active < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + 3
    while True:
        after = env.proxy.samples()
        grown = delta(before, after, "istio_requests_total", response_flags="DC")
        if grown or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert grown == 1, "a request whose client went away was not counted with response flag DC"
    assert request(env.port, "GET", "/").status == 200


@pytest.mark.parametrize("kind", ["truncate", "truncate-chunked"])
def test_truncated_upstream_response_is_not_made_complete(env: Env, kind: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=5)
    try:
        conn.request("GET", f"/raw/{kind}/400000", headers={"Host": "svc"})
        resp = conn.getresponse()
        if resp.status == 503:
            return  # cut before the headers went out: a local reply is right too
        assert resp.status == 200
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            body = resp.read()
            pytest.fail(f"the client got a complete-looking body of {len(body)} bytes")
    finally:
        conn.close()


def test_close_delimited_upstream_body_arrives_whole(env: Env) -> None:
    resp = request(env.port, "GET", "/raw/eof-body/300000")
    assert resp.status == 200
    assert resp.body == b"r" * 300000


@pytest.mark.parametrize("kind", ["dup-cl", "bad-status"])
def test_malformed_upstream_response_becomes_a_local_error(env: Env, kind: str) -> None:
    resp = request(env.port, "GET", f"/raw/{kind}/10")
    assert resp.status in (502, 503), f"an ambiguous upstream response was passed on: {resp}"
    assert request(env.port, "GET", "/").status == 200


@pytest.mark.parametrize("kind", ["spurious-100", "early-hints"])
def test_interim_upstream_responses_then_final(env: Env, kind: str) -> None:
    resp = request(env.port, "GET", f"/raw/{kind}/7")
    assert (resp.status, resp.body) == (200, b"r" * 7), resp


def test_response_with_both_framings_uses_chunked_or_fails(env: Env) -> None:
    resp = request(env.port, "GET", "/raw/cl-te/9")
    assert resp.status in (200, 502, 503), resp
    if resp.status == 200:
        assert resp.body == b"r" * 9, resp


def test_upstream_connection_close_is_not_reused(env: Env) -> None:
    for i in range(10):
        first = request(env.port, "GET", "/?close=1")
        second = request(env.port, "GET", "/")
        assert (first.status, second.status) == (200, 200), f"round {i}: {first} / {second}"


def test_h2c_upgrade_request_is_served_as_http11(env: Env) -> None:
    """What `curl --http2 http://...` sends; Envoy ignores the h2c upgrade."""
    headers = {
        "Connection": "Upgrade, HTTP2-Settings",
        "Upgrade": "h2c",
        "HTTP2-Settings": "AAMAAABkAAQAAP__",
    }
    resp = request(env.port, "GET", "/", headers=headers)
    assert resp.status == 200, resp
    (seen,) = env.up.requests
    assert seen.header("upgrade") is None and seen.header("http2-settings") is None, seen.headers


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "OPTIONS", "PROPFIND"])
def test_other_methods_are_forwarded(env: Env, method: str) -> None:
    """Standard and WebDAV methods pass (Envoy, like llhttp, refuses unknown ones by default)."""
    resp = request(env.port, method, "/echo", body=b"data")
    assert (resp.status, resp.body) == (200, b"data"), resp
    (seen,) = env.up.requests
    assert seen.method == method


@pytest.mark.parametrize(
    "chunks",
    [
        b"5;name=value\r\nhello\r\n0\r\n\r\n",
        b"0005\r\nhello\r\n0\r\n\r\n",
        b"A\r\nhellohello\r\n0\r\n\r\n",
    ],
    ids=["extension", "leading-zeros", "upper-hex"],
)
def test_unusual_but_valid_chunking(env: Env, chunks: bytes) -> None:
    raw = b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n"
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(raw + b"Connection: close\r\n\r\n" + chunks)
        result = read_until_closed(sock, 5)
    assert result.status == 200, result
    assert result.data.endswith(b"hello"), result


def test_head_on_chunked_upstream_response(env: Env) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=5)
    try:
        head = send(conn, "HEAD", "/bytes/100?chunked=1")
        assert (head.status, head.body) == (200, b""), head
        after = send(conn, "GET", "/bytes/3")
        assert (after.status, after.body) == (200, b"xxx"), after
    finally:
        conn.close()


def test_pipelined_after_local_404(env: Env) -> None:
    reqs = b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n"  # routed
    reqs += b"GET /status/202 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(reqs)
        result = read_until_closed(sock, 5)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", result.data) == [b"200", b"202"], result


def test_large_response_header_passes(env: Env) -> None:
    resp = request(env.port, "GET", "/bigheader/40000")
    assert resp.status == 200, resp
    assert resp.header("x-big") == "h" * 40000


def test_204_has_no_body_and_connection_stays_usable(env: Env) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=5)
    try:
        first = send(conn, "GET", "/status/204")
        assert (first.status, first.body) == (204, b"")
        second = send(conn, "GET", "/bytes/5")
        assert (second.status, second.body) == (200, b"xxxxx")
    finally:
        conn.close()


def test_chunked_request_with_trailers(env: Env) -> None:
    raw = (
        b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(raw)
        result = read_until_closed(sock, 5)
    assert result.status == 200, result
    (seen,) = env.up.requests
    assert seen.body == b"hello world"


def test_request_body_replayed_on_retry(env: Env) -> None:
    body = uuid.uuid4().bytes * 6400  # 100 KiB
    resp = request(env.port, "POST", f"/flaky/{uuid.uuid4().hex}/1/status/503", body=body)
    assert resp.status == 200, resp
    first, second = env.up.requests
    assert first.body == body and second.body == body


def test_body_over_retry_buffer_is_streamed_not_retried(env: Env) -> None:
    """Bodies beyond the retry buffer (1 MiB per connection by default) are not held for replay."""
    size = 3 * 1024 * 1024
    resp = request(env.port, "POST", f"/flaky/{uuid.uuid4().hex}/1/status/503", body=b"B" * size)
    assert resp.status == 503, resp
    (seen,) = env.up.requests
    assert seen.body_length == size


def test_concurrent_keep_alive_clients_get_their_own_answers(env: Env) -> None:
    def client(worker: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
        try:
            for i in range(25):
                body = f"worker {worker} request {i} {uuid.uuid4()}".encode()
                resp = send(conn, "POST", "/echo", body=body)
                assert (resp.status, resp.body) == (200, body), (
                    f"answer for another request: {resp}"
                )
        finally:
            conn.close()
        return 25

    with ThreadPoolExecutor(20) as pool:
        assert sum(pool.map(client, range(20))) == 500
    assert len(env.up.requests) == 500


def test_sigterm_with_only_idle_connections_exits_at_once(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    port = free_port()
    proxy = start_proxy(
        simple_http(free_port(), port, [upstream.port], hcm_extra={"drain_timeout": "5s"})
    )
    proxy.expect_exit = True
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        answer = b""
        while not answer.endswith(b"ok from upstream"):
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        sent = time.monotonic()
        proxy.signal(signal.SIGTERM)
        idle = read_until_closed(sock, 6)
        assert idle.closed and idle.data == b"", f"idle keep-alive connection during drain: {idle}"
    assert proxy.wait_exit(6) == 0, proxy.describe()
    took = time.monotonic() - sent
    assert took < 1.5, f"nothing was in flight, yet exiting took {took:.1f}s"
