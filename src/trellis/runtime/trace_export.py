"""Sending spans to an OTLP collector: a bounded queue, batches, one export at a time.

The request path only appends to the queue (`add`); a full queue drops the
span and counts it (`tracing.opentelemetry.spans_dropped`), so a slow or dead
collector never blocks or fails a request. A task of its own takes batches of
up to `batch_size` spans, waiting up to `batch_delay` seconds for a batch to
fill, encodes them as an OTLP `ExportTraceServiceRequest` and sends it to an
endpoint of the provider's cluster: gRPC `TraceService/Export` over the
proxy's own h2 client (`trellis.runtime.grpc_stream`), or OTLP/HTTP, the
protobuf body POSTed over HTTP/1.1. Collector connections are plaintext.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence

from trellis.core.addresses import EndpointAddress, PipeAddress
from trellis.core.prometheus import StatsRegistry
from trellis.core.tracing import TracingProvider
from trellis.runtime.cluster import ClusterManager
from trellis.runtime.otlp import encode_export_request
from trellis.runtime.tracing import Attribute, SpanRecord

log = logging.getLogger("trellis.tracing")

EXPORT_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MAX_QUEUE = 2048  # the OpenTelemetry SDK's batch processor defaults
BATCH_SIZE = 512
BATCH_DELAY = 1.0
_LOG_EVERY = 60.0  # at most one warning a minute about a failing collector
_MAX_STATUS_LINE = 1024


class ExportError(Exception):
    """The collector could not be reached or refused the spans."""


class SpanExporter:
    """Batches spans for one provider and sends them; owned by the config manager."""

    def __init__(
        self,
        provider: TracingProvider,
        service: str,
        resource: Sequence[Attribute],
        clusters: ClusterManager,
        stats: StatsRegistry,
        loop: asyncio.AbstractEventLoop,
        *,
        max_queue: int = MAX_QUEUE,
        batch_size: int = BATCH_SIZE,
        batch_delay: float = BATCH_DELAY,
    ) -> None:
        self.provider = provider
        self.service = service
        self.resource = tuple(resource)
        self.clusters = clusters
        self.loop = loop
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        self._queue: collections.deque[SpanRecord] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._last_warning = -_LOG_EVERY
        self._sent = stats.counter(
            "envoy_tracing_opentelemetry_spans_sent", stat_name="tracing.opentelemetry.spans_sent"
        )
        self._dropped = stats.counter(
            "envoy_tracing_opentelemetry_spans_dropped",
            stat_name="tracing.opentelemetry.spans_dropped",
        )
        self._failed = stats.counter(
            "envoy_tracing_opentelemetry_exports_failed",
            stat_name="tracing.opentelemetry.exports_failed",
        )

    def add(self, span: SpanRecord) -> None:
        """Queue a finished span (request path: no I/O, never blocks)."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            self._dropped.value += 1
            return
        queue.append(span)
        if self._task is None:
            self._task = self.loop.create_task(self._run(), name="span exporter")

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        queue = self._queue
        try:
            while queue:
                if len(queue) < self.batch_size:
                    await asyncio.sleep(self.batch_delay)
                batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
                await self._export(batch)
        finally:
            self._task = None
            if queue and not self.loop.is_closed():
                self._task = self.loop.create_task(self._run(), name="span exporter")

    async def _export(self, batch: list[SpanRecord]) -> None:
        body = encode_export_request(self.service, self.resource, batch)
        try:
            async with asyncio.timeout(self.provider.timeout):
                await self._send(body)
        except Exception as exc:  # the collector's trouble must never reach requests
            self._failed.value += 1
            self._dropped.value += len(batch)
            now = time.monotonic()
            if now - self._last_warning >= _LOG_EVERY:
                self._last_warning = now
                log.warning(
                    "exporting %d spans to cluster %s failed: %s",
                    len(batch),
                    self.provider.cluster,
                    exc or type(exc).__name__,
                )
            return
        self._sent.value += len(batch)

    def _endpoint(self) -> EndpointAddress:
        cluster = self.clusters.clusters.get(self.provider.cluster)
        if cluster is None:
            raise ExportError(f"cluster {self.provider.cluster!r} is not known (yet)")
        if cluster.config.transport_socket is not None:
            raise ExportError("TLS to the collector is not supported")
        index = cluster.choose_host()
        if index is None:
            raise ExportError(f"cluster {self.provider.cluster!r} has no healthy endpoint")
        return cluster.hosts[index].address

    async def _send(self, body: bytes) -> None:
        address = self._endpoint()
        provider = self.provider
        if provider.grpc:
            # Imported here: h2 costs the sidecar ~0.8 MiB, paid only by an OTLP/gRPC exporter.
            from trellis.runtime.grpc_stream import unary_call  # noqa: PLC0415

            await unary_call(address, EXPORT_PATH, body, call_timeout=provider.timeout)
            return
        await post_protobuf(address, provider.authority or str(address), provider.path, body)

    async def close(self) -> None:
        """Stop exporting (what is queued is dropped)."""
        task = self._task
        self._queue.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def post_protobuf(address: EndpointAddress, authority: str, path: str, body: bytes) -> None:
    """OTLP/HTTP: POST the request body, one connection per export; 2xx is success."""
    if isinstance(address, PipeAddress):
        reader, writer = await asyncio.open_unix_connection(address.path)
    else:
        reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {authority}\r\n"
            "content-type: application/x-protobuf\r\nuser-agent: trellis-proxy\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        line = await reader.readline()
        if len(line) > _MAX_STATUS_LINE or not line.startswith(b"HTTP/1."):
            raise ExportError("the collector did not answer with HTTP/1.x")
        parts = line.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if not 200 <= status < 300:
            raise ExportError(f"the collector answered {line.strip().decode('latin-1')}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
