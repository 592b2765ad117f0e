"""The application's own metrics, merged into the sidecar's `/stats/prometheus`.

Istio's agent serves one endpoint that holds both the proxy's metrics and the
application's (when the workload's `prometheus.io/port` annotation says where
they are), so one scrape job covers the mesh. Here the admin server asks the
application at scrape time: `GET http://127.0.0.1:PORT/PATH`, bounded in time
and size. A failed scrape leaves the application's part out and counts in
`istio_agent_scrape_failures_total{type="application"}`; the proxy's own
metrics are served either way.
"""

from __future__ import annotations

import asyncio
import logging

from trellis.core.config import AppMetrics

log = logging.getLogger("trellis.admin")

SCRAPE_TIMEOUT = 5.0
MAX_BYTES = 16 * 1024 * 1024
_ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"


class AppMetricsScraper:
    """Fetches the application's Prometheus text; counts the failures."""

    def __init__(self, target: AppMetrics, host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.failures = 0

    async def render(self) -> str:
        """The application's metrics (text format 0.0.4, newline-terminated) and our
        failure counter; only the counter when the application did not answer."""
        try:
            text = await asyncio.wait_for(self._fetch(), SCRAPE_TIMEOUT)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            self.failures += 1
            log.debug("scraping the application's metrics failed: %s", exc)
            text = ""
        return text + self._failures_text()

    async def _fetch(self) -> str:
        reader, writer = await asyncio.open_connection(self.host, self.target.port)
        try:
            request = (
                f"GET {self.target.path} HTTP/1.1\r\nHost: {self.host}:{self.target.port}\r\n"
                f"Accept: {_ACCEPT}\r\nUser-Agent: trellis-proxy\r\nConnection: close\r\n\r\n"
            )
            writer.write(request.encode("latin-1"))
            chunks: list[bytes] = []
            size = 0
            while chunk := await reader.read(1 << 16):
                size += len(chunk)
                if size > MAX_BYTES:
                    raise ValueError(f"the application's metrics exceed {MAX_BYTES} bytes")
                chunks.append(chunk)
        finally:
            writer.close()
        return merged_text(parse_response(b"".join(chunks)))

    def _failures_text(self) -> str:
        name = "istio_agent_scrape_failures_total"
        return (
            f"# HELP {name} Scrapes of the application's metrics that failed.\n"
            f"# TYPE {name} counter\n"
            f'{name}{{type="application"}} {self.failures}\n'
        )


def parse_response(data: bytes) -> bytes:
    """The body of a complete HTTP/1.1 200 response (content-length, chunked or
    until close); ValueError saying what is wrong otherwise."""
    if len(data) > MAX_BYTES:
        raise ValueError(f"the application's metrics exceed {MAX_BYTES} bytes")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("incomplete response from the application's metrics port")
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
        raise ValueError("not an HTTP response from the application's metrics port")
    if status[1] != b"200":
        raise ValueError(f"the application's metrics answered {status[1].decode('latin-1')}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return _dechunk(body)
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit() or len(body) < int(length):
            raise ValueError("truncated response from the application's metrics port")
        return body[: int(length)]
    return body


def _dechunk(body: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            raise ValueError("bad chunked body from the application's metrics port")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise ValueError("bad chunk size from the application's metrics port") from None
        if size == 0:
            return b"".join(out)
        if len(rest) < size + 2:
            raise ValueError("truncated chunk from the application's metrics port")
        out.append(rest[:size])
        body = rest[size + 2 :]


def merged_text(body: bytes) -> str:
    """Application text ready to follow ours: OpenMetrics' `# EOF` dropped, newline-ended."""
    text = body.decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip() != "# EOF"]
    return "\n".join(lines) + "\n" if lines else ""
