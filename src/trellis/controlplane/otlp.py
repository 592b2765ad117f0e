"""The control plane as an OTLP trace receiver, and the REST API over what it received.

Proxies export spans with OTLP either over gRPC
(`opentelemetry.proto.collector.trace.v1.TraceService/Export`, served on the
xDS gRPC server by `trace_rpc_handler`) or over HTTP (`POST /v1/traces`,
protobuf body, on the REST API port). Both land in one `TraceStore`; spans
with malformed ids are reported back as OTLP partial success.
`GET /api/v1/traces` lists recent traces, `GET /api/v1/traces/{id}` gives
one trace's spans with their parents.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from google.protobuf.message import DecodeError

from trellis.controlplane.api_status import StatusError
from trellis.controlplane.traces import TraceStore, spans_from_otlp
from trellis.xds.otlp_trace_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

log = logging.getLogger("trellis.controlplane.otlp")

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
PROTOBUF = "application/x-protobuf"
MAX_EXPORT_BYTES = 4 << 20
_HEX = frozenset("0123456789abcdef")


def receive(store: TraceStore, request: ExportTraceServiceRequest) -> ExportTraceServiceResponse:
    """Keep the spans of one export; the answer counts the ones not kept."""
    spans, rejected = spans_from_otlp(request)
    dropped = store.add(spans)
    response = ExportTraceServiceResponse()
    problems = []
    if rejected:
        problems.append(f"{rejected} span(s) with malformed trace_id/span_id/parent_span_id")
    if dropped:
        problems.append(f"{dropped} span(s) over the limit of {store.max_spans} per trace")
    if problems:
        response.partial_success.rejected_spans = rejected + dropped
        response.partial_success.error_message = "; ".join(problems)
    return response


def trace_rpc_handler(store: TraceStore) -> grpc.GenericRpcHandler:
    """OTLP/gRPC `TraceService/Export` into `store`, for a grpc.aio server."""

    async def export(
        request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ExportTraceServiceResponse:
        return receive(store, request)

    return grpc.method_handlers_generic_handler(
        TRACE_SERVICE,
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                export,
                request_deserializer=ExportTraceServiceRequest.FromString,
                response_serializer=ExportTraceServiceResponse.SerializeToString,
            )
        },
    )


async def _read_export(request: Request) -> ExportTraceServiceRequest:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != PROTOBUF:
        raise StatusError(
            415,
            f"content type {media_type or '(none)'!r} is not accepted; "
            f"OTLP/HTTP here takes {PROTOBUF} (an ExportTraceServiceRequest)",
        )
    if request.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        raise StatusError(415, "compressed OTLP bodies are not accepted; send them uncompressed")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_EXPORT_BYTES:
            raise StatusError(413, f"the body is larger than {MAX_EXPORT_BYTES} bytes")
    try:
        return ExportTraceServiceRequest.FromString(bytes(body))
    except DecodeError as exc:
        raise StatusError(400, f"the body is not an ExportTraceServiceRequest: {exc}") from None


def _trace_id(text: str) -> str:
    trace_id = text.lower()
    if len(trace_id) != 32 or not set(trace_id) <= _HEX:
        raise StatusError(400, f"trace_id {text!r} is not 32 hexadecimal digits")
    return trace_id


def trace_router(store: TraceStore) -> APIRouter:
    """`POST /v1/traces` (OTLP/HTTP) and the trace queries of the REST API."""
    router = APIRouter(tags=["traces"])

    @router.post(
        "/v1/traces",
        summary="OTLP/HTTP trace export (protobuf)",
        response_class=Response,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def export(request: Request) -> Response:
        answer = receive(store, await _read_export(request))
        return Response(answer.SerializeToString(), media_type=PROTOBUF)

    @router.get("/api/v1/traces", summary="Recent traces, most recently updated first")
    async def traces(
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many")] = 50,
        service: Annotated[
            str | None, Query(description="Only traces with a span of this service")
        ] = None,
    ) -> dict[str, Any]:
        items = store.summaries(limit, service)
        return {"kind": "TraceList", "items": [item.to_json() for item in items]}

    @router.get("/api/v1/traces/{trace_id}", summary="One trace's spans, by start time")
    async def trace(trace_id: str) -> dict[str, Any]:
        spans = store.trace(_trace_id(trace_id))
        if spans is None:
            raise StatusError(404, f"trace {trace_id} is not held (never received, or dropped)")
        return {
            "kind": "Trace",
            "traceId": trace_id.lower(),
            "spans": [span.to_json() for span in spans],
        }

    return router
