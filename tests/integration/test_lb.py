"""Load balancing (weighted clusters, round robin, random, least request) and circuit breaking."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

from .bootstrap import (
    bootstrap,
    cluster,
    free_port,
    http_listener,
    simple_http,
    thresholds,
    virtual_host,
)
from .client import Response, request, send
from .harness import ProxyFactory, UpstreamFactory
from .proxyproc import delta


def _spread(port: int, total: int, workers: int, path: str = "/") -> Counter[str]:
    """Send `total` requests over `workers` keep-alive connections; count x-upstream values."""

    def run(n: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(n):
                resp = send(conn, "GET", path)
                assert resp.status == 200, resp
                seen[resp.header("x-upstream") or "?"] += 1
        finally:
            conn.close()
        return seen

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(run, [total // workers] * workers))
    return sum(parts, Counter())


def test_weighted_clusters_80_20(start_proxy: ProxyFactory, make_upstream: UpstreamFactory) -> None:
    a, b = make_upstream("a"), make_upstream("b")
    port = free_port()
    weighted = {
        "weighted_clusters": {
            "clusters": [{"name": "a", "weight": 80}, {"name": "b", "weight": 20}]
        }
    }
    vhost = virtual_host("all", [{"match": {"prefix": "/"}, "route": weighted}])
    config = bootstrap(
        free_port(),
        [http_listener("w", port, [vhost])],
        [cluster("a", [a.port]), cluster("b", [b.port])],
    )
    start_proxy(config)
    counts = _spread(port, 1000, 4)
    # binomial(1000, 0.8): sd 12.6; +-60 is 4.7 sd
    assert abs(counts["a"] - 800) <= 60, counts
    assert counts["a"] + counts["b"] == 1000, counts
    assert len(a.requests) == counts["a"] and len(b.requests) == counts["b"]


def test_round_robin_even(start_proxy: ProxyFactory, make_upstream: UpstreamFactory) -> None:
    ups = [make_upstream(f"u{i}") for i in range(3)]
    port = free_port()
    start_proxy(simple_http(free_port(), port, [u.port for u in ups]))
    counts = _spread(port, 60, 1)
    assert sorted(counts.values()) == [20, 20, 20], counts


def test_endpoint_weights(start_proxy: ProxyFactory, make_upstream: UpstreamFactory) -> None:
    heavy, light = make_upstream("heavy"), make_upstream("light")
    port = free_port()
    clus = cluster("backend", [(heavy.port, 3), (light.port, 1)])
    config = bootstrap(
        free_port(),
        [
            http_listener(
                "h",
                port,
                [
                    virtual_host(
                        "all", [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
                    )
                ],
            )
        ],
        [clus],
    )
    start_proxy(config)
    counts = _spread(port, 400, 2)
    assert abs(counts["heavy"] - 300) <= 40, counts


def test_random_uses_every_endpoint(
    start_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    a, b = make_upstream("a"), make_upstream("b")
    port = free_port()
    start_proxy(simple_http(free_port(), port, [a.port, b.port], lb_policy="RANDOM"))
    counts = _spread(port, 400, 2)
    # binomial(400, 0.5): sd 10
    assert 140 <= counts["a"] <= 260, counts


def test_least_request_prefers_idle_endpoint(
    start_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    """`busy` holds every request it gets; new requests should mostly go to `idle`.

    Round robin would send half of them to `busy`; power-of-two-choices at most ~a quarter.
    """
    busy, idle = make_upstream("busy", hold_all=True), make_upstream("idle")
    port = free_port()
    start_proxy(simple_http(free_port(), port, [busy.port, idle.port], lb_policy="LEAST_REQUEST"))
    pool = ThreadPoolExecutor(160)
    futures: list[Future[Response]] = []

    def launch() -> str:
        """Send one request; return which endpoint took it."""
        held_before = busy.active
        fut = pool.submit(request, port, "GET", "/", timeout=20)
        futures.append(fut)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if fut.done():
                resp = fut.result()
                assert resp.status == 200, resp
                return resp.header("x-upstream") or "?"
            if busy.active > held_before:
                return "busy"
            time.sleep(0.002)
        raise AssertionError("request neither completed nor reached the busy endpoint")

    try:
        for _ in range(100):
            if busy.active >= 5:
                break
            launch()
        assert busy.active >= 5, "could not get five requests held at the busy endpoint"
        counts = Counter(launch() for _ in range(100))
    finally:
        busy.release_held()
        for fut in futures:
            fut.result(timeout=20)
        pool.shutdown()
    assert counts["busy"] <= 40, (
        f"least-request sent {counts['busy']}/100 new requests to the busy endpoint"
    )


def test_circuit_breaker_overflow_is_503_uo(
    start_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    up = make_upstream("up")
    port = free_port()
    limits = thresholds(max_connections=2, max_pending_requests=1, max_requests=2, max_retries=3)
    proxy = start_proxy(
        simple_http(free_port(), port, [up.port], cluster_extra={"circuit_breakers": limits})
    )
    before = proxy.samples()
    barrier = threading.Barrier(12)

    def one(_: int) -> Response:
        barrier.wait(5)
        return request(port, "GET", "/delay/1", timeout=10)

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    codes = Counter(r.status for r in results)
    assert codes[200] >= 2, codes
    assert codes[503] >= 6, codes
    assert codes[200] + codes[503] == 12, codes
    overflow = [r for r in results if r.status == 503]
    assert all(r.elapsed < 0.8 for r in overflow), (
        "overflow should be answered at once, not after queueing"
    )
    assert up.peak_active <= 2, (
        f"upstream saw {up.peak_active} concurrent requests with max_requests 2"
    )
    after = proxy.samples()
    uo = delta(before, after, "istio_requests_total", response_code="503", response_flags="UO")
    assert uo == codes[503], f"istio_requests_total{{503,UO}} grew by {uo}, expected {codes[503]}"
    # the breaker closes again once the load is gone
    assert request(port, "GET", "/").status == 200
