"""Cluster endpoints on Unix sockets (Envoy `pipe` addresses): HTTP and TCP proxying
to a real server listening on a socket file, and the endpoint's path in /clusters."""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .bootstrap import bootstrap, free_port, http_listener, route, tcp_listener, virtual_host
from .client import read_until_closed, request
from .harness import ProxyFactory


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"unix {self.path} host={self.headers.get('host')}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:  # a Unix peer has no host to show
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _UnixHttpServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _UnixEcho(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        received = b""
        for _ in range(1000):
            data = self.request.recv(65536)
            if not data:
                break
            received += data
        self.request.sendall(b"echo:" + received)


@pytest.fixture
def unix_http(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "app.sock"
    server = _UnixHttpServer(str(path), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()
    thread.join(5)


def _pipe_cluster(name: str, path: Path) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"pipe": {"path": str(path)}}}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def test_http_requests_reach_a_unix_socket_endpoint(
    start_proxy: ProxyFactory, unix_http: Path
) -> None:
    port = free_port()
    listener = http_listener("http", port, [virtual_host("all", [route("app")])])
    proxy = start_proxy(bootstrap(free_port(), [listener], [_pipe_cluster("app", unix_http)]))
    for attempt in range(3):  # pooled: later requests reuse the upstream connection
        response = request(port, "GET", f"/hello/{attempt}", host="web")
        assert response.status == 200, response
        assert response.text == f"unix /hello/{attempt} host=web"
    status, clusters = proxy.admin("GET", "/clusters")
    assert status == 200
    assert f"app::{unix_http}::rq_total::3" in clusters


def test_tcp_connections_reach_a_unix_socket_endpoint(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "echo.sock"
    server = _UnixEcho(str(path), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = free_port()
        config = bootstrap(
            free_port(), [tcp_listener("db", port, "db")], [_pipe_cluster("db", path)]
        )
        start_proxy(config)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ping over a pipe")
            sock.shutdown(socket.SHUT_WR)
            result = read_until_closed(sock, 5)
        assert result.data == b"echo:ping over a pipe", result
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_missing_socket_file_is_a_connect_failure(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    port = free_port()
    listener = http_listener("http", port, [virtual_host("all", [route("app")])])
    gone = tmp_path / "nobody.sock"
    start_proxy(bootstrap(free_port(), [listener], [_pipe_cluster("app", gone)]))
    response = request(port, "GET", "/", host="web")
    assert response.status == 503, response
    assert "connection failure" in response.text, response
