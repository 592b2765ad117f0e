"""Bugs found in review, reproduced over real sockets and kept fixed."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from .bootstrap import (
    bootstrap,
    cluster,
    free_port,
    http_listener,
    route,
    tcp_listener,
    virtual_host,
)
from .client import read_until_closed
from .harness import proxy_manager, upstream_manager
from .tcp_upstream import TcpUpstream


def _responses(data: bytes) -> int:
    return data.count(b"HTTP/1.1 ")


def test_a_long_pipeline_of_local_replies_behind_a_forwarded_request(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """Each local reply used to begin the next request recursively: 250+ crashed."""
    with upstream_manager() as make_up, proxy_manager(pytestconfig, tmp_path) as start:
        up = make_up("up")
        port = free_port()
        direct = {"match": {"prefix": "/local"}, "direct_response": {"status": 200}}
        routes = [direct, route("backend")]
        listener = http_listener("l", port, [virtual_host("all", routes)])
        start(bootstrap(free_port(), [listener], [cluster("backend", [up.port])]))
        count = 400
        first = b"GET /delay/0.2 HTTP/1.1\r\nHost: svc\r\n\r\n"
        local = b"GET /local HTTP/1.1\r\nHost: svc\r\n\r\n"
        last = b"GET /local HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(first + local * (count - 1) + last)
            data = read_until_closed(sock, 10).data
        assert _responses(data) == count + 1


def test_a_body_buffered_before_the_upstream_is_ready_does_not_stall_the_connection(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """Each chunk over the buffer limit paused the client once more; one resume was not
    enough, and the next request on the connection was never read."""
    with upstream_manager() as make_up, proxy_manager(pytestconfig, tmp_path) as start:
        up = make_up("up")
        port = free_port()
        listener = http_listener("l", port, [virtual_host("all", [route("backend")])])
        listener["per_connection_buffer_limit_bytes"] = 1024
        start(bootstrap(free_port(), [listener], [cluster("backend", [up.port])]))
        chunks = b"".join(b"64\r\n" + b"x" * 100 + b"\r\n" for _ in range(50)) + b"0\r\n\r\n"
        post = b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
        again = b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post + chunks)
            time.sleep(0.3)
            sock.sendall(again)
            data = read_until_closed(sock, 5).data
        assert _responses(data) == 2, data[-300:]


def test_tcp_connections_refused_by_the_limit_take_no_cluster_slot(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    with proxy_manager(pytestconfig, tmp_path) as start:
        upstream = TcpUpstream("reply").start()
        try:
            port = free_port()
            overload = {
                "resource_monitors": [
                    {
                        "name": "envoy.resource_monitors.global_downstream_max_connections",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                            "downstream_connections.v3.DownstreamConnectionsConfig",
                            "max_active_downstream_connections": 2,
                        },
                    }
                ]
            }
            config = bootstrap(
                free_port(),
                [tcp_listener("tcp", port, "c")],
                [
                    cluster(
                        "c",
                        [upstream.port],
                        circuit_breakers={"thresholds": [{"max_connections": 3}]},
                    )
                ],
                overload_manager=overload,
            )
            proxy = start(config)
            for _ in range(3):
                held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in "ab"]
                time.sleep(0.2)
                refused = socket.create_connection(("127.0.0.1", port), timeout=5)
                refused.close()
                for sock in held:
                    sock.close()
                time.sleep(0.3)
            code, text = proxy.admin("GET", "/clusters")
            assert code == 200
            assert f"c::127.0.0.1:{upstream.port}::rq_active::0" in text, text
        finally:
            upstream.stop()
