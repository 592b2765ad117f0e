"""One pooled HTTP/1.1 connection to an upstream host."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from trellis.runtime.secrets import peer_principal, peer_sans
from trellis.runtime.wire import Headers

if TYPE_CHECKING:
    from trellis.runtime.cluster import HostRuntime

log = logging.getLogger("trellis.upstream")


class Corkable(Protocol):
    last_activity: float

    def cork(self) -> None: ...
    def uncork(self) -> None: ...


class UpstreamListener(Protocol):
    """What a connection reports to the request it is serving (the router's stream)."""

    @property
    def conn(self) -> Corkable:
        """The downstream connection the response goes to."""

    def on_response_headers(self, status: int, headers: Headers, keep_alive: bool) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def on_upstream_upgrade(self, rest: bytes) -> None: ...
    def on_upstream_reset(self, reason: str) -> None: ...
    def on_upstream_data(self, data: bytes) -> None: ...
    def pause_downstream(self) -> None: ...
    def resume_downstream(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """Parses responses with httptools and hands events to the attached stream.

    A connection serves one request at a time; between requests it sits idle in
    its host's pool. Anything the upstream sends while idle is a protocol error
    and closes the connection.
    """

    __slots__ = (
        "_headers",
        "_parser",
        "closed",
        "host",
        "idle_since",
        "listener",
        "peer_principal",
        "transport",
        "tunnel",
    )

    def __init__(self, host: HostRuntime) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.listener: UpstreamListener | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: Headers = []
        self.closed = False
        self.tunnel = False
        self.idle_since = 0.0
        self.peer_principal: str | None = None  # the upstream's SPIFFE ID over mTLS

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peercert = transport.get_extra_info("peercert")
        if peercert:
            self.peer_principal = peer_principal(peer_sans(peercert))

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        if listener is None:
            self.close()
            return
        sink = listener.conn
        sink.last_activity = time.monotonic()
        if self.tunnel:
            listener.on_upstream_data(data)
            return
        sink.cork()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            self.tunnel = True
            listener.on_upstream_upgrade(data[offset:])
        except httptools.HttpParserError as exc:
            if isinstance(exc, httptools.HttpParserCallbackError):
                log.error(
                    "upstream %s: response handling failed",
                    self.host.address,
                    exc_info=exc.__context__,
                )
            self.close()
            if self.listener is not None:
                self.listener = None
                listener.on_upstream_reset(f"protocol error: {exc}")
        finally:
            sink.uncork()

    def eof_received(self) -> bool | None:
        if self.tunnel and self.listener is not None:
            self.listener.on_upstream_data(b"")
            return True  # keep the write side open for a half-closed tunnel
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.host.pool.connection_closed(self)
        listener = self.listener
        if listener is not None:
            self.listener = None
            listener.on_upstream_reset("connection termination")

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.pause_downstream()

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.resume_downstream()

    # -- httptools callbacks ---------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        # Handing the list over (and starting a new one) replaces an
        # on_message_begin callback per response.
        headers = self._headers
        self._headers = []
        if self.listener is not None:
            parser = self._parser
            self.listener.on_response_headers(
                parser.get_status_code(), headers, parser.should_keep_alive()
            )

    def on_body(self, body: bytes) -> None:
        if self.listener is not None:
            self.listener.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.listener is not None:
            self.listener.on_response_complete()

    # -- used by the stream and the pool ------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def write_eof(self) -> None:
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    def pause_reading(self) -> None:
        transport = self.transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_reading():
            transport.resume_reading()

    def close(self) -> None:
        """Close now; `connection_lost` follows and tells the pool."""
        transport = self.transport
        if transport is not None and not self.closed:
            self.closed = True
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            self.closed = True
            transport.abort()
