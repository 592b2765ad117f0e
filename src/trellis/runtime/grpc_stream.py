"""gRPC calls over HTTP/2 (plaintext, or TLS to the control plane), built on h2.

The proxy needs two gRPC calls: the ADS stream and the CA's CreateCertificate
(`unary_call`). grpcio would add ~9 MB of resident memory to every sidecar
(DESIGN.md §8 budgets 40 MB); h2 adds ~1 MB. This speaks the gRPC wire format
(length-prefixed messages, `te: trailers`, `grpc-status` trailers, custom
metadata as headers) over an h2c prior-knowledge connection, TCP or a Unix
socket (Envoy's `pipe` address), one call per connection. With `GrpcTls` the
connection is TLS (ALPN h2) and the server's certificate must chain to the
given root and name the given server: the control plane's 15012 port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from trellis.core.addresses import EndpointAddress, PipeAddress

_READ_SIZE = 65536
_MAX_MESSAGE = 64 * 1024 * 1024
_WINDOW = 16 * 1024 * 1024
OK = 0
UNIX_AUTHORITY = "localhost"
"""The `:authority` of calls over a Unix socket (gRPC's own choice for `unix:` targets)."""
Metadata = Sequence[tuple[str, str]]
"""Custom call metadata: lowercase ASCII names (`authorization`), printable values."""


class GrpcError(Exception):
    """The call ended with a non-OK status, or the connection failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"grpc status {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class GrpcTls:
    """Call over TLS: the server's chain must end at `root_pem` and name `server_name`.

    `server_name` is also the SNI and the calls' `:authority` host. There is no
    fallback to plaintext: a failed handshake fails the call.
    """

    root_pem: str
    server_name: str

    def __post_init__(self) -> None:
        if "-----BEGIN CERTIFICATE-----" not in self.root_pem:
            raise ValueError("the root holds no PEM certificate")
        if not self.server_name:
            raise ValueError("the server name is empty")

    def context(self) -> ssl.SSLContext:
        """A client context verifying the chain and the name; ValueError for a bad root."""
        # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname, and no system roots.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cadata=self.root_pem)
        except ssl.SSLError as exc:
            raise ValueError(f"the root is not a usable certificate: {exc}") from None
        context.set_alpn_protocols(["h2"])
        return context


class GrpcStream:
    """`await GrpcStream.open(...)`, then `send` and `recv` messages (serialized bytes)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self._stream_id = 0
        self._buffer = bytearray()
        self._messages: asyncio.Queue[bytes | GrpcError] = asyncio.Queue()
        self._window_open = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        address: EndpointAddress,
        path: str,
        connect_timeout: float,
        metadata: Metadata = (),
        tls: GrpcTls | None = None,
    ) -> GrpcStream:
        """Connect (TCP, or the Unix socket of a `PipeAddress`; TLS over TCP with `tls`)
        and start the call; ValueError (before connecting) for unsendable metadata or
        TLS to a Unix socket, ssl.SSLError (an OSError) when the server is not trusted."""
        extra = _headers(metadata)
        if isinstance(address, PipeAddress):
            if tls is not None:
                raise ValueError(f"TLS to the Unix socket {address} is not supported")
            connecting = asyncio.open_unix_connection(address.path)
            authority = UNIX_AUTHORITY
        elif tls is not None:
            connecting = asyncio.open_connection(
                address.host,
                address.port,
                ssl=tls.context(),
                server_hostname=tls.server_name,
                ssl_handshake_timeout=connect_timeout,
            )
            authority = f"{tls.server_name}:{address.port}"
        else:
            connecting = asyncio.open_connection(address.host, address.port)
            authority = str(address)
        reader, writer = await asyncio.wait_for(connecting, connect_timeout)
        if tls is not None:
            protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if protocol != "h2":
                writer.close()
                raise GrpcError(14, f"{address} did not agree to HTTP/2 (ALPN {protocol!r})")
        stream = cls(reader, writer)
        stream._start(authority, path, extra, scheme=b"https" if tls is not None else b"http")
        return stream

    def _start(
        self,
        authority: str,
        path: str,
        extra: Sequence[tuple[bytes, bytes]] = (),
        scheme: bytes = b"http",
    ) -> None:
        conn = self._conn
        conn.initiate_connection()
        conn.increment_flow_control_window(_WINDOW)
        self._stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            self._stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", scheme),
                (b":path", path.encode()),
                (b":authority", authority.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"user-agent", b"trellis-proxy"),
                *extra,
            ],
        )
        conn.increment_flow_control_window(_WINDOW, stream_id=self._stream_id)
        self._flush()
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read(), name="grpc stream reader"
        )

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data:
            self._writer.write(data)

    async def send(self, message: bytes) -> None:
        """Send one message, waiting for flow-control window when needed."""
        payload = struct.pack(">?I", False, len(message)) + message
        conn = self._conn
        while payload:
            if self._closed:
                raise GrpcError(14, "stream closed")
            window = min(
                conn.local_flow_control_window(self._stream_id), conn.max_outbound_frame_size
            )
            if window <= 0:
                self._window_open.clear()
                await self._window_open.wait()
                continue
            chunk, payload = payload[:window], payload[window:]
            conn.send_data(self._stream_id, chunk)
            self._flush()
        await self._writer.drain()

    async def close_send(self) -> None:
        """Half-close: no more messages from this side (a unary call after its request)."""
        if self._closed:
            raise GrpcError(14, "stream closed")
        self._conn.end_stream(self._stream_id)
        self._flush()
        await self._writer.drain()

    async def recv(self) -> bytes:
        """The next message; raises GrpcError when the call ends."""
        item = await self._messages.get()
        if isinstance(item, GrpcError):
            self._messages.put_nowait(item)  # later calls see the same end
            raise item
        return item

    async def _read(self) -> None:
        error = GrpcError(14, "connection closed")
        try:
            while True:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    break
                ended = self._handle(self._conn.receive_data(data))
                self._flush()
                if ended is not None:
                    error = ended
                    break
        except (OSError, h2.exceptions.ProtocolError) as exc:
            error = GrpcError(14, f"connection error: {exc}")
        finally:
            self._closed = True
            self._window_open.set()
            self._messages.put_nowait(error)

    def _handle(self, events: list[h2.events.Event]) -> GrpcError | None:
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
                if headers.get(b":status") != b"200":
                    return GrpcError(14, f"HTTP status {headers.get(b':status')!r}")
                if b"grpc-status" in headers:  # trailers-only response
                    return _status(headers)
            elif isinstance(event, h2.events.DataReceived):
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self._buffer += event.data
                problem = self._split_messages()
                if problem is not None:
                    return problem
            elif isinstance(event, h2.events.TrailersReceived):
                return _status(dict(event.headers))
            elif isinstance(event, h2.events.StreamReset):
                return GrpcError(14, f"stream reset (code {event.error_code})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                return GrpcError(14, f"connection terminated (code {event.error_code})")
            elif isinstance(event, h2.events.WindowUpdated):
                self._window_open.set()
        return None

    def _split_messages(self) -> GrpcError | None:
        buffer = self._buffer
        while len(buffer) >= 5:
            compressed, length = struct.unpack_from(">?I", buffer)
            if compressed:
                return GrpcError(12, "compressed messages are not supported")
            if length > _MAX_MESSAGE:
                return GrpcError(8, f"message of {length} bytes is too large")
            if len(buffer) < 5 + length:
                break
            self._messages.put_nowait(bytes(buffer[5 : 5 + length]))
            del buffer[: 5 + length]
        return None

    async def close(self) -> None:
        self._closed = True
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        with contextlib.suppress(Exception):
            self._conn.close_connection()
            self._flush()
        if self._writer.get_extra_info("ssl_object") is not None:
            # grpc does not answer a TLS close_notify: waiting for it would hold every
            # call for asyncio's shutdown timeout. The call is over; drop the connection.
            self._writer.transport.abort()
            return
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def _headers(metadata: Metadata) -> list[tuple[bytes, bytes]]:
    headers = []
    for name, value in metadata:
        if not name or name != name.lower() or name.startswith((":", "grpc-")) or name == "te":
            raise ValueError(f"{name!r} cannot be sent as gRPC metadata")
        if any(ord(char) < 0x20 or ord(char) > 0x7E for char in value):
            raise ValueError(f"the value of metadata {name!r} is not printable ASCII")
        headers.append((name.encode("ascii"), value.encode("ascii")))
    return headers


async def unary_call(
    address: EndpointAddress,
    path: str,
    request: bytes,
    *,
    metadata: Metadata = (),
    call_timeout: float = 10.0,
    tls: GrpcTls | None = None,
) -> bytes:
    """One request, one response (serialized messages) on a connection of its own.

    Raises GrpcError with the server's status (or UNAVAILABLE, 14, when the
    connection fails) and TimeoutError after `call_timeout` seconds in all.
    """
    async with asyncio.timeout(call_timeout):
        stream = await GrpcStream.open(address, path, call_timeout, metadata, tls)
        try:
            await stream.send(request)
            await stream.close_send()
            try:
                response = await stream.recv()
            except GrpcError as end:
                if end.status == OK:
                    raise GrpcError(13, f"{path} ended without a response") from None
                raise
            try:
                await stream.recv()
            except GrpcError as end:
                if end.status != OK:
                    raise
            else:
                raise GrpcError(12, f"{path} answered more than one message")
            return response
        finally:
            await stream.close()


def _status(headers: dict[bytes, bytes]) -> GrpcError:
    status = int(headers.get(b"grpc-status", b"2") or 2)
    message = headers.get(b"grpc-message", b"").decode("utf-8", "replace")
    return GrpcError(status, message or ("OK" if status == 0 else "call ended"))
