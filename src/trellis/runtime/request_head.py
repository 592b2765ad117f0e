"""An HTTP/1.1 request head, as httptools parsed it, checked and turned into a `Stream`.

llhttp already refuses malformed syntax; these checks refuse what it lets
through but a proxy must not forward: an HTTP version not accepted, a
duplicate or missing `Host`, a transfer coding other than one `chunked` (a
request whose framing the upstream could read differently: smuggling), a
`CONNECT`, an absolute-form target that is not allowed or not http(s), an
upgrade to a protocol the route config does not list. Each refusal is a
`RequestRejectedError` carrying the status the client gets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trellis.runtime import wire
from trellis.runtime.router import Stream

if TYPE_CHECKING:
    import httptools

    from trellis.core.config import HttpConnectionManager
    from trellis.runtime.downstream import DownstreamHttp1
    from trellis.runtime.wire import Headers


# The request headers `new_stream` checks.
_CONNECTION = frozenset((b"connection", b"proxy-connection"))  # llhttp reads both for keep-alive
_CHECKED = frozenset((b"host", b"transfer-encoding", b"content-length", b"expect")) | _CONNECTION


class RequestRejectedError(Exception):
    """A request the proxy refuses before routing; carries the status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def new_stream(
    conn: DownstreamHttp1,
    parser: httptools.HttpRequestParser,
    target: bytes,
    headers: Headers,
    head_bytes: int,
) -> Stream:
    """The stream for the request head `parser` just completed on `conn` (its
    `target`, lower-cased `headers` and size in bytes as the callbacks collected
    them), or a `RequestRejectedError`. Sets `conn.http11` to the request's version
    and answers `100 Continue` itself when the config does not pass it on."""
    config = conn.ctx.config
    keep_alive = parser.should_keep_alive()
    host: bytes | None = None
    chunked = has_length = expect_continue = has_connection = False
    refusal: RequestRejectedError | None = None  # raised after a version error, which wins
    for name, value in headers:
        if name not in _CHECKED:
            continue  # most headers: one set lookup instead of the tests below
        if name == b"host":
            if host is not None:
                refusal = RequestRejectedError(400, "duplicate host header")
                break
            host = value
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked" or chunked:
                refusal = RequestRejectedError(501, "unsupported transfer encoding")
                break
            chunked = True
        elif name == b"content-length":
            has_length = value.strip() != b"0"
        elif name in _CONNECTION:
            has_connection = True
        elif name == b"expect" and value.lower() == b"100-continue":
            expect_continue = True
    # Persistent without a (Proxy-)Connection header means HTTP/1.1 (RFC 9112 section
    # 9.3: of the versions llhttp accepts, 0.9, 1.0 and 2.0 persist only when asked to).
    # That spares the usual request the parser's version string.
    if keep_alive and not has_connection and refusal is None:
        conn.http11 = True
    else:
        conn.http11 = is_http11(parser.get_http_version(), config)
    if refusal is not None:
        raise refusal
    method = parser.get_method()
    if target[:1] != b"/":
        # Absolute form (explicit proxy): the URL's authority replaces any Host header.
        target, host = absolute_form(method, target, config)
        headers = [(n, v) for n, v in headers if n != b"host"]
        headers.insert(0, (b"host", host))
    if host is None:
        if conn.http11:
            raise RequestRejectedError(400, "missing host header")
        host = b""
    upgrade = parser.should_upgrade()
    if upgrade:
        upgrade = upgrade_allowed(headers, config)
    if expect_continue and not config.proxy_100_continue:
        headers = [(n, v) for n, v in headers if n != b"expect"]
        conn.write(wire.CONTINUE_100)
    stream = Stream(
        conn,
        conn.ctx,
        method,
        host.decode("latin-1"),
        target.decode("latin-1"),
        headers,
        keep_alive and not conn.draining,
        upgrade,
        chunked,
        chunked or has_length,
    )
    stream.request_head_bytes = head_bytes
    return stream


def is_http11(version: str, config: HttpConnectionManager) -> bool:
    """Whether a request of HTTP `version` is 1.1 (else 1.0); refuses the others, and
    1.0 unless the config accepts it."""
    if version == "1.1":
        return True
    if version != "1.0":
        raise RequestRejectedError(400, f"unsupported HTTP version {version}")
    if not config.accept_http_10:
        raise RequestRejectedError(426, "HTTP/1.0 is not accepted")
    return False


def absolute_form(
    method: bytes, target: bytes, config: HttpConnectionManager
) -> tuple[bytes, bytes]:
    """`GET http://host/path` as sent to an explicit proxy: split host and path."""
    if method == b"CONNECT":
        raise RequestRejectedError(403, "CONNECT is not supported")
    if target == b"*" and method == b"OPTIONS":
        return target, b""
    if not config.allow_absolute_url:
        raise RequestRejectedError(400, "absolute URL not allowed")
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise RequestRejectedError(400, "invalid request target")
    authority, slash, path = rest.partition(b"/")
    if not authority:
        raise RequestRejectedError(400, "invalid request target")
    return slash + path if slash else b"/", authority


def upgrade_allowed(headers: Headers, config: HttpConnectionManager) -> bool:
    """Whether the request's `upgrade` is one to perform; an unlisted protocol
    other than h2c is refused."""
    for name, value in headers:
        if name == b"upgrade":
            protocol = value.strip().lower().decode("latin-1")
            if protocol in config.upgrade_types:
                return True
            if protocol == "h2c":
                return False  # like Envoy: served as HTTP/1.1, the upgrade headers dropped
            raise RequestRejectedError(403, "upgrade not allowed")
    return False
