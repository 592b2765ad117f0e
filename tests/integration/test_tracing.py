"""Distributed tracing between two real sidecars, spans sent to a real OTLP receiver.

client -> sidecar A (outbound, CLIENT span) -> sidecar B (inbound, SERVER span)
-> app: one trace, B's span under A's, the app sees B's span as its parent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from .bootstrap import (
    NODE,
    Json,
    bootstrap,
    cluster,
    free_port,
    http_listener,
    route,
    virtual_host,
)
from .client import request
from .harness import ProxyFactory
from .otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver, ReceivedSpan
from .proxyproc import ProxyProcess
from .upstream import HttpUpstream

OTEL_TYPE = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
KIND_SERVER, KIND_CLIENT = 2, 3
CART_NODE = {
    "id": "sidecar~127.0.0.1~cart-1.default~default.svc.cluster.local",
    "cluster": "cart.default",
    "metadata": {
        "WORKLOAD_NAME": "cart",
        "NAMESPACE": "default",
        "SERVICE_ACCOUNT": "cart-sa",
        "LABELS": {"app": "cart", "version": "v2"},
    },
}


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcOtlpReceiver]:
    receiver = GrpcOtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def http_receiver() -> Iterator[HttpOtlpReceiver]:
    receiver = HttpOtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


def grpc_tracing(sampling: float = 100.0, **extra: Any) -> Json:
    return {
        "random_sampling": {"value": sampling},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": OTEL_TYPE,
                "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "2s"},
            },
        },
        **extra,
    }


def http_tracing(port: int, sampling: float = 100.0) -> Json:
    return {
        "random_sampling": {"value": sampling},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": OTEL_TYPE,
                "service_name": "cart-http",
                "http_service": {
                    "http_uri": {
                        "uri": f"http://127.0.0.1:{port}/v1/traces",
                        "cluster": "otel",
                        "timeout": "2s",
                    }
                },
            },
        },
    }


def _sidecar(
    start_proxy: ProxyFactory,
    name: str,
    direction: str,
    upstream_port: int,
    collector_port: int,
    tracing: Json,
    node: Json,
) -> tuple[int, ProxyProcess]:
    port = free_port()
    listener = http_listener(
        name,
        port,
        [virtual_host("all", [route(f"{direction.lower()}|8080||cart.default.svc.cluster.local")])],
        direction=direction,
        tracing=tracing,
    )
    clusters = [
        cluster(f"{direction.lower()}|8080||cart.default.svc.cluster.local", [upstream_port]),
        cluster("otel", [collector_port]),
    ]
    proxy = start_proxy(bootstrap(free_port(), [listener], clusters, node=node), name=name)
    return port, proxy


def _pair(
    start_proxy: ProxyFactory,
    app: HttpUpstream,
    client_tracing: Json,
    server_tracing: Json,
    collector_port: int,
) -> int:
    """Start sidecar B (inbound, in front of `app`) and A (outbound, to B); A's port."""
    inbound, _ = _sidecar(
        start_proxy, "inbound", "INBOUND", app.port, collector_port, server_tracing, CART_NODE
    )
    port, _ = _sidecar(
        start_proxy, "outbound", "OUTBOUND", inbound, collector_port, client_tracing, NODE
    )
    return port


def _by_kind(spans: list[ReceivedSpan], kind: int) -> ReceivedSpan:
    found = [span for span in spans if span.kind == kind]
    assert len(found) == 1, spans
    return found[0]


def test_two_hops_one_trace_with_parent_links(
    start_proxy: ProxyFactory, upstream: HttpUpstream, grpc_receiver: GrpcOtlpReceiver
) -> None:
    port = _pair(start_proxy, upstream, grpc_tracing(), grpc_tracing(), grpc_receiver.port)
    response = request(port, "GET", "/items?x=1", host="cart:8080", headers={"user-agent": "t/1"})
    assert response.status == 200

    spans = grpc_receiver.wait_for(2)
    assert len(spans) == 2, spans
    client = _by_kind(spans, KIND_CLIENT)
    server = _by_kind(spans, KIND_SERVER)
    assert client.trace_id == server.trace_id
    assert client.parent_id == ""  # the trace started at sidecar A
    assert server.parent_id == client.span_id
    assert client.service == "web"
    assert server.service == "cart.default"
    assert client.name == "cart.default.svc.cluster.local:8080/*"
    assert server.name == "cart.default.svc.cluster.local:8080/*"
    attributes = server.attributes
    assert attributes["http.method"] == "GET"
    assert attributes["http.url"] == "http://cart:8080/items?x=1"
    assert attributes["http.status_code"] == 200
    assert attributes["response_flags"] == "-"
    assert attributes["upstream_cluster"] == "inbound|8080||cart.default.svc.cluster.local"
    assert attributes["peer.address"] == "127.0.0.1"
    assert attributes["node_id"] == CART_NODE["id"]
    assert attributes["user_agent"] == "t/1"
    assert attributes["istio.canonical_service"] == "cart"
    assert attributes["istio.canonical_revision"] == "v2"
    assert attributes["istio.namespace"] == "default"
    assert attributes["component"] == "proxy"
    assert not server.error and not client.error
    assert client.start_ns <= server.start_ns <= server.end_ns <= client.end_ns

    # The app sees B's span as its parent, in W3C and B3 form, and one request id.
    (seen,) = upstream.requests
    assert seen.header("traceparent") == f"00-{server.trace_id}-{server.span_id}-01"
    assert seen.header("x-b3-traceid") == server.trace_id
    assert seen.header("x-b3-spanid") == server.span_id
    assert seen.header("x-b3-parentspanid") == client.span_id
    assert seen.header("x-b3-sampled") == "1"
    request_id = seen.header("x-request-id")
    assert request_id
    assert client.attributes["guid:x-request-id"] == request_id
    assert attributes["guid:x-request-id"] == request_id


def test_incoming_w3c_context_is_continued_and_unsampled_is_honoured(
    start_proxy: ProxyFactory, upstream: HttpUpstream, grpc_receiver: GrpcOtlpReceiver
) -> None:
    port = _pair(start_proxy, upstream, grpc_tracing(), grpc_tracing(), grpc_receiver.port)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    sampled = {"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "vendor=abc"}
    assert request(port, "GET", "/a", host="cart:8080", headers=sampled).status == 200
    spans = grpc_receiver.wait_for(2)
    assert {span.trace_id for span in spans} == {trace_id}
    assert _by_kind(spans, KIND_CLIENT).parent_id == parent
    assert upstream.requests[0].header("tracestate") == "vendor=abc"

    unsampled = {"traceparent": f"00-{trace_id}-{parent}-00"}
    assert request(port, "GET", "/b", host="cart:8080", headers=unsampled).status == 200
    forwarded = upstream.requests[1].header("traceparent")
    assert forwarded is not None
    assert forwarded.startswith(f"00-{trace_id}-") and forwarded.endswith("-00")
    assert upstream.requests[1].header("x-b3-sampled") == "0"
    # B3 multi-header from a Zipkin client: a 64-bit trace id, continued.
    b3 = {
        "x-b3-traceid": "80f198ee56343ba8",
        "x-b3-spanid": "e457b5a2e4d86bd1",
        "x-b3-sampled": "1",
    }
    assert request(port, "GET", "/c", host="cart:8080", headers=b3).status == 200
    spans = grpc_receiver.wait_for(4)
    assert len(spans) == 4, spans  # nothing for the unsampled request
    b3_spans = [s for s in spans if s.trace_id == "0000000000000000" + "80f198ee56343ba8"]
    assert len(b3_spans) == 2
    assert _by_kind(b3_spans, KIND_CLIENT).parent_id == "e457b5a2e4d86bd1"


def test_random_sampling_zero_records_nothing_but_propagates(
    start_proxy: ProxyFactory, upstream: HttpUpstream, grpc_receiver: GrpcOtlpReceiver
) -> None:
    port = _pair(start_proxy, upstream, grpc_tracing(0.0), grpc_tracing(0.0), grpc_receiver.port)
    for _ in range(5):
        assert request(port, "GET", "/", host="cart:8080").status == 200
    forced = {"x-envoy-force-trace": "1"}
    assert request(port, "GET", "/forced", host="cart:8080", headers=forced).status == 200
    spans = grpc_receiver.wait_for(2)
    assert len(spans) == 2
    assert {s.attributes["http.url"] for s in spans} == {"http://cart:8080/forced"}
    for seen in upstream.requests[:5]:
        parent = seen.header("traceparent")
        assert parent is not None and parent.endswith("-00")


def test_otlp_http_export(
    start_proxy: ProxyFactory, upstream: HttpUpstream, http_receiver: HttpOtlpReceiver
) -> None:
    port, _ = _sidecar(
        start_proxy,
        "inbound",
        "INBOUND",
        upstream.port,
        http_receiver.port,
        http_tracing(http_receiver.port),
        CART_NODE,
    )
    assert request(port, "POST", "/pay", host="cart:8080", body=b"x" * 100).status == 200
    (span,) = http_receiver.wait_for(1)
    assert span.service == "cart-http"
    assert span.kind == KIND_SERVER
    assert span.attributes["request_size"] == 100


def test_collector_down_never_fails_requests(
    start_proxy: ProxyFactory, upstream: HttpUpstream
) -> None:
    dead = free_port()  # nothing listens: every export fails
    port, proxy = _sidecar(
        start_proxy, "inbound", "INBOUND", upstream.port, dead, grpc_tracing(), CART_NODE
    )
    for _ in range(20):
        assert request(port, "GET", "/", host="cart:8080").status == 200
    assert len(upstream.requests) == 20
    deadline = time.monotonic() + 10
    dropped = 0.0  # (the parser names counter samples `<name>_total`)
    while time.monotonic() < deadline and dropped < 20:
        dropped = proxy.metric("envoy_tracing_opentelemetry_spans_dropped_total")
        time.sleep(0.1)
    assert dropped == 20
    assert proxy.metric("envoy_tracing_opentelemetry_exports_failed_total") >= 1
    assert proxy.metric("envoy_tracing_opentelemetry_spans_sent_total") == 0
    assert proxy.alive()
