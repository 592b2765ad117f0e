"""Connection handling: idle timeouts on both sides, stale pooled connections, retry host choice."""

from __future__ import annotations

import contextlib
import socket
import time

from .bootstrap import PREVIOUS_HOSTS, free_port, simple_http
from .client import read_until_closed, request, status_of
from .harness import ProxyFactory, UpstreamFactory
from .upstream import HttpUpstream


def test_upstream_closing_an_idle_pooled_connection_is_not_an_error(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    port = free_port()
    start_proxy(simple_http(free_port(), port, [upstream.port]))
    for i in range(5):
        # the upstream answers, then closes the connection the proxy just pooled
        resp = request(port, "GET", "/bye")
        assert resp.status == 200, f"request {i}: {resp}"
        time.sleep(0.1)
    assert upstream.connections_accepted == 5


def test_cluster_idle_timeout_closes_pooled_connections(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    port = free_port()
    idle = {"common_http_protocol_options": {"idle_timeout": "0.3s"}}
    start_proxy(simple_http(free_port(), port, [upstream.port], cluster_extra=idle))
    first = request(port, "GET", "/a")
    again = request(port, "GET", "/b")
    assert first.header("x-upstream-connection") == again.header("x-upstream-connection")
    time.sleep(1.5)  # the timeout plus a housekeeping period of up to 1 s
    later = request(port, "GET", "/c")
    assert later.status == 200
    assert later.header("x-upstream-connection") != first.header("x-upstream-connection"), (
        "the pooled upstream connection outlived the cluster idle_timeout (0.3s)"
    )
    assert upstream.connections_accepted == 2


def test_downstream_idle_timeout_closes_keep_alive_connection(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    port = free_port()
    hcm = {"common_http_protocol_options": {"idle_timeout": "0.4s"}}
    start_proxy(simple_http(free_port(), port, [upstream.port], hcm_extra=hcm))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        start = time.monotonic()
        result = read_until_closed(sock, 3)
    assert status_of(result.data) == 200, result
    assert result.closed, "keep-alive connection still open 3 s after the 0.4 s idle timeout"
    took = time.monotonic() - start
    assert 0.3 <= took <= 1.5, f"closed after {took:.2f}s with idle_timeout 0.4s"


def test_previous_hosts_predicate_retries_on_another_host(
    start_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    """RANDOM picks the failing host again half the time unless previous hosts are avoided."""
    bad, good = make_upstream("bad", always_status=503), make_upstream("good")
    port = free_port()
    retry = {
        "retry_on": "5xx",
        "num_retries": 1,
        "retry_host_predicate": [PREVIOUS_HOSTS],
        "host_selection_retry_max_attempts": 10,
    }
    config = simple_http(
        free_port(),
        port,
        [bad.port, good.port],
        route_action={"retry_policy": retry},
        lb_policy="RANDOM",
    )
    start_proxy(config)
    codes = [request(port, "GET", "/").status for _ in range(40)]
    assert codes == [200] * 40, codes
    assert len(good.requests) == 40
    assert len(bad.requests) >= 5, "RANDOM never picked the failing host: the test proves nothing"


def test_connect_timeout(start_proxy: ProxyFactory) -> None:
    """An endpoint whose accept queue is full never completes the handshake."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        fillers = [socket.socket() for _ in range(4)]
        try:
            for sock in fillers:
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(server.getsockname())
            port = free_port()
            config = simple_http(
                free_port(),
                port,
                [server.getsockname()[1]],
                cluster_extra={"connect_timeout": "0.3s"},
            )
            start_proxy(config)
            resp = request(port, "GET", "/", timeout=10)
        finally:
            for sock in fillers:
                sock.close()
    assert resp.status == 503, resp
    assert 0.25 <= resp.elapsed < 1.5, f"took {resp.elapsed:.2f}s with connect_timeout 0.3s"
