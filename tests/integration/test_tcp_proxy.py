"""The tcp_proxy filter: bytes both ways, half-close in both directions, TCP metrics."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from .bootstrap import bootstrap, cluster, free_port, tcp_listener
from .client import read_until_closed
from .harness import ProxyFactory
from .proxyproc import ProxyProcess, metric_sum
from .tcp_upstream import TcpUpstream


def _tcp_proxy(start_proxy: ProxyFactory, upstream_port: int) -> tuple[ProxyProcess, int]:
    port = free_port()
    config = bootstrap(
        free_port(), [tcp_listener("db", port, "db")], [cluster("db", [upstream_port])]
    )
    return start_proxy(config), port


def test_client_half_close_upstream_still_replies(
    start_proxy: ProxyFactory, tcp_upstream_factory: Callable[[str], TcpUpstream]
) -> None:
    up = tcp_upstream_factory("reply")
    _, port = _tcp_proxy(start_proxy, up.port)
    payload = b"q" * (1024 * 1024 + 17)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        result = read_until_closed(sock, 5)
    assert result.closed and not result.reset, result
    assert result.data == f"received {len(payload)} bytes".encode()
    assert up.received == [len(payload)]


def test_upstream_half_close_client_still_sends(
    start_proxy: ProxyFactory, tcp_upstream_factory: Callable[[str], TcpUpstream]
) -> None:
    up = tcp_upstream_factory("banner")
    _, port = _tcp_proxy(start_proxy, up.port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        banner = read_until_closed(sock, 5)
        assert banner.closed and banner.data == b"hello", banner
        # the upstream only closed its write side: what we send now must still reach it
        sock.sendall(b"z" * 300_000)
        sock.shutdown(socket.SHUT_WR)
        tail = read_until_closed(sock, 5)
        assert tail.data == b""
    deadline = time.monotonic() + 5
    while not up.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert up.received == [300_000]


def test_connect_failure_closes_client(start_proxy: ProxyFactory) -> None:
    _, port = _tcp_proxy(start_proxy, free_port())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        result = read_until_closed(sock, 5)
    assert result.closed and result.data == b"", result


def test_tcp_metrics_match_bytes(
    start_proxy: ProxyFactory, tcp_upstream_factory: Callable[[str], TcpUpstream]
) -> None:
    up = tcp_upstream_factory("reply")
    proxy, port = _tcp_proxy(start_proxy, up.port)
    sent = 0
    replies = 0
    for n in (10, 2000, 50_000):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"m" * n)
            sock.shutdown(socket.SHUT_WR)
            result = read_until_closed(sock, 5)
        sent += n
        replies += len(result.data)
        assert result.data == f"received {n} bytes".encode()
    deadline = time.monotonic() + 3
    while True:
        samples = proxy.samples()
        closed = metric_sum(samples, "istio_tcp_connections_closed_total")
        if closed >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert metric_sum(samples, "istio_tcp_connections_opened_total") == 3
    assert closed == 3
    assert metric_sum(samples, "istio_tcp_received_bytes_total") == sent
    assert metric_sum(samples, "istio_tcp_sent_bytes_total") == replies
