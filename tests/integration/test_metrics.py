"""Istio metrics on /stats/prometheus agree with the traffic that was sent."""

from __future__ import annotations

import time
from collections.abc import Callable

from .bootstrap import bootstrap, cluster, free_port, http_listener, route, virtual_host
from .client import request
from .harness import ProxyFactory
from .proxyproc import Sample, metric_sum
from .upstream import HttpUpstream

REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
ENVOY_BUCKETS = [
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
    10000, 30000, 60000, 300000, 600000, 1800000, 3600000,
]  # fmt: skip


def _wait_for(
    proxy_samples: Callable[[], list[Sample]], name: str, want: float, **labels: str
) -> list[Sample]:
    deadline = time.monotonic() + 2
    while True:
        samples = proxy_samples()
        if metric_sum(samples, name, **labels) >= want or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_request_metrics_match_traffic(start_proxy: ProxyFactory, upstream: HttpUpstream) -> None:
    out_port, in_port = free_port(), free_port()
    vhosts = [virtual_host("svc", [route("backend")], ["svc"])]
    listeners = [
        http_listener("outbound", out_port, vhosts, direction="OUTBOUND"),
        http_listener(
            "inbound", in_port, [virtual_host("all", [route("backend")])], direction="INBOUND"
        ),
    ]
    proxy = start_proxy(bootstrap(free_port(), listeners, [cluster("backend", [upstream.port])]))

    body_200 = 0
    for _ in range(7):
        resp = request(out_port, "GET", "/")
        assert resp.status == 200
        body_200 += len(resp.body)
    slow = request(out_port, "GET", "/delay/0.3")
    assert slow.status == 200
    body_200 += len(slow.body)
    for _ in range(3):
        assert request(out_port, "GET", "/status/503").status == 503
    for _ in range(2):
        assert request(out_port, "GET", "/status/404").status == 404
    for _ in range(2):
        assert request(out_port, "GET", "/", host="nohost").status == 404
    posted = request(out_port, "POST", "/echo", body=b"p" * 10_000)
    assert posted.status == 200
    body_200 += len(posted.body)
    for _ in range(4):
        assert request(in_port, "GET", "/").status == 200

    src = {"reporter": "source"}
    samples = _wait_for(proxy.samples, REQUESTS, 16, **src)
    assert metric_sum(samples, REQUESTS, **src, response_code="200", response_flags="-") == 9
    assert metric_sum(samples, REQUESTS, **src, response_code="503", response_flags="-") == 3
    assert metric_sum(samples, REQUESTS, **src, response_code="404", response_flags="-") == 2
    assert metric_sum(samples, REQUESTS, **src, response_code="404", response_flags="NR") == 2
    assert metric_sum(samples, REQUESTS, **src) == 16
    samples = _wait_for(proxy.samples, REQUESTS, 4, reporter="destination")
    assert metric_sum(samples, REQUESTS, reporter="destination", response_code="200") == 4
    assert metric_sum(samples, REQUESTS, reporter="destination") == 4

    workload, namespace = "web", "default"  # bootstrap.NODE metadata
    for s in samples:
        if s.name != REQUESTS:
            continue
        assert s.labels.get("request_protocol") == "http", s
        assert "destination_service" in s.labels, s
        if s.labels["reporter"] == "source":
            assert s.labels.get("source_workload") == workload, s
            assert s.labels.get("source_workload_namespace") == namespace, s
        else:
            assert s.labels.get("destination_workload") == workload, s
            assert s.labels.get("destination_workload_namespace") == namespace, s

    count = metric_sum(samples, f"{DURATION}_count", **src)
    assert count == 16
    buckets = {
        float(s.labels["le"]): s.value
        for s in samples
        if s.name == f"{DURATION}_bucket"
        and s.labels.get("reporter") == "source"
        and s.labels.get("response_code") == "200"
    }
    assert sorted(b for b in buckets if b != float("inf")) == [float(b) for b in ENVOY_BUCKETS]
    assert buckets[float("inf")] == 9
    # exactly one 200 took ~300 ms: it is above the 250 ms bucket and within the 500 ms one
    assert buckets[500.0] - buckets[250.0] == 1, buckets
    assert buckets[250.0] == 8, buckets

    resp_bytes = metric_sum(samples, "istio_response_bytes_sum", **src, response_code="200")
    assert body_200 <= resp_bytes <= body_200 + 9 * 1024, (body_200, resp_bytes)
    req_bytes = metric_sum(samples, "istio_request_bytes_sum", **src, response_code="200")
    assert 10_000 <= req_bytes <= 10_000 + 9 * 2048, req_bytes
    assert metric_sum(samples, "istio_request_bytes_count", **src) == 16


def test_hostile_host_headers_cannot_break_the_exposition(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    """Label values are escaped: a Host header cannot inject samples or break parsing."""
    port = free_port()
    proxy = start_proxy(
        bootstrap(
            free_port(),
            [http_listener("out", port, [virtual_host("svc", [route("backend")], ["svc"])])],
            [cluster("backend", [upstream.port])],
        )
    )
    hosts = ['a"b', "a\\b", 'x} istio_requests_total{reporter="fake"} 99', "caf\xe9", "a{b}=c,d"]
    for host in hosts:
        assert request(port, "GET", "/", host=host).status == 404
    status, text = proxy.admin("GET", "/stats/prometheus")
    assert status == 200
    samples = proxy.samples()  # raises if the text does not parse
    assert not [s for s in samples if s.labels.get("reporter") == "fake"], text
    assert metric_sum(samples, REQUESTS, response_flags="NR") == len(hosts)
