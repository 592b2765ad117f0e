"""Outlier detection: a failing endpoint is ejected, traffic goes to the healthy one,
the ejection shows in the stats and in /clusters, and the endpoint comes back later."""

from __future__ import annotations

import http.client
import time
from collections import Counter
from typing import Any

from .bootstrap import free_port, simple_http
from .client import send
from .harness import ProxyFactory, UpstreamFactory
from .proxyproc import ProxyProcess

STAT = "envoy_cluster_outlier_detection_"


def _outlier(**fields: Any) -> dict[str, Any]:
    # max_ejection_percent 50: with two hosts Envoy's default of 10% ejects none.
    return {"outlier_detection": {"interval": "1s", "max_ejection_percent": 50, **fields}}


def _upstreams(conn: http.client.HTTPConnection, count: int) -> Counter[tuple[str, int]]:
    """Send `count` requests; count (x-upstream or "proxy", status)."""
    seen: Counter[tuple[str, int]] = Counter()
    for _ in range(count):
        resp = send(conn, "GET", "/")
        seen[(resp.header("x-upstream") or "proxy", resp.status)] += 1
    return seen


def _health(proxy: ProxyProcess, port: int) -> str:
    status, text = proxy.admin("GET", "/clusters")
    assert status == 200, text
    prefix = f"backend::127.0.0.1:{port}::health_flags::"
    flags = [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]
    assert len(flags) == 1, text
    return flags[0]


def test_failing_endpoint_is_ejected_and_returns(
    start_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    bad = make_upstream("bad", always_status=503)
    good = make_upstream("good")
    port = free_port()
    outlier = _outlier(consecutive_5xx=3, base_ejection_time="2s")
    proxy = start_proxy(
        simple_http(free_port(), port, [bad.port, good.port], cluster_extra=outlier)
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # Round robin alternates: the third 503 from `bad` ejects it.
        first = _upstreams(conn, 6)
        assert first == Counter({("bad", 503): 3, ("good", 200): 3}), first
        assert _health(proxy, bad.port) == "/failed_outlier_check"
        assert _health(proxy, good.port) == "healthy"
        after = _upstreams(conn, 20)
        assert after == Counter({("good", 200): 20}), after
        assert len(bad.requests) == 3
        assert proxy.metric(STAT + "ejections_active", envoy_cluster_name="backend") == 1
        assert proxy.metric(STAT + "ejections_enforced_total", envoy_cluster_name="backend") == 1
        # Envoy's counter has no _total suffix; the Prometheus parser adds one.
        enforced_5xx = STAT + "ejections_enforced_consecutive_5xx_total"
        assert proxy.metric(enforced_5xx, envoy_cluster_name="backend") == 1
        # Back after base_ejection_time, at the next 1 s sweep.
        deadline = time.monotonic() + 8
        while _health(proxy, bad.port) != "healthy":
            assert time.monotonic() < deadline, "the ejected endpoint never came back"
            time.sleep(0.2)
        assert proxy.metric(STAT + "ejections_active", envoy_cluster_name="backend") == 0
        again = _upstreams(conn, 4)
        assert again[("bad", 503)] >= 1, again
    finally:
        conn.close()


def test_unreachable_endpoint_is_ejected_after_connect_failures(
    start_proxy: ProxyFactory, make_upstream: UpstreamFactory
) -> None:
    """Connect failures are local origin errors: they count as 5xx."""
    good = make_upstream("good")
    dead = free_port()  # nothing listens there
    port = free_port()
    outlier = _outlier(consecutive_5xx=2, base_ejection_time="30s")
    proxy = start_proxy(simple_http(free_port(), port, [dead, good.port], cluster_extra=outlier))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        first = _upstreams(conn, 4)
        assert first == Counter({("proxy", 503): 2, ("good", 200): 2}), first
        assert _health(proxy, dead) == "/failed_outlier_check"
        after = _upstreams(conn, 10)
        assert after == Counter({("good", 200): 10}), after
    finally:
        conn.close()
    assert proxy.metric(STAT + "ejections_active", envoy_cluster_name="backend") == 1
