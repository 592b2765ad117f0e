"""The last traces the proxies exported, kept in memory for the dashboard.

`spans_from_otlp` turns an OTLP `ExportTraceServiceRequest` into plain
`SpanRecord`s (ids as lowercase hex, the service from the resource's
`service.name`), rejecting spans whose ids are malformed. `TraceStore` keeps
at most `max_traces` traces of at most `max_spans` spans each and
`max_total_spans` in all; the trace updated longest ago is dropped first.
Pure: no I/O, the clock is passed in.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trellis.xds.otlp_trace_pb2 import (
    AnyValue,
    ExportTraceServiceRequest,
    KeyValue,
    Span,
    Status,
)

MAX_ATTRIBUTES = 32
MAX_VALUE_CHARS = 256
_KINDS = {
    Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
}
_STATUSES = {
    Status.STATUS_CODE_UNSET: "unset",
    Status.STATUS_CODE_OK: "ok",
    Status.STATUS_CODE_ERROR: "error",
}


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span as the dashboard shows it; times in Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: str
    start: int
    end: int
    status: str
    status_message: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "parentSpanId": self.parent_id,
            "name": self.name,
            "service": self.service,
            "kind": self.kind,
            "startTimeUnixNano": self.start,
            "endTimeUnixNano": self.end,
            "durationMs": round((self.end - self.start) / 1e6, 3),
            "status": self.status,
            "statusMessage": self.status_message,
            "attributes": dict(self.attributes),
        }


def _text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind == "array_value":
        return "[" + ", ".join(_text(item) for item in value.array_value.values) + "]"
    if kind == "kvlist_value":
        return (
            "{" + ", ".join(f"{kv.key}={_text(kv.value)}" for kv in value.kvlist_value.values) + "}"
        )
    return str(getattr(value, kind))


def _attributes(items: Iterable[KeyValue]) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items:
        if len(result) >= MAX_ATTRIBUTES:
            break
        result[item.key] = _text(item.value)[:MAX_VALUE_CHARS]
    return result


def _span(span: Span, service: str) -> SpanRecord | None:
    """The record of a span, or None when its ids are malformed (zero or the wrong size)."""
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return None
    if len(span.span_id) != 8 or not any(span.span_id):
        return None
    parent = span.parent_span_id
    if parent and len(parent) != 8:
        return None
    end = max(span.end_time_unix_nano, span.start_time_unix_nano)
    return SpanRecord(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=parent.hex() if parent and any(parent) else None,
        name=span.name[:MAX_VALUE_CHARS],
        service=service,
        kind=_KINDS.get(span.kind, "unspecified"),
        start=span.start_time_unix_nano,
        end=end,
        status=_STATUSES.get(span.status.code, "unset"),
        status_message=span.status.message[:MAX_VALUE_CHARS],
        attributes=_attributes(span.attributes),
    )


def spans_from_otlp(request: ExportTraceServiceRequest) -> tuple[list[SpanRecord], int]:
    """The valid spans of an export request, and how many were rejected."""
    spans: list[SpanRecord] = []
    rejected = 0
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = resource.get("service.name") or "unknown"
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                record = _span(span, service)
                if record is None:
                    rejected += 1
                else:
                    spans.append(record)
    return spans, rejected


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """A trace at a glance: its root span, duration, services and size."""

    trace_id: str
    root: SpanRecord
    start: int
    end: int
    services: tuple[str, ...]
    spans: int
    errors: int
    received: float

    def to_json(self) -> dict[str, Any]:
        return {
            "traceId": self.trace_id,
            "rootService": self.root.service,
            "rootName": self.root.name,
            "startTimeUnixNano": self.start,
            "durationMs": round((self.end - self.start) / 1e6, 3),
            "services": list(self.services),
            "spanCount": self.spans,
            "errorCount": self.errors,
            "receivedAt": self.received,
        }


def summarize(trace_id: str, spans: Iterable[SpanRecord], received: float) -> TraceSummary:
    """The summary of a non-empty trace; the root is the earliest span without a known parent."""
    items = list(spans)
    ids = {span.span_id for span in items}
    roots = [span for span in items if span.parent_id is None or span.parent_id not in ids]
    root = min(roots or items, key=lambda span: (span.parent_id is not None, span.start))
    return TraceSummary(
        trace_id=trace_id,
        root=root,
        start=min(span.start for span in items),
        end=max(span.end for span in items),
        services=tuple(sorted({span.service for span in items})),
        spans=len(items),
        errors=sum(1 for span in items if span.status == "error"),
        received=received,
    )


class TraceStore:
    """The last `max_traces` traces, each with at most `max_spans` spans."""

    def __init__(
        self,
        max_traces: int = 500,
        max_spans: int = 1000,
        max_total_spans: int = 50_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_traces < 1 or max_spans < 1 or max_total_spans < max_spans:
            raise ValueError(
                "max_traces, max_spans must be at least 1, max_total_spans ≥ max_spans"
            )
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.max_total_spans = max_total_spans
        self._total = 0
        self._clock = clock
        self._traces: OrderedDict[str, dict[str, SpanRecord]] = OrderedDict()
        self._received: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._traces)

    def add(self, spans: Iterable[SpanRecord]) -> int:
        """Keep `spans`; returns how many were dropped because their trace was full.

        A span received again (same trace and span id) replaces the earlier copy.
        """
        dropped = 0
        now = self._clock()
        for span in spans:
            trace = self._traces.get(span.trace_id)
            if trace is None:
                trace = self._traces[span.trace_id] = {}
            self._traces.move_to_end(span.trace_id)
            self._received[span.trace_id] = now
            if span.span_id not in trace and len(trace) >= self.max_spans:
                dropped += 1
                continue
            if span.span_id not in trace:
                self._total += 1
            trace[span.span_id] = span
        while len(self._traces) > self.max_traces or (
            self._total > self.max_total_spans and len(self._traces) > 1
        ):
            oldest, evicted = self._traces.popitem(last=False)
            self._total -= len(evicted)
            del self._received[oldest]
        return dropped

    def summaries(self, limit: int = 50, service: str | None = None) -> list[TraceSummary]:
        """The most recently updated traces first (those with a span of `service` if given)."""
        result: list[TraceSummary] = []
        for trace_id in reversed(self._traces):
            spans = self._traces[trace_id].values()
            if service is not None and all(span.service != service for span in spans):
                continue
            result.append(summarize(trace_id, spans, self._received[trace_id]))
            if len(result) >= limit:
                break
        return result

    def trace(self, trace_id: str) -> list[SpanRecord] | None:
        """The spans of a trace by start time, or None if it is not (or no longer) held."""
        spans = self._traces.get(trace_id.lower())
        if spans is None:
            return None
        return sorted(spans.values(), key=lambda span: (span.start, span.span_id))
