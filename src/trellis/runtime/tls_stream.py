"""TLS over a TCP connection that can be half-closed, for the TCP proxy.

asyncio's TLS transports cannot end one direction only: they have no
`write_eof`, and a peer's `close_notify` closes them. A proxied TCP stream
needs both, as Envoy does it: the client finishes sending (a half-close) and
then reads the server's answer. `TlsStream` runs TLS itself with an
`ssl.SSLObject` over memory buffers between a plain TCP transport and the
proxy's protocol, and offers that protocol a transport (`TlsTransport`) whose
`write_eof` sends `close_notify` and keeps reading, while a `close_notify`
from the peer reaches the protocol as `eof_received` and leaves writing open.
OpenSSL allows both in TLS 1.2 and 1.3.

`handshake` completes (or fails) with the handshake; the protocol's
`connection_made` comes after it, with the peer's certificate in hand.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, cast

_CHUNK = 65536


class TlsStream(asyncio.Protocol):
    """The TCP side's protocol: runs TLS and feeds `app` through a `TlsTransport`."""

    def __init__(
        self,
        app: asyncio.Protocol,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.context = context
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname or None,
        )
        self._loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self._timeout = handshake_timeout
        self._timer: asyncio.TimerHandle | None = None
        self.raw: asyncio.Transport | None = None
        self.transport = TlsTransport(self)
        self.reading_paused = False
        self.peer_ended = False  # the peer's close_notify (or TCP EOF) reached the app
        self.ended = False  # our close_notify was sent
        self.closing = False

    # -- the TCP transport's events ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._timer = self._loop.call_later(self._timeout, self._handshake_timed_out)
        self._handshake_step()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self.handshake.done():
            self._read()
        else:
            self._handshake_step()

    def eof_received(self) -> bool:
        """The peer's TCP FIN: after a `close_notify` nothing new; without one, the end
        of its stream all the same (a "ragged" EOF). Writing stays open if the app wants."""
        if not self.handshake.done():
            self._fail(ConnectionResetError("the peer closed during the TLS handshake"))
            return False
        self._read()
        if not self.peer_ended:
            self._end_of_input()
        return not self.closing

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed during the handshake"))
            return
        self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handshake.done():
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.handshake.done():
            self.app.resume_writing()

    # -- TLS ------------------------------------------------------------------------

    def _handshake_step(self) -> None:
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()  # the alert that tells the peer why
            self._fail(exc)
            return
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
        self.handshake.set_result(None)
        self.app.connection_made(self.transport)
        if not self.closing:
            self._read()  # application data that came with the last handshake flight

    def _read(self) -> None:
        """Hand the app what can be decrypted, unless it paused reading."""
        for _ in range(10_000):
            if self.reading_paused or self.peer_ended or self.closing:
                break
            try:
                data = self.ssl_object.read(_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._end_of_input()
                break
            except (ssl.SSLError, OSError) as exc:
                self._fail(exc)
                return
            if not data:
                self._end_of_input()
                break
            self.app.data_received(data)
        self._flush()  # reading can produce records to send (a key update's answer)

    def _end_of_input(self) -> None:
        self.peer_ended = True
        if not self.app.eof_received():
            self.transport.close()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.raw is not None:
            self.raw.resume_reading()
        if self.handshake.done():
            self._read()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.ended or self.closing or not data:
            return
        try:
            self.ssl_object.write(data)
        except (ssl.SSLError, OSError) as exc:
            self._fail(exc)
            return
        self._flush()

    def write_eof(self) -> None:
        """Send `close_notify`; reading goes on until the peer ends too."""
        if self.ended or self.closing:
            return
        self.ended = True
        try:
            self.ssl_object.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent; the peer's close_notify comes when it is done writing
        except (ssl.SSLError, OSError):
            pass  # the connection is going anyway
        self._flush()

    def close(self) -> None:
        if self.closing:
            return
        if self.handshake.done():
            self.write_eof()
        self.closing = True
        if self.raw is not None:
            self.raw.close()

    def abort(self) -> None:
        self.closing = True
        if self.raw is not None:
            self.raw.abort()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self.raw is not None and not self.raw.is_closing():
            self.raw.write(data)

    def _fail(self, exc: BaseException) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        self.abort()

    def _handshake_timed_out(self) -> None:
        if not self.handshake.done():
            self._fail(TimeoutError("TLS handshake timed out"))


class TlsTransport(asyncio.Transport):
    """What the proxy's protocol writes to and controls: a `TlsStream`'s plaintext side."""

    def __init__(self, stream: TlsStream) -> None:
        super().__init__()
        self._stream = stream

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._stream.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self._stream.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self._stream.close()

    def abort(self) -> None:
        self._stream.abort()

    def is_closing(self) -> bool:
        return self._stream.closing

    def pause_reading(self) -> None:
        self._stream.reading_paused = True
        if self._stream.raw is not None:
            self._stream.raw.pause_reading()

    def resume_reading(self) -> None:
        self._stream.resume_reading()

    def is_reading(self) -> bool:
        return not self._stream.reading_paused

    def get_write_buffer_size(self) -> int:
        raw = self._stream.raw
        return raw.get_write_buffer_size() if raw is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._stream.raw is not None:
            self._stream.raw.set_write_buffer_limits(high, low)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._stream.app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        ssl_object = self._stream.ssl_object
        if name == "ssl_object":
            return ssl_object
        if name == "peercert":
            return ssl_object.getpeercert()
        if name == "sslcontext":
            return self._stream.context
        if name == "cipher":
            return ssl_object.cipher()
        raw = self._stream.raw
        return raw.get_extra_info(name, default) if raw is not None else default
