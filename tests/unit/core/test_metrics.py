"""Istio metrics, Envoy response flags and Envoy-style stats, read back through a real parser."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from trellis.core.metrics import (
    ENVOY_DEFAULT_BUCKETS,
    NO_FLAGS,
    PEER_LABEL_NAMES,
    IstioMetrics,
    PeerLabels,
    ResponseFlag,
    StatsRegistry,
    format_flags,
    parse_flags,
)
from trellis.core.prometheus import envoy_stat_name, escape_label_value, format_value

# The label set Istio's stats filter emits, in its order (istio/proxy istio_stats.cc).
ISTIO_PEER_LABELS = (
    "reporter", "source_workload", "source_canonical_service", "source_canonical_revision",
    "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_cluster", "destination_workload", "destination_workload_namespace",
    "destination_principal", "destination_app", "destination_version", "destination_service",
    "destination_canonical_service", "destination_canonical_revision",
    "destination_service_name", "destination_service_namespace", "destination_cluster",
    "request_protocol", "connection_security_policy",
)  # fmt: skip

# DESIGN.md section 2: dashboards rely on these.
DESIGN_LABELS = {
    "reporter", "source_workload", "source_workload_namespace", "source_principal",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_service", "destination_service_name", "request_protocol", "response_code",
    "response_flags", "connection_security_policy",
}  # fmt: skip

CLIENT = PeerLabels(
    reporter="source",
    source_workload="productpage-v1",
    source_canonical_service="productpage",
    source_canonical_revision="v1",
    source_workload_namespace="default",
    source_principal="spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
    source_app="productpage",
    source_version="v1",
    destination_workload="reviews-v2",
    destination_workload_namespace="default",
    destination_principal="spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
    destination_service="reviews.default.svc.cluster.local",
    destination_service_name="reviews",
    destination_service_namespace="default",
    connection_security_policy="unknown",
)


def families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Metric, name: str, **labels: str) -> list[Sample]:
    return [
        s
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def one(family: Metric, name: str, **labels: str) -> float:
    found = samples(family, name, **labels)
    assert len(found) == 1, found
    return found[0].value


# --- response flags --------------------------------------------------------------------


def test_no_flags_is_a_dash() -> None:
    assert format_flags(ResponseFlag.NONE) == "-" == NO_FLAGS


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (ResponseFlag.NO_ROUTE_FOUND, "NR"),
        (ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX"),
        (
            ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED
            | ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
            | ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
            "UF,DC,URX",
        ),
        (ResponseFlag.LOCAL_RESET | ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "UT,LR"),
        (ResponseFlag.UPSTREAM_OVERFLOW | ResponseFlag.NO_HEALTHY_UPSTREAM, "UH,UO"),
        (ResponseFlag.UPSTREAM_CONNECTION_TERMINATION | ResponseFlag.NO_CLUSTER_FOUND, "UC,NC"),
    ],
)
def test_flags_print_in_envoys_order(flags: ResponseFlag, text: str) -> None:
    assert format_flags(flags) == text
    assert parse_flags(text) == flags


def test_every_flag_has_a_distinct_short_code() -> None:
    members = [flag for flag in ResponseFlag if flag is not ResponseFlag.NONE]
    codes = [format_flags(flag) for flag in members]
    assert len(members) == 28
    assert len(set(codes)) == len(codes)
    assert all(code.isupper() and "," not in code for code in codes)
    assert format_flags(ResponseFlag.FAILED_LOCAL_HEALTH_CHECK) == "LH"
    assert format_flags(ResponseFlag.DROP_OVERLOAD) == "DO"


def test_parse_flags_rejects_unknown_codes() -> None:
    assert parse_flags("-") == ResponseFlag.NONE
    with pytest.raises(ValueError, match="XX"):
        parse_flags("UF,XX")


# --- labels ----------------------------------------------------------------------------


def test_peer_labels_follow_istios_names_and_order() -> None:
    assert PEER_LABEL_NAMES == ISTIO_PEER_LABELS
    assert [name for name, _ in CLIENT.items()] == list(ISTIO_PEER_LABELS)


def test_equal_peer_labels_share_one_series() -> None:
    twin = replace(CLIENT)
    assert twin is not CLIENT and twin == CLIENT and hash(twin) == hash(CLIENT)
    assert replace(CLIENT, destination_workload="reviews-v3") != CLIENT
    metrics = IstioMetrics()
    metrics.record_http(CLIENT, 200, "-", 1.0, 10, 20)
    metrics.record_http(twin, 200, "-", 1.0, 10, 20)
    requests = families(metrics.render_prometheus())["istio_requests"]
    assert len(requests.samples) == 1
    assert requests.samples[0].value == 2


# --- Istio HTTP metrics ----------------------------------------------------------------


def test_http_metrics_values_through_the_parser() -> None:
    metrics = IstioMetrics()
    metrics.record_http(CLIENT, 200, "-", 3.2, 100, 2000)
    metrics.record_http(CLIENT, 200, "-", 0.5, 300, 4000)
    metrics.record_http(CLIENT, 503, "UF,URX", 7000.0, 50, 0)
    text = metrics.render_prometheus()
    parsed = families(text)

    requests = parsed["istio_requests"]
    assert requests.type == "counter"
    assert one(requests, "istio_requests_total", response_code="200", response_flags="-") == 2
    assert one(requests, "istio_requests_total", response_code="503", response_flags="UF,URX") == 1

    full = samples(requests, "istio_requests_total", response_code="200")[0].labels
    assert set(full) >= DESIGN_LABELS
    assert full["destination_service"] == "reviews.default.svc.cluster.local"
    assert full["source_principal"] == "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    assert full["grpc_response_status"] == ""

    duration = parsed["istio_request_duration_milliseconds"]
    assert duration.type == "histogram"
    ok = {"response_code": "200"}
    assert one(duration, "istio_request_duration_milliseconds_count", **ok) == 2
    assert one(duration, "istio_request_duration_milliseconds_sum", **ok) == pytest.approx(3.7)
    buckets = samples(duration, "istio_request_duration_milliseconds_bucket", **ok)
    by_le = {s.labels["le"]: s.value for s in buckets}
    assert by_le["0.5"] == 1  # le is inclusive
    assert by_le["1"] == 1
    assert by_le["5"] == 2
    assert by_le["+Inf"] == 2
    failed = {"response_code": "503"}
    slow = samples(duration, "istio_request_duration_milliseconds_bucket", **failed)
    slow_by_le = {s.labels["le"]: s.value for s in slow}
    assert slow_by_le["5000"] == 0 and slow_by_le["10000"] == 1

    request_bytes = parsed["istio_request_bytes"]
    assert one(request_bytes, "istio_request_bytes_sum", **ok) == 400
    response_bytes = parsed["istio_response_bytes"]
    assert one(response_bytes, "istio_response_bytes_sum", **ok) == 6000
    resp_by_le = {
        s.labels["le"]: s.value
        for s in samples(response_bytes, "istio_response_bytes_bucket", **ok)
    }
    assert resp_by_le["1000"] == 0 and resp_by_le["2500"] == 1 and resp_by_le["5000"] == 2


def test_histograms_use_envoys_default_buckets_cumulatively() -> None:
    envoy_defaults = [
        0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
        300000, 600000, 1800000, 3600000,
    ]  # fmt: skip
    assert list(ENVOY_DEFAULT_BUCKETS) == envoy_defaults
    metrics = IstioMetrics()
    for value in (0.1, 1, 1.5, 99, 3600000, 5000000):
        metrics.record_http(CLIENT, 200, "-", value, 0, 0)
    duration = families(metrics.render_prometheus())["istio_request_duration_milliseconds"]
    buckets = samples(duration, "istio_request_duration_milliseconds_bucket")
    assert [float(s.labels["le"]) for s in buckets] == [*ENVOY_DEFAULT_BUCKETS, float("inf")]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)  # cumulative
    by_le = {float(s.labels["le"]): s.value for s in buckets}
    assert by_le[0.5] == 1
    assert by_le[1] == 2
    assert by_le[5] == 3
    assert by_le[100] == 4
    assert by_le[3600000] == 5
    assert by_le[float("inf")] == 6


def test_grpc_status_is_a_label_of_its_own() -> None:
    grpc_peer = replace(CLIENT, request_protocol="grpc")
    metrics = IstioMetrics()
    metrics.record_http(grpc_peer, 200, "-", 2.0, 5, 5, grpc_status=14)
    metrics.record_http(grpc_peer, 200, "-", 2.0, 5, 5, grpc_status=0)
    requests = families(metrics.render_prometheus())["istio_requests"]
    assert one(requests, "istio_requests_total", grpc_response_status="14") == 1
    assert one(requests, "istio_requests_total", grpc_response_status="0") == 1
    assert {s.labels["request_protocol"] for s in requests.samples} == {"grpc"}


def test_label_values_are_escaped_and_round_trip() -> None:
    tricky = 'we"ird\\name\nnext'
    peer = replace(CLIENT, destination_service=tricky)
    metrics = IstioMetrics()
    metrics.record_http(peer, 404, "NR", 1.0, 0, 0)
    text = metrics.render_prometheus()
    assert 'destination_service="we\\"ird\\\\name\\nnext"' in text
    requests = families(text)["istio_requests"]
    assert requests.samples[0].labels["destination_service"] == tricky
    assert escape_label_value("plain") == "plain"


def test_help_and_type_appear_once_per_family() -> None:
    metrics = IstioMetrics()
    for code in (200, 201, 404, 503):
        metrics.record_http(CLIENT, code, "-", 1.0, 1, 1)
    metrics.tcp_opened(CLIENT)
    text = metrics.render_prometheus()
    for name in (
        "istio_requests_total",
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
        "istio_tcp_connections_opened_total",
    ):
        assert text.count(f"# TYPE {name} ") == 1
        assert text.count(f"# HELP {name} ") == 1
    assert text.endswith("\n")


def test_nothing_recorded_renders_nothing() -> None:
    assert IstioMetrics().render_prometheus() == ""


# --- Istio TCP metrics -------------------------------------------------------------------


def test_tcp_metrics_carry_flags_but_no_response_code() -> None:
    tcp_peer = replace(CLIENT, request_protocol="tcp", connection_security_policy="mutual_tls")
    metrics = IstioMetrics()
    metrics.tcp_opened(tcp_peer)
    metrics.tcp_bytes(tcp_peer, sent=1000, received=200)
    metrics.tcp_bytes(tcp_peer, sent=24, received=56)
    metrics.tcp_closed(tcp_peer)
    metrics.tcp_opened(tcp_peer, "UF")
    metrics.tcp_closed(tcp_peer, "UF")
    parsed = families(metrics.render_prometheus())

    assert one(
        parsed["istio_tcp_sent_bytes"], "istio_tcp_sent_bytes_total", response_flags="-"
    ) == (1024)
    received = parsed["istio_tcp_received_bytes"]
    assert one(received, "istio_tcp_received_bytes_total", response_flags="-") == 256
    opened = parsed["istio_tcp_connections_opened"]
    assert one(opened, "istio_tcp_connections_opened_total", response_flags="-") == 1
    assert one(opened, "istio_tcp_connections_opened_total", response_flags="UF") == 1
    closed = parsed["istio_tcp_connections_closed"]
    assert one(closed, "istio_tcp_connections_closed_total", response_flags="UF") == 1
    for family in parsed.values():
        assert family.type == "counter"
        for sample in family.samples:
            assert "response_code" not in sample.labels
            assert "grpc_response_status" not in sample.labels
            assert sample.labels["connection_security_policy"] == "mutual_tls"
            assert sample.labels["request_protocol"] == "tcp"
    assert "istio_requests" not in parsed


# --- Envoy-style stats ---------------------------------------------------------------------


def test_stats_registry_cells_and_prometheus_output() -> None:
    stats = StatsRegistry()
    rq = stats.counter("envoy_cluster_upstream_rq_total", (("envoy_cluster_name", "reviews"),))
    assert (
        stats.counter("envoy_cluster_upstream_rq_total", (("envoy_cluster_name", "reviews"),)) is rq
    )
    other = stats.counter("envoy_cluster_upstream_rq_total", (("envoy_cluster_name", "ratings"),))
    active = stats.gauge("envoy_cluster_upstream_cx_active", (("envoy_cluster_name", "reviews"),))
    live = stats.gauge("envoy_server_live")
    rq.value += 1
    rq.value += 1
    other.value += 5
    active.value = 3
    active.value -= 1
    live.value = 1
    parsed = families(stats.render_prometheus())

    total = parsed["envoy_cluster_upstream_rq"]
    assert total.type == "counter"
    assert one(total, "envoy_cluster_upstream_rq_total", envoy_cluster_name="reviews") == 2
    assert one(total, "envoy_cluster_upstream_rq_total", envoy_cluster_name="ratings") == 5
    gauge = parsed["envoy_cluster_upstream_cx_active"]
    assert gauge.type == "gauge"
    assert one(gauge, "envoy_cluster_upstream_cx_active", envoy_cluster_name="reviews") == 2
    assert one(parsed["envoy_server_live"], "envoy_server_live") == 1


def test_envoy_plain_stats_listing() -> None:
    stats = StatsRegistry()
    stats.counter("envoy_cluster_upstream_rq_total", (("envoy_cluster_name", "x"),)).value = 5
    stats.counter("envoy_cluster_upstream_rq_retry", (("envoy_cluster_name", "x"),)).value = 1
    stats.counter(
        "envoy_http_downstream_rq_total",
        (("envoy_http_conn_manager_prefix", "inbound_0.0.0.0_8080"),),
    ).value = 7
    stats.gauge("envoy_server_live").value = 1
    stats.counter("trellis_custom", (("a", "b"),), stat_name="custom.thing").value = 2
    assert stats.render_envoy_text() == (
        "cluster.x.upstream_rq_retry: 1\n"
        "cluster.x.upstream_rq_total: 5\n"
        "custom.thing: 2\n"
        "http.inbound_0.0.0.0_8080.downstream_rq_total: 7\n"
        "server.live: 1\n"
    )
    assert envoy_stat_name("envoy_tcp_downstream_cx_total", (("envoy_tcp_prefix", "db"),)) == (
        "tcp.db.downstream_cx_total"
    )


def test_stats_registry_rejects_misuse() -> None:
    stats = StatsRegistry()
    stats.counter("envoy_server_restarts")
    with pytest.raises(ValueError, match="already registered as a counter"):
        stats.gauge("envoy_server_restarts")
    with pytest.raises(ValueError, match="invalid metric name"):
        stats.counter("envoy-bad-name")
    with pytest.raises(ValueError, match="label names"):
        stats.counter("envoy_ok", (("bad-label", "x"),))
    with pytest.raises(ValueError, match="label names"):
        stats.counter("envoy_ok", (("a", "x"), ("a", "y")))
    assert "envoy_ok" not in stats.render_prometheus()


def test_removed_series_disappear() -> None:
    stats = StatsRegistry()
    labels = (("envoy_cluster_name", "gone"),)
    stats.counter("envoy_cluster_upstream_rq_total", labels).value = 3
    stats.remove("envoy_cluster_upstream_rq_total", labels)
    stats.remove("envoy_never_registered")
    assert stats.render_prometheus() == ""
    assert stats.render_envoy_text() == ""


def test_merged_admin_output_parses() -> None:
    metrics = IstioMetrics()
    metrics.record_http(CLIENT, 200, "-", 12.5, 10, 10)
    stats = StatsRegistry()
    stats.gauge("envoy_server_live").value = 1
    stats.gauge("envoy_server_memory_allocated").value = 1.5e7
    parsed = families(metrics.render_prometheus() + stats.render_prometheus())
    assert {"istio_requests", "istio_request_duration_milliseconds", "envoy_server_live"} <= set(
        parsed
    )
    assert one(parsed["envoy_server_memory_allocated"], "envoy_server_memory_allocated") == 1.5e7


def test_sample_values_are_formatted_for_prometheus() -> None:
    assert format_value(3) == "3"
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(float("inf")) == "+Inf"
    assert format_value(float("-inf")) == "-Inf"
    assert format_value(float("nan")) == "NaN"
    assert float(format_value(1e20)) == 1e20
