"""The downstream side of an HTTP listener: one client connection, HTTP/1.1.

httptools (llhttp) parses strictly; on top of it this module enforces the
header-size limit, has each request head checked (`request_head`: framing that
could smuggle a request is refused), queues pipelined requests, and applies
flow control between client and upstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from trellis.core.addresses import SocketAddress
from trellis.core.authz_match import AuthzRequest, IPAddress, parse_ip
from trellis.core.metrics import ResponseFlag
from trellis.runtime import wire
from trellis.runtime.deadline import Deadline
from trellis.runtime.request_head import RequestRejectedError, new_stream
from trellis.runtime.router import Stream
from trellis.runtime.tunnel import Tunnel
from trellis.runtime.wire import Headers

if TYPE_CHECKING:
    from trellis.runtime.http_context import HttpContext
    from trellis.runtime.listener import ChainRuntime, ListenerRuntime

log = logging.getLogger("trellis.downstream")
_JOIN_LIMIT = 16384  # bodies up to this size are joined to the head before writing


class DownstreamHttp1(asyncio.Protocol):
    __slots__ = (
        "_addresses",
        "_beginning",
        "_header_bytes",
        "_headers",
        "_in_body",
        "_local_text",
        "_parser",
        "_paused",
        "_reject",
        "_url",
        "_wbuf",
        "chain",
        "ctx",
        "current",
        "draining",
        "header_timer",
        "http11",
        "last_activity",
        "listener",
        "local",
        "peer_principal",
        "remote_ip",
        "scheme",
        "streams",
        "transport",
        "tunnel",
    )

    def __init__(
        self,
        listener: ListenerRuntime,
        chain: ChainRuntime,
        local: tuple[str, int] | None = None,
    ) -> None:
        self.listener = listener
        self.chain = chain
        self.ctx: HttpContext = chain.context  # type: ignore[assignment]
        # The original destination (`use_original_dst`); None: the socket's address.
        self.local = local
        self._local_text: str | None = None
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._in_body = False
        self._reject: RequestRejectedError | None = None
        self._paused = 0
        self._beginning = False
        self._wbuf: list[bytes] | None = None
        self.streams: deque[Stream] = deque()
        self.current: Stream | None = None
        self.tunnel: Tunnel | None = None
        self.scheme = b"http"
        self.remote_ip = ""
        self.peer_principal: str | None = None  # set by the listener on mTLS connections
        self._addresses: tuple[IPAddress | None, IPAddress | None, int] | None = None
        self.http11 = True
        self.draining = False
        self.header_timer: Deadline | None = None
        self.last_activity = 0.0

    def authz_request(self, stream: Stream) -> AuthzRequest:
        """What the RBAC filters look at for `stream` (addresses parsed once per connection)."""
        addresses = self._addresses
        if addresses is None:
            local = self.local
            if local is None:
                transport = self.transport
                local = transport.get_extra_info("sockname") if transport is not None else None
                port = self.listener.config.address.port
            else:
                port = local[1]
            addresses = self._addresses = (
                parse_ip(self.remote_ip),
                parse_ip(local[0]) if isinstance(local, tuple) else None,
                port,
            )
        path = stream.path
        query = path.find("?")
        return AuthzRequest(
            principal=self.peer_principal,
            source_ip=addresses[0],
            destination_ip=addresses[1],
            destination_port=addresses[2],
            method=stream.method.decode("latin-1"),
            path=path if query < 0 else path[:query],
            authority=stream.authority,
            headers=stream.headers,
        )

    def local_address(self) -> str | None:
        """Where the client connected (the original destination under transparent
        capture), as the access log's %DOWNSTREAM_LOCAL_ADDRESS%."""
        text = self._local_text
        if text is None:
            local = self.local
            if local is None and self.transport is not None:
                local = self.transport.get_extra_info("sockname")
            if isinstance(local, tuple):
                text = self._local_text = str(SocketAddress(local[0], local[1]))
        return text

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote_ip = peer[0] if isinstance(peer, tuple) else ""
        limit = self.ctx.buffer_limit
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)
        self.last_activity = time.monotonic()
        self.listener.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.from_downstream(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            stream = self.streams[-1] if self.streams else None
            if stream is None or not stream.upgrade:
                # An upgrade we do not perform (h2c) or already refused: the
                # parser has resumed, keep reading HTTP/1.1.
                if rest and self.transport is not None:
                    self.data_received(rest)
                return
            tunnel = self.tunnel = stream.tunnel = Tunnel(stream)
            if rest:
                tunnel.from_downstream(rest)  # held until the upstream switches protocols
        except httptools.HttpParserCallbackError as exc:
            if self._reject is None:  # not a refusal of ours: a bug, cut this connection only
                log.error("connection from %s failed", self.remote_ip, exc_info=exc.__context__)
            self._protocol_error(self._reject or RequestRejectedError(500, "internal error"))
        except httptools.HttpParserError as exc:
            self._protocol_error(RequestRejectedError(400, str(exc)))

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            self.tunnel.from_downstream(b"")
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._cancel_header_timer()
        self.listener.connection_closed(self)
        streams = list(self.streams)
        self.streams.clear()
        for stream in streams:
            stream.on_downstream_closed()

    def pause_writing(self) -> None:
        if self.streams:
            upstream = self.streams[0].upstream
            if upstream is not None:
                upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.streams:
            upstream = self.streams[0].upstream
            if upstream is not None:
                upstream.resume_reading()

    # -- httptools callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._in_body = False
        if self.header_timer is None and self.ctx.config.request_headers_timeout is not None:
            self._arm_header_timer()

    # on_url and on_header count the head's size inline: they run for every request.

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.ctx.config.max_request_headers_bytes:
            self._too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            return  # trailers are dropped, as Envoy does for HTTP/1.1 by default
        self._header_bytes += len(name) + len(value) + 4
        config = self.ctx.config
        if self._header_bytes > config.max_request_headers_bytes:
            self._too_large()
        headers = self._headers
        if len(headers) >= config.max_request_headers_count:
            self._too_large("too many request headers")
        headers.append((name.lower(), value))

    def _too_large(self, detail: str = "request header block too large") -> None:
        self._reject = RequestRejectedError(431, detail)
        raise self._reject

    def on_headers_complete(self) -> None:
        self._in_body = True
        # Each request takes the listener's current config; those in flight keep theirs.
        self.ctx = self.chain.context  # type: ignore[assignment]
        if self.header_timer is not None:
            self._cancel_header_timer()
        try:
            stream = new_stream(self, self._parser, self._url, self._headers, self._header_bytes)
        except RequestRejectedError as exc:
            self._reject = exc
            raise
        self.current = stream
        self.streams.append(stream)
        if len(self.streams) == 1:
            stream.begin()  # what it finishes at once, `stream_finished` continues in a loop
        else:
            self.pause_reading()  # pipelined: one request at a time

    def on_body(self, body: bytes) -> None:
        stream = self.current
        if stream is not None:
            stream.on_request_body(body)

    def on_message_complete(self) -> None:
        stream = self.current
        self.current = None
        if stream is not None:
            stream.on_request_complete()

    # -- refusals --------------------------------------------------------------------

    def _protocol_error(self, reject: RequestRejectedError) -> None:
        log.debug("rejecting request from %s: %s", self.remote_ip, reject.detail)
        self.listener.protocol_error(reject.status)
        if self.transport is None:
            return
        # A rejected request is never forwarded; streams already under way are cut.
        streams = list(self.streams)
        self.streams.clear()
        self.current = None
        if not streams or not streams[0].response_started:
            self.write(wire.local_reply(reject.status, b"", close=True))
        for stream in streams:
            stream.on_downstream_closed()
        self.close()

    # -- used by streams ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        wbuf = self._wbuf
        if wbuf is not None:
            wbuf.append(data)
            return
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def cork(self) -> None:
        """Collect writes until `uncork`: one syscall for a response's head and body."""
        if self._wbuf is None:
            self._wbuf = []

    def uncork(self) -> None:
        wbuf = self._wbuf
        self._wbuf = None
        if wbuf:
            transport = self.transport
            if transport is not None:
                if len(wbuf) == 1:
                    transport.write(wbuf[0])
                elif len(wbuf) == 2 and len(wbuf[1]) <= _JOIN_LIMIT:
                    # A head and a small body: copied into one buffer, one `write` costs
                    # uvloop less than a `writev` of the two.
                    transport.write(wbuf[0] + wbuf[1])
                else:
                    transport.writelines(wbuf)  # one writev, no copy into a joined buffer

    def write_eof(self) -> None:
        self.uncork()
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        self.uncork()
        transport = self.transport
        if transport is not None:
            transport.close()

    def pause_reading(self) -> None:
        self._paused += 1
        transport = self.transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused > 0:
            self._paused -= 1
        transport = self.transport
        if self._paused == 0 and transport is not None and not transport.is_reading():
            transport.resume_reading()

    def start_tunnel(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self._paused = 0
        transport = self.transport
        if transport is not None and not transport.is_reading():
            transport.resume_reading()

    def stream_finished(self, stream: Stream) -> None:
        """`stream` sent its whole response: move on to the next request or close."""
        self.last_activity = time.monotonic()
        if self.streams and self.streams[0] is stream:
            self.streams.popleft()
        if self.tunnel is not None and self.tunnel.stream is stream:
            self.close()
            return
        if not stream.keep_alive or self.draining or not stream.request_done:
            self.close()
            return
        if self.streams:
            self.resume_reading()
            self._begin_streams()

    def _begin_streams(self) -> None:
        """Begin the request at the head of the queue, and the next ones while they
        finish at once (local replies): a loop, as a long pipeline of local replies
        must not recurse once per request."""
        if self._beginning:
            return  # the loop below, further up the stack, carries on
        self._beginning = True
        try:
            while self.streams and not self.streams[0].begun:
                self.streams[0].begin()
        finally:
            self._beginning = False

    def start_draining(self) -> None:
        """Finish what is in flight with `connection: close`; close idle connections now."""
        self.draining = True
        if not self.streams and self.current is None:
            self.close()

    # -- timers ------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        timeout = self.ctx.config.request_headers_timeout
        if timeout is not None:
            self.header_timer = self.ctx.deadlines.schedule(timeout, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def check_timeouts(self, now: float) -> None:
        """Coarse per-stream timeouts, checked by the listener's housekeeping sweep."""
        if not self.streams:
            return
        stream = self.streams[0]
        config = self.ctx.config
        if (
            config.request_timeout is not None
            and not stream.request_done
            and now - stream.start > config.request_timeout
        ):
            stream.stream_timeout(b"request timeout", ResponseFlag.NONE)
        elif (
            config.stream_idle_timeout is not None
            and now - self.last_activity > config.stream_idle_timeout
        ):
            stream.stream_timeout(b"stream timeout", ResponseFlag.STREAM_IDLE_TIMEOUT)

    def _on_header_timeout(self) -> None:
        self.header_timer = None
        if self.transport is None or self.streams:
            return
        self.listener.protocol_error(408)
        self.transport.write(wire.local_reply(408, b"", close=True))
        self.transport.close()
