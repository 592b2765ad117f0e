"""The dashboard's statistics: known scrapes in, known rates, success and quantiles out."""

from __future__ import annotations

import math

import pytest

from trellis.controlplane.stats_graph import graph_json, rows_json, service_series
from trellis.controlplane.stats_parse import (
    UNKNOWN,
    EdgeKey,
    Metric,
    parse_counters,
    peer_name,
    principal_parts,
)
from trellis.controlplane.stats_window import Sample, quantile, recent, signals, window

WEB_TO_CART = (
    'reporter="destination",source_workload="unknown",source_workload_namespace="unknown",'
    'source_principal="spiffe://cluster.local/ns/shop/sa/web",destination_workload="cart",'
    'destination_workload_namespace="shop",destination_service="cart.shop.svc.cluster.local",'
    'destination_service_name="cart",destination_service_namespace="shop",'
    'destination_version="v1",request_protocol="http",connection_security_policy="mutual_tls"'
)
BOUNDS = ("0.5", "1", "5", "10", "25", "50", "100", "+Inf")


def exposition(
    ok: float, failed: float, buckets: tuple[float, ...], labels: str = WEB_TO_CART
) -> str:
    """A sidecar's text with `ok` 200s, `failed` 503s and the cumulative bucket counts."""
    lines = [
        "# HELP istio_requests_total Requests.",
        "# TYPE istio_requests_total counter",
        f'istio_requests_total{{{labels},response_code="200",response_flags="-"}} {ok}',
        f'istio_requests_total{{{labels},response_code="503",response_flags="UF"}} {failed}',
        'istio_build{component="proxy"} 1',
    ]
    for bound, count in zip(BOUNDS, buckets, strict=True):
        lines.append(f'istio_request_duration_milliseconds_bucket{{{labels},le="{bound}"}} {count}')
    lines.append(f"istio_request_duration_milliseconds_sum{{{labels}}} 1234")
    return "\n".join(lines) + "\n"


CART = EdgeKey("web", "shop", "cart", "shop", "cart", "shop", "v1", "http")


def test_parse_reduces_labels_and_names_the_caller_from_its_principal() -> None:
    counters = parse_counters(exposition(90, 10, (0, 10, 50, 80, 100, 100, 100, 100)))
    requests = {key: value for key, value in counters.items() if key.metric is Metric.REQUESTS}
    assert {key.edge for key in requests} == {CART}
    assert {key.code: value for key, value in requests.items()} == {"200": 90, "503": 10}
    assert {key.policy for key in requests} == {"mutual_tls"}
    bounds = sorted(key.le or 0.0 for key in counters if key.metric is Metric.DURATION_BUCKET)
    assert bounds[-1] == math.inf and len(bounds) == len(BOUNDS)


def test_names_prefer_the_workload_then_the_principal() -> None:
    assert peer_name({"source_workload": "web", "source_workload_namespace": "shop"}, "source") == (
        "web",
        "shop",
    )
    principal = {"source_principal": "spiffe://td/ns/shop/sa/web", "source_workload": "unknown"}
    assert peer_name(principal, "source") == ("web", "shop")
    assert peer_name({}, "source") == (UNKNOWN, UNKNOWN)
    assert principal_parts("spiffe://td/ns/a/sa/b") == ("a", "b")
    assert principal_parts("spiffe://td/a/b") is None


def test_escaped_label_values_are_unescaped() -> None:
    labels = WEB_TO_CART.replace('destination_version="v1"', 'destination_version="v\\"1\\\\"')
    counters = parse_counters(exposition(1, 0, (1,) * 8, labels))
    assert {key.edge.version for key in counters} == {'v"1\\'}


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = {1.0: 10.0, 5.0: 50.0, 10.0: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(5.0)
    assert quantile(0.1, buckets) == pytest.approx(1.0)
    assert quantile(0.3, buckets) == pytest.approx(1 + 4 * (30 - 10) / 40)
    assert quantile(0.99, buckets) == pytest.approx(5 + 5 * (99 - 50) / 50)
    assert quantile(0.99, {1.0: 0.0, math.inf: 10.0}) == 1.0  # rank in +Inf: highest bound
    assert quantile(0.5, {}) is None


def test_window_gives_rates_success_quantiles_and_mtls() -> None:
    before = Sample(
        100.0, {"cart": parse_counters(exposition(100, 0, (0, 0, 50, 100, 100, 100, 100, 100)))}
    )
    # 10 s later: 180 more 200s and 20 more 503s; of those 200, 100 took <= 5 ms, 100 <= 10 ms.
    after = Sample(
        110.0, {"cart": parse_counters(exposition(280, 20, (0, 0, 150, 300, 300, 300, 300, 300)))}
    )
    win = window([before, after])
    assert win.seconds == 10.0
    traffic = win.edges[CART]
    stats = signals(traffic, win.seconds)
    assert stats.requests == 200 and stats.rps == pytest.approx(20.0)
    assert stats.errors == 20 and stats.success == pytest.approx(0.9)
    assert stats.p50 == pytest.approx(5.0)
    assert stats.p99 == pytest.approx(5 + 5 * (198 - 100) / 100)
    assert stats.mtls == "yes"


def test_a_reset_counter_counts_from_zero_and_new_proxies_wait_for_two_points() -> None:
    before = Sample(0.0, {"cart": parse_counters(exposition(500, 0, (500,) * 8))})
    after = Sample(
        10.0,
        {
            "cart": parse_counters(exposition(30, 0, (30,) * 8)),  # restarted: 30 since
            "late": parse_counters(exposition(1000, 0, (1000,) * 8)),  # not in `before`
        },
    )
    assert signals(window([before, after]).edges[CART], 10.0).requests == 30


def test_source_reports_count_only_where_no_destination_reports() -> None:
    source_labels = (
        'reporter="source",source_workload="web",source_workload_namespace="shop",'
        'destination_service="cart.shop.svc.cluster.local",destination_service_name="cart",'
        'destination_service_namespace="shop",request_protocol="http",'
        'connection_security_policy="unknown"'
    )
    external = source_labels.replace("cart", "bank").replace('"shop"', '"ext"')
    zero = (0.0,) * 8
    before = Sample(
        0.0,
        {
            "web": parse_counters(
                exposition(0, 0, zero, source_labels) + exposition(0, 0, zero, external)
            ),
            "cart": parse_counters(exposition(0, 0, zero)),
        },
    )
    after = Sample(
        5.0,
        {
            "web": parse_counters(
                exposition(50, 0, (50,) * 8, source_labels) + exposition(7, 3, (10,) * 8, external)
            ),
            "cart": parse_counters(exposition(50, 0, (50,) * 8)),
        },
    )
    win = window([before, after])
    cart = [edge for edge in win.edges if edge.service == "cart"]
    assert cart == [CART]  # counted once, from the destination
    bank = next(edge for edge in win.edges if edge.service == "bank")
    assert bank.destination == UNKNOWN and bank.source == "web"
    stats = signals(win.edges[bank], win.seconds)
    assert stats.rps == pytest.approx(2.0) and stats.success == pytest.approx(0.7)
    assert stats.mtls == "no"


def test_graph_draws_caller_service_workload() -> None:
    before = Sample(0.0, {"cart": parse_counters(exposition(0, 0, (0.0,) * 8))})
    after = Sample(10.0, {"cart": parse_counters(exposition(100, 0, (0, 100) + (100,) * 6))})
    graph = graph_json(window([before, after]))
    ids = {node["id"] for node in graph["nodes"]}
    assert ids == {"workload/shop/web", "service/shop/cart", "workload/shop/cart"}
    edges = {(edge["source"], edge["target"]): edge for edge in graph["edges"]}
    into_service = edges[("workload/shop/web", "service/shop/cart")]
    assert into_service["rps"] == 10.0 and into_service["success"] == 1.0
    assert into_service["mtls"] == "yes" and into_service["p99"] == pytest.approx(0.995)
    assert ("service/shop/cart", "workload/shop/cart") in edges
    assert graph_json(window([before, after]), "other")["edges"] == []
    (row,) = rows_json(window([before, after]), "shop")
    assert (row["source"], row["destination"], row["version"]) == ("web", "cart", "v1")


def test_service_series_has_one_point_per_step() -> None:
    samples = [
        Sample(float(t), {"cart": parse_counters(exposition(10 * t, 0, (10.0 * t,) * 8))})
        for t in range(0, 61, 5)
    ]
    (cart,) = service_series(samples, span=60, step=15)
    assert (cart["name"], cart["namespace"]) == ("cart", "shop")
    assert [point["t"] for point in cart["series"]] == [15.0, 30.0, 45.0, 60.0]
    assert all(point["rps"] == pytest.approx(10.0) for point in cart["series"])
    assert cart["current"]["rps"] == pytest.approx(10.0)
    assert service_series(samples[:1], 60, 15) == []


def test_recent_takes_the_oldest_sample_inside_the_span() -> None:
    samples = [Sample(float(t)) for t in (0, 5, 10, 15, 20)]
    assert [sample.taken for sample in recent(samples, 10)] == [10.0, 15.0, 20.0]
    assert [sample.taken for sample in recent(samples, 1)] == [15.0, 20.0]
    assert [sample.taken for sample in recent(samples[:1], 10)] == [0.0]
    assert recent([], 10) == []


def test_a_proxy_counts_from_its_own_previous_scrape() -> None:
    """A proxy that joins mid-window counts from its first scrape; a missed scrape loses
    nothing; the window spans the first to the last sample."""
    at = {t: parse_counters(exposition(10 * t, 0, (10.0 * t,) * 8)) for t in range(0, 31, 10)}
    samples = [
        Sample(0.0, {}),
        Sample(10.0, {"cart": at[10]}),  # joins
        Sample(20.0, {}),  # its scrape failed
        Sample(30.0, {"cart": at[30]}),
    ]
    win = window(samples)
    assert win.seconds == 30.0 and win.end == 30.0
    assert signals(win.edges[CART], win.seconds).requests == 200
    assert window(samples[:1]).edges == {}
