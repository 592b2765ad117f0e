"""The trace store: OTLP export requests in, bounded traces and summaries out."""

from __future__ import annotations

from trellis.controlplane.otlp import receive
from trellis.controlplane.traces import TraceStore, spans_from_otlp
from trellis.xds.otlp_trace_pb2 import (
    AnyValue,
    ExportTraceServiceRequest,
    KeyValue,
    Resource,
    ResourceSpans,
    ScopeSpans,
    Span,
    Status,
)

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")


def span(
    span_id: int, parent: int | None, start: int, end: int, name: str, **extra: object
) -> Span:
    return Span(
        trace_id=extra.get("trace_id", TRACE),  # type: ignore[arg-type]
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        kind=Span.SPAN_KIND_SERVER if parent is None else Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        attributes=[KeyValue(key="http.status_code", value=AnyValue(int_value=200))],
        status=Status(code=extra.get("status", Status.STATUS_CODE_UNSET)),  # type: ignore[arg-type]
    )


def export(service: str, *spans: Span) -> ExportTraceServiceRequest:
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
    )
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=list(spans))])
        ]
    )


def test_spans_keep_ids_parents_service_and_attributes() -> None:
    spans, rejected = spans_from_otlp(export("web", span(1, None, 1_000, 9_000, "GET /")))
    assert rejected == 0
    (record,) = spans
    assert record.trace_id == TRACE.hex() and record.span_id == "0000000000000001"
    assert record.parent_id is None and record.service == "web" and record.kind == "server"
    assert record.attributes == {"http.status_code": "200"}
    assert record.to_json()["durationMs"] == 0.008


def test_malformed_ids_are_rejected_with_a_partial_success() -> None:
    store = TraceStore()
    bad = span(2, None, 0, 1, "x", trace_id=b"\x00" * 16)
    answer = receive(store, export("web", span(1, None, 0, 5, "ok"), bad))
    assert answer.partial_success.rejected_spans == 1
    assert "malformed" in answer.partial_success.error_message
    assert len(store) == 1


def test_a_trace_spread_over_exports_is_summarized_from_its_root() -> None:
    store = TraceStore(clock=lambda: 42.0)
    receive(store, export("cart", span(2, 1, 2_000_000, 6_000_000, "GET /cart")))
    receive(
        store,
        export(
            "web",
            span(1, None, 1_000_000, 9_000_000, "GET /"),
            span(3, 2, 3_000_000, 4_000_000, "db", status=Status.STATUS_CODE_ERROR),
        ),
    )
    (summary,) = store.summaries()
    body = summary.to_json()
    assert (body["rootService"], body["rootName"]) == ("web", "GET /")
    assert body["durationMs"] == 8.0 and body["spanCount"] == 3 and body["errorCount"] == 1
    assert body["services"] == ["cart", "web"] and body["receivedAt"] == 42.0
    spans = store.trace(TRACE.hex().upper())
    assert spans is not None
    assert [(s.span_id[-1], s.parent_id and s.parent_id[-1]) for s in spans] == [
        ("1", None),
        ("2", "1"),
        ("3", "2"),
    ]
    assert store.summaries(service="nobody") == []


def test_the_store_is_bounded_in_traces_and_spans() -> None:
    store = TraceStore(max_traces=2, max_spans=2)
    for number in range(1, 4):
        trace_id = number.to_bytes(16, "big")
        receive(store, export("web", span(1, None, 0, 1, "a", trace_id=trace_id)))
    assert len(store) == 2 and store.trace((1).to_bytes(16, "big").hex()) is None
    answer = receive(store, export("web", *(span(n, None, 0, 1, "a") for n in range(1, 4))))
    assert answer.partial_success.rejected_spans == 1  # a third span in a full trace
    spans = store.trace(TRACE.hex())
    assert spans is not None and len(spans) == 2


def test_the_store_is_bounded_in_spans_overall() -> None:
    store = TraceStore(max_traces=100, max_spans=3, max_total_spans=4)
    for number in range(1, 4):
        trace_id = number.to_bytes(16, "big")
        spans = (span(n, None, 0, 1, "a", trace_id=trace_id) for n in range(1, 3))
        receive(store, export("web", *spans))
    assert len(store) == 2  # 6 spans > 4: the oldest trace went
    assert store.trace((1).to_bytes(16, "big").hex()) is None
