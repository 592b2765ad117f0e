"""Spans as OTLP protobuf: one `ExportTraceServiceRequest` per batch.

The messages are Trellis's restatement of OTLP's (`trellis.xds.otlp_trace_pb2`,
the same bytes on the wire; plain protobuf: no OpenTelemetry SDK in the
proxy). Attribute
values are strings or integers, as the proxy records them.
"""

from __future__ import annotations

from collections.abc import Sequence

from trellis.runtime.tracing import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, Attribute, SpanRecord
from trellis.xds import otlp_trace_pb2 as otlp

SCOPE_NAME = "trellis-proxy"
_KINDS = {
    SPAN_KIND_SERVER: otlp.Span.SPAN_KIND_SERVER,
    SPAN_KIND_CLIENT: otlp.Span.SPAN_KIND_CLIENT,
}


def _key_values(attributes: Sequence[Attribute]) -> list[otlp.KeyValue]:
    result = []
    for key, value in attributes:
        if isinstance(value, int):
            any_value = otlp.AnyValue(int_value=value)
        else:
            any_value = otlp.AnyValue(string_value=value)
        result.append(otlp.KeyValue(key=key, value=any_value))
    return result


def _span(record: SpanRecord) -> otlp.Span:
    span = otlp.Span(
        trace_id=record.trace_id.to_bytes(16, "big"),
        span_id=record.span_id.to_bytes(8, "big"),
        name=record.name,
        kind=_KINDS[record.kind],
        start_time_unix_nano=record.start_ns,
        end_time_unix_nano=max(record.end_ns, record.start_ns),
        attributes=_key_values(record.attributes),
    )
    if record.parent_id:
        span.parent_span_id = record.parent_id.to_bytes(8, "big")
    if record.tracestate:
        span.trace_state = record.tracestate.decode("latin-1")
    if record.error:
        span.status.code = otlp.Status.STATUS_CODE_ERROR
    return span


def encode_export_request(
    service: str, resource: Sequence[Attribute], spans: Sequence[SpanRecord]
) -> bytes:
    """The serialized request carrying `spans` of the service named `service`."""
    request = otlp.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(_key_values([("service.name", service), *resource]))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = SCOPE_NAME
    scope_spans.spans.extend(_span(record) for record in spans)
    return bytes(request.SerializeToString())
