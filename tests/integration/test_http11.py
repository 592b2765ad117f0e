"""HTTP/1.1 through the proxy: keep-alive, pooling, framing, headers, explicit-proxy form."""

from __future__ import annotations

import http.client
import re
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .bootstrap import bootstrap, cluster, free_port, http_listener, route, virtual_host
from .client import read_until_closed, request, send, status_of
from .harness import proxy_manager, upstream_manager
from .proxyproc import ProxyProcess
from .upstream import HttpUpstream

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class Env:
    proxy: ProxyProcess
    port: int  # default HCM settings
    remote_port: int  # use_remote_address: true
    up: HttpUpstream


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("http11")
    with upstream_manager() as make_up, proxy_manager(request.config, workdir) as start:
        up = make_up("up")
        port, remote_port = free_port(), free_port()
        vhosts = [
            virtual_host(
                "absolute",
                [route("backend")],
                ["absolute.test"],
                response_headers_to_add=[{"header": {"key": "x-vhost", "value": "absolute"}}],
            ),
            virtual_host("all", [route("backend")]),
        ]
        listeners = [
            http_listener(
                "plain", port, vhosts, http_protocol_options={"allow_absolute_url": True}
            ),
            http_listener(
                "remote",
                remote_port,
                [virtual_host("all", [route("backend")])],
                use_remote_address=True,
            ),
        ]
        config = bootstrap(free_port(), listeners, [cluster("backend", [up.port])])
        yield Env(start(config, name="http11"), port, remote_port, up)


@pytest.fixture(autouse=True)
def _clear(env: Env) -> None:
    env.up.clear()


def test_keep_alive_downstream_and_pooled_upstream(env: Env) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    local_ports = set()
    try:
        for i in range(30):
            resp = send(conn, "GET", f"/ka/{i}")
            assert resp.status == 200, resp
            assert conn.sock is not None, (
                f"proxy closed the client connection after request {i}: {resp}"
            )
            local_ports.add(conn.sock.getsockname()[1])
    finally:
        conn.close()
    assert len(local_ports) == 1, "the proxy did not keep the downstream connection alive"
    for i in range(30):
        assert request(env.port, "GET", f"/fresh/{i}").status == 200
    assert len(env.up.requests) == 60
    accepted = env.up.connections_accepted
    assert accepted <= 3, f"upstream accepted {accepted} connections for 60 sequential requests"


def test_chunked_request_body_is_streamed_to_upstream(env: Env) -> None:
    pieces = [b"a" * 1000, b"b" * 70000, b"c", b"d" * 5000]
    resp = request(env.port, "POST", "/echo", body=iter(pieces), encode_chunked=True)
    assert resp.status == 200, resp
    assert resp.body == b"".join(pieces)
    (seen,) = env.up.requests
    assert seen.body_length == 76001


def test_chunked_response_body(env: Env) -> None:
    resp = request(env.port, "GET", "/bytes/300001?chunked=1")
    assert resp.status == 200
    assert resp.body == b"x" * 300001


def test_content_length_request_body(env: Env) -> None:
    body = bytes(range(256)) * 4096
    resp = request(env.port, "PUT", "/echo", body=body)
    assert resp.status == 200
    assert resp.body == body


def test_head_has_no_body_and_connection_stays_usable(env: Env) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=5)
    try:
        head = send(conn, "HEAD", "/bytes/1000")
        assert head.status == 200, head
        assert head.header("content-length") == "1000", head
        assert head.body == b""
        after = send(conn, "GET", "/bytes/10")
        assert (after.status, after.body) == (200, b"x" * 10), after
    finally:
        conn.close()


def test_expect_100_continue(env: Env) -> None:
    head = (
        b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", env.port), timeout=3) as sock:
        sock.sendall(head)
        interim = b""
        try:
            while b"\r\n\r\n" not in interim:
                chunk = sock.recv(4096)
                assert chunk, f"closed before 100 Continue: {interim!r}"
                interim += chunk
        except TimeoutError:
            pytest.fail(
                f"no 100 Continue within 3s (client waits before sending the body): {interim!r}"
            )
        assert interim.startswith(b"HTTP/1.1 100"), f"expected 100 Continue first, got {interim!r}"
        sock.sendall(b"hello")
        result = read_until_closed(sock, 5)
    data = interim + result.data
    assert status_of(data) == 200, data
    assert data.endswith(b"hello"), data
    (seen,) = env.up.requests
    assert seen.body == b"hello"


def test_pipelined_requests_answered_in_order(env: Env) -> None:
    reqs = b"".join(f"GET /status/20{i} HTTP/1.1\r\nHost: svc\r\n\r\n".encode() for i in (0, 1, 2))
    reqs += b"GET /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nConnection: close\r\n\r\nend"
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(reqs)
        result = read_until_closed(sock, 5)
    codes = re.findall(rb"HTTP/1\.1 (\d{3})", result.data)
    assert codes == [b"200", b"201", b"202", b"200"], result
    assert result.data.endswith(b"end"), result


def test_hop_by_hop_request_headers_removed(env: Env) -> None:
    headers = {
        "Connection": "keep-alive, x-foo",
        "x-foo": "must-go",
        "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive",
        "x-keep": "stays",
    }
    assert request(env.port, "GET", "/", headers=headers).status == 200
    (seen,) = env.up.requests
    assert seen.header("x-keep") == "stays"
    for gone in ("x-foo", "keep-alive", "proxy-connection"):
        assert seen.header(gone) is None, f"{gone} reached the upstream: {seen.headers}"


def test_hop_by_hop_response_headers_removed(env: Env) -> None:
    resp = request(env.port, "GET", "/hop")
    assert resp.status == 200 and resp.body == b"hop"
    for gone in ("x-resp-hop", "keep-alive", "proxy-connection"):
        assert not resp.has_header(gone), f"{gone} reached the client: {resp.headers}"


def test_request_id_generated_when_absent(env: Env) -> None:
    request(env.port, "GET", "/a")
    request(env.port, "GET", "/b")
    ids = [r.header("x-request-id") for r in env.up.requests]
    assert all(i is not None and UUID.match(i) for i in ids), ids
    assert ids[0] != ids[1]


def test_request_id_kept_when_present(env: Env) -> None:
    request(env.port, "GET", "/", headers={"x-request-id": "my-own-id-123"})
    (seen,) = env.up.requests
    assert seen.header_values("x-request-id") == ["my-own-id-123"]


def test_forwarded_headers_with_use_remote_address(env: Env) -> None:
    request(env.remote_port, "GET", "/")
    request(
        env.remote_port,
        "GET",
        "/",
        headers={"x-forwarded-for": "10.1.2.3", "x-forwarded-proto": "https"},
    )
    first, second = env.up.requests
    assert first.header("x-forwarded-for") == "127.0.0.1"
    assert [p.strip() for p in (second.header("x-forwarded-for") or "").split(",")] == [
        "10.1.2.3",
        "127.0.0.1",
    ]
    # the edge proxy sets the scheme from the connection, not from what the client claims
    assert first.header("x-forwarded-proto") == "http"
    assert second.header("x-forwarded-proto") == "http"


def test_forwarded_proto_set_by_default(env: Env) -> None:
    request(env.port, "GET", "/", headers={"x-forwarded-for": "10.1.2.3"})
    (seen,) = env.up.requests
    assert seen.header("x-forwarded-proto") == "http"
    # without use_remote_address Envoy leaves x-forwarded-for as the client sent it
    assert seen.header("x-forwarded-for") == "10.1.2.3"


def test_absolute_form_target(env: Env) -> None:
    raw = (
        b"GET http://absolute.test/some/path?q=1 HTTP/1.1\r\n"
        b"Host: absolute.test\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(raw)
        result = read_until_closed(sock, 5)
    assert result.status == 200, result
    assert b"x-vhost: absolute" in result.data.lower(), result
    (seen,) = env.up.requests
    assert seen.target == "/some/path?q=1"
    assert seen.header("host") == "absolute.test"


def test_absolute_form_authority_wins_over_host_header(env: Env) -> None:
    raw = b"GET http://absolute.test/p HTTP/1.1\r\nHost: other.host\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as sock:
        sock.sendall(raw)
        result = read_until_closed(sock, 5)
    assert result.status == 200, result
    assert b"x-vhost: absolute" in result.data.lower(), result
    (seen,) = env.up.requests
    assert seen.header("host") == "absolute.test"


def test_http_proxy_client(env: Env) -> None:
    """What an application with HTTP_PROXY set does (urllib sends absolute-form targets)."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{env.port}"})
    )
    with opener.open("http://absolute.test/via/proxy", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["x-vhost"] == "absolute"
        assert resp.read() == b"ok from up"
    (seen,) = env.up.requests
    assert seen.target == "/via/proxy"


def test_large_header_within_limit_passes(env: Env) -> None:
    cookie = "c" * 20000
    assert request(env.port, "GET", "/", headers={"cookie": cookie}).status == 200
    (seen,) = env.up.requests
    assert seen.header("cookie") == cookie
