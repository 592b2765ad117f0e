"""HTTP/1.1 bytes on the wire: status lines, heads, chunk framing, local replies."""

from __future__ import annotations

import time
from http import HTTPStatus

Headers = list[tuple[bytes, bytes]]

SERVER_NAME = b"trellis"
_CRLF = b"\r\n"
_JOIN_FIELD = b": ".join  # (name, value) -> b"name: value", without a Python-level loop


def _status_line(code: int) -> bytes:
    try:
        reason = HTTPStatus(code).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {code} {reason}\r\n".encode("latin-1")


STATUS_LINES: dict[int, bytes] = {code: _status_line(code) for code in range(100, 600)}
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


# A head's header lines are joined straight into the head, without building the
# block of lines as bytes of its own first: this runs twice per proxied request.


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    if not headers:
        return b"%s %s HTTP/1.1\r\n\r\n" % (method, target)
    fields = b"\r\n".join(map(_JOIN_FIELD, headers))
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n", fields, b"\r\n\r\n"))


def response_head(code: int, headers: Headers) -> bytes:
    status = STATUS_LINES.get(code) or _status_line(code)
    if not headers:
        return status + _CRLF
    return b"".join((status, b"\r\n".join(map(_JOIN_FIELD, headers)), b"\r\n\r\n"))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def local_reply(
    code: int,
    body: bytes,
    *,
    close: bool,
    content_type: bytes = b"text/plain",
    extra: Headers | None = None,
    head_only: bool = False,
) -> bytes:
    """A complete response the proxy generates itself (Envoy calls these local replies)."""
    headers: Headers = []
    if body:
        headers.append((b"content-type", content_type))
    headers.append((b"content-length", str(len(body)).encode()))
    if extra:
        headers.extend(extra)
    headers.append((b"date", http_date()))
    headers.append((b"server", SERVER_NAME))
    if close:
        headers.append((b"connection", b"close"))
    head = response_head(code, headers)
    return head if head_only else head + body


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(now: float | None = None) -> bytes:
    """An IMF-fixdate (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.

    Formatted here rather than with `email.utils`, whose imports cost the proxy
    ~1.3 MiB, and independent of the locale.
    """
    t = time.gmtime(now)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    ).encode("ascii")
