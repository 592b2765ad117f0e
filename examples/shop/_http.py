"""Plain HTTP plumbing shared by the shop's services (standard library only).

There is no mesh logic here on purpose: no retries, TLS, metrics or tracing
library, and no peer addresses. A service calls its peers by name
(`http://catalog/products`) with `urllib.request`, which sends the request to
`HTTP_PROXY` when the environment sets it (explicit capture: the sidecar's
outbound listener) and otherwise resolves the name itself (transparent
capture: the name resolves to the service's virtual IP). The only thing a
service does for the mesh is copy the trace headers of the request it is
serving onto the requests it makes, so the sidecars can join the spans.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
)
"""Headers copied from the request being served onto every outgoing call."""

MAX_BODY_BYTES = 64 * 1024
CALL_TIMEOUT_S = 10.0
"""A safety net so a hung peer cannot hold a thread forever; the mesh's own
timeouts (VirtualService `timeout`, `perTryTimeout`) are shorter."""

USER_ID = r"[A-Za-z0-9_.-]{1,64}"
"""What a user id in a path may look like."""


class HttpError(Exception):
    """Answered as `status` with the JSON body `{"error": reason, **details}`."""

    def __init__(self, status: int, reason: str, **details: object) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.details = details


@dataclass(frozen=True, slots=True)
class Reply:
    """What a route handler answers: a JSON document, or text with its type."""

    status: int = 200
    document: object = None
    text: str | None = None
    content_type: str = "application/json"

    @classmethod
    def html(cls, text: str, status: int = 200) -> Reply:
        return cls(status=status, text=text, content_type="text/html; charset=utf-8")

    def encode(self) -> bytes:
        if self.text is not None:
            return self.text.encode()
        return json.dumps(self.document, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class Request:
    """One request as a route handler sees it; `params` are the path regex's groups."""

    method: str
    path: str
    params: tuple[str, ...]
    headers: Message
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)

    @property
    def trace(self) -> dict[str, str]:
        """The trace headers to copy onto outgoing calls."""
        return {name: value for name in TRACE_HEADERS if (value := self.headers.get(name))}

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; an empty body is `{}`; anything else is a 400."""
        if not self.body:
            return {}
        try:
            document = json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise HttpError(400, "body must be a JSON object")
        return document


Handler = Callable[[Request], Reply]
Route = tuple[str, "re.Pattern[str]", Handler]


def route(method: str, pattern: str, handler: Handler) -> Route:
    """A route: `pattern` must match the whole path (without the query string)."""
    return (method, re.compile(pattern), handler)


@dataclass(frozen=True, slots=True)
class Response:
    """A peer's answer: its status and its body decoded as JSON (None if it was not JSON)."""

    status: int
    document: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def call(
    method: str,
    url: str,
    trace: Mapping[str, str],
    document: object = None,
    timeout: float = CALL_TIMEOUT_S,
) -> Response:
    """Call a peer by name, e.g. `call("GET", "http://catalog/products", req.trace)`.

    Any HTTP status is returned; a peer that cannot be reached (or answers
    with a 2xx that is not JSON) raises `HttpError(502)` naming it.
    """
    peer = urlsplit(url).netloc
    headers = {"accept": "application/json", **trace}
    data = None
    if document is not None:
        data = json.dumps(document).encode()
        headers["content-type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, body = answer.status, answer.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(MAX_BODY_BYTES + 1)
        exc.close()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise HttpError(502, f"{peer} unreachable: {reason}") from None
    try:
        decoded = json.loads(body) if body else None
    except ValueError:
        decoded = None
    if 200 <= status < 300 and decoded is None:
        raise HttpError(502, f"{peer} answered {status} without a JSON body")
    return Response(status, decoded)


def expect_ok(response: Response, peer: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer; any other answer becomes a 502 naming the peer."""
    if response.ok:
        if not isinstance(response.document, dict):
            raise HttpError(502, f"{peer} answered {response.status} without a JSON object")
        return response.document
    detail = response.document.get("error") if isinstance(response.document, dict) else None
    raise HttpError(
        502, f"{peer} answered {response.status}", upstream_status=response.status, upstream=detail
    )


class ShopServer(ThreadingHTTPServer):
    """A threading HTTP/1.1 server dispatching to a route table."""

    daemon_threads = True

    def __init__(self, service: str, routes: Sequence[Route], host: str, port: int) -> None:
        self.service = service
        self.routes = tuple(routes)
        super().__init__((host, port), _ShopHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _ShopHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: with Nagle on, the body waits
    # for the client's delayed ACK (~40 ms) on every keep-alive request.
    disable_nagle_algorithm = True
    server: ShopServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: `_handle` logs one line per request itself, with its duration."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The server's own refusals (unsupported method, malformed request line), as JSON."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        reason = message or self.responses.get(code, ("error",))[0]
        self._send(code, json.dumps({"error": reason}).encode() + b"\n", "application/json")

    def log_message(self, format: str, *args: Any) -> None:
        """The server's own messages (malformed requests), in the same one-line format."""
        log(f"{self.server.service} {self.address_string()} {format % args}")

    def _handle(self) -> None:
        started = time.monotonic()
        target = urlsplit(self.path)
        try:
            body = self._read_body()
            reply = self._dispatch(target.path, dict(parse_qsl(target.query)), body)
        except HttpError as exc:
            reply = Reply(exc.status, {"error": exc.reason, **exc.details})
        except Exception:
            traceback.print_exc(file=sys.stderr)
            reply = Reply(500, {"error": "internal error"})
        self._send(reply.status, reply.encode(), reply.content_type)
        elapsed_ms = (time.monotonic() - started) * 1000
        request_id = self.headers.get("x-request-id", "-")
        log(
            f"{self.server.service} {self.command} {target.path} {reply.status}"
            f" {elapsed_ms:.1f}ms rid={request_id}"
        )

    def _dispatch(self, path: str, query: dict[str, str], body: bytes) -> Reply:
        allowed = []
        for method, pattern, handler in self.server.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method != self.command and (method, self.command) != ("GET", "HEAD"):
                allowed.append(method)
                continue
            request = Request(self.command, path, match.groups(), self.headers, body, query)
            return handler(request)
        if allowed:
            raise HttpError(405, f"{self.command} not allowed on {path}", allowed=sorted(allowed))
        raise HttpError(404, f"no such resource: {path}")

    def _read_body(self) -> bytes:
        length = self.headers.get("content-length")
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if length is not None and chunked:
            self.close_connection = True
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if chunked:
            return self._read_chunked()
        if length is None:
            return b""
        if not length.isdigit():
            self.close_connection = True
            raise HttpError(400, f"bad Content-Length {length!r}")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise HttpError(413, f"body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                self.close_connection = True
                raise HttpError(400, "bad chunk size") from None
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise HttpError(413, f"body over {MAX_BODY_BYTES} bytes")
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        if self.close_connection:
            self.send_header("connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def log(line: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    sys.stderr.write(f"{stamp} {line}\n")
    sys.stderr.flush()


def service_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every service takes: `--host` and `--port`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, required=True, help="port to listen on; 0 picks a free one"
    )
    return parser


def serve(service: str, routes: Sequence[Route], host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT; logs `SERVICE listening on http://HOST:PORT` first."""
    if not 0 <= port <= 65535:
        raise SystemExit(f"{service}: --port must be 0-65535, not {port}")
    server = ShopServer(service, [route("GET", "/healthz", _healthz(service)), *routes], host, port)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"{service} listening on http://{host}:{server.port}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        log(f"{service} stopped")


def _healthz(service: str) -> Handler:
    def healthz(request: Request) -> Reply:
        return Reply(200, {"status": "ok", "service": service})

    return healthz
