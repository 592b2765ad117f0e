"""Request heads checked by `new_stream`, parsed by a real httptools parser.

`new_stream` takes a persistent request without a Connection header for HTTP/1.1
without asking the parser for its version string; these cases pin that every
other version still gets its own answer.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import httptools
import pytest

from trellis.core.config import HttpConnectionManager
from trellis.runtime.request_head import RequestRejectedError, new_stream

if TYPE_CHECKING:
    from trellis.runtime.downstream import DownstreamHttp1


class _Head:
    """Collects a head like `DownstreamHttp1` and checks it with `new_stream`."""

    def __init__(self, config: HttpConnectionManager) -> None:
        self.conn = SimpleNamespace(
            ctx=SimpleNamespace(config=config),
            draining=False,
            http11=None,
            last_activity=0.0,
            written=[],
        )
        self.conn.write = self.conn.written.append
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.outcome: object = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        conn = cast("DownstreamHttp1", self.conn)
        try:
            stream = new_stream(conn, self.parser, self.url, self.headers, 0)
        except RequestRejectedError as exc:
            self.outcome = exc.status
        else:
            self.outcome = ("http11" if self.conn.http11 else "http10", stream.keep_alive)


def _check(head: bytes, *, accept_http_10: bool = True) -> object:
    config = HttpConnectionManager(
        stat_prefix="test", route_config=None, accept_http_10=accept_http_10
    )
    collector = _Head(config)
    collector.parser.feed_data(head)
    return collector.outcome


@pytest.mark.parametrize(
    ("head", "outcome"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", ("http11", True)),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", ("http11", False)),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", ("http11", True)),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", ("http10", False)),
        (b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", ("http10", True)),
        # llhttp reads Proxy-Connection as Connection: still HTTP/1.0.
        (b"GET / HTTP/1.0\r\nHost: a\r\nProxy-Connection: keep-alive\r\n\r\n", ("http10", True)),
        (b"GET / HTTP/2.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", 400),
        (b"GET / HTTP/0.9\r\nHost: a\r\nProxy-Connection: keep-alive\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ],
)
def test_version_and_persistence(head: bytes, outcome: object) -> None:
    assert _check(head) == outcome


def test_a_refused_version_wins_over_a_refused_header() -> None:
    head = b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nHost: b\r\n\r\n"
    assert _check(head, accept_http_10=False) == 426
    assert _check(head, accept_http_10=True) == 400  # then the duplicate host
    assert _check(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", accept_http_10=False) == 426
