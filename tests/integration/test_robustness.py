"""Long-running health: no memory or socket leaks across good and failing traffic; stalls end."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .bootstrap import bootstrap, cluster, free_port, http_listener, simple_http, virtual_host
from .client import RssMonitor, read_until_closed, request, rss_kb
from .harness import ProxyFactory
from .proxyproc import ProxyProcess
from .upstream import HttpUpstream


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _mixed_proxy(start_proxy: ProxyFactory, upstream: HttpUpstream) -> tuple[ProxyProcess, int]:
    port = free_port()
    routes = [
        {"match": {"prefix": "/ok/"}, "route": {"cluster": "good", "prefix_rewrite": "/"}},
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {
            "match": {"prefix": "/slow/"},
            "route": {"cluster": "good", "prefix_rewrite": "/", "timeout": "0.05s"},
        },
        {"match": {"prefix": "/close"}, "route": {"cluster": "good", "prefix_rewrite": "/close"}},
    ]
    listener = http_listener("mixed", port, [virtual_host("svc", routes, ["svc"])])
    clusters = [cluster("good", [upstream.port]), cluster("dead", [free_port()])]
    return start_proxy(bootstrap(free_port(), [listener], clusters)), port


def _abandon(port: int) -> None:
    """A client that sends a request and goes away before the answer (DC)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /ok/delay/0.2 HTTP/1.1\r\nHost: svc\r\n\r\n")


def _round(port: int, rounds: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    actions: list[Callable[[], object]] = [
        lambda: request(port, "GET", "/ok/x"),
        lambda: request(port, "POST", "/ok/echo", body=b"b" * 20000),
        lambda: request(port, "GET", "/", host="unknown"),
        lambda: request(port, "GET", "/dead"),
        lambda: request(port, "GET", "/slow/delay/1"),
        lambda: request(port, "GET", "/close"),
        lambda: _abandon(port),
    ]
    try:
        for i in range(rounds):
            conn.request("GET", f"/ok/{i}", headers={"Host": "svc"})
            conn.getresponse().read()
            actions[i % len(actions)]()
    finally:
        conn.close()


def test_no_memory_or_socket_leak_across_mixed_traffic(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    proxy, port = _mixed_proxy(start_proxy, upstream)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(_round, [port] * 4, [70] * 4))  # warm up every path
    time.sleep(0.5)
    fds_before, rss_before = _open_fds(proxy.pid), rss_kb(proxy.pid)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(_round, [port] * 4, [350] * 4))
    time.sleep(0.5)  # let abandoned requests and timeouts settle
    fds_after, rss_after = _open_fds(proxy.pid), rss_kb(proxy.pid)
    assert fds_after <= fds_before + 8, f"open fds {fds_before} -> {fds_after} after 2800 requests"
    growth_mb = (rss_after - rss_before) / 1024
    assert growth_mb < 6, f"RSS grew {growth_mb:.1f} MB over 2800 requests"


def test_stalled_request_body_times_out(start_proxy: ProxyFactory, upstream: HttpUpstream) -> None:
    port = free_port()
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "good"}}]
    hcm = {"stream_idle_timeout": "0.5s"}
    listener = http_listener("h", port, [virtual_host("all", routes)], **hcm)
    start_proxy(bootstrap(free_port(), [listener], [cluster("good", [upstream.port])]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nabc")
        start = time.monotonic()
        result = read_until_closed(sock, 4)
    took = time.monotonic() - start
    assert result.closed, (
        f"stalled upload still open after 4 s (stream_idle_timeout 0.5s): {result}"
    )
    assert 0.4 <= took <= 2.0, f"closed after {took:.2f}s"
    assert result.status in (None, 408), result
    assert upstream.requests == [], "an incomplete request was delivered as complete"


def test_pipelined_flood_from_a_non_reading_client_is_bounded(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    """3000 pipelined requests, 1.5 s without reading: the proxy stops reading, then answers all."""
    port = free_port()
    proxy = start_proxy(simple_http(free_port(), port, [upstream.port]))
    flood = b"".join(
        b"GET /bytes/20000?i=%d HTTP/1.1\r\nHost: svc\r\n\r\n" % i for i in range(3000)
    )
    flood += b"GET /status/299 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
    with RssMonitor(proxy.pid) as rss, socket.create_connection(("127.0.0.1", port)) as sock:
        sender = threading.Thread(target=_send_quietly, args=(sock, flood), daemon=True)
        sender.start()
        time.sleep(1.5)
        forwarded_while_stalled = len(upstream.requests)
        result = read_until_closed(sock, 30)
        sender.join(10)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3})", result.data)
    assert len(statuses) == 3001 and statuses[-1] == b"299", (len(statuses), statuses[-3:])
    assert forwarded_while_stalled < 1500, (
        f"{forwarded_while_stalled} requests forwarded while the client read nothing"
    )
    assert rss.growth_mb < 30, f"RSS grew {rss.growth_mb:.1f} MB"


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)
