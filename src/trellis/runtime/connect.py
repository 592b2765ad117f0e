"""Opening one upstream connection: TCP or a Unix socket, plaintext or TLS.

`open_connection` uses the event loop's own TLS; `open_tls_stream` a
`TlsStream`, whose transport can half-close (the TCP proxy's upstreams). The
cluster's host (`trellis.runtime.cluster.HostRuntime.connect`) picks one and
bounds it with the connect timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

from trellis.core.addresses import PipeAddress, SocketAddress
from trellis.runtime.tls_stream import TlsStream

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def open_connection(
    address: SocketAddress | PipeAddress,
    factory: Callable[[], P],
    context: ssl.SSLContext | None,
    sni: str | None,
    handshake_timeout: float | None,
) -> tuple[asyncio.BaseTransport, P]:
    """A TCP or Unix-socket connection, with asyncio's TLS when `context` is given."""
    loop = asyncio.get_running_loop()
    if isinstance(address, PipeAddress):
        return await loop.create_unix_connection(
            factory,
            address.path,
            ssl=context,
            server_hostname=sni,
            ssl_handshake_timeout=handshake_timeout,
        )
    return await loop.create_connection(
        factory,
        address.host,
        address.port,
        ssl=context,
        server_hostname=sni,
        ssl_handshake_timeout=handshake_timeout,
    )


async def open_tls_stream(
    address: SocketAddress | PipeAddress,
    factory: Callable[[], P],
    context: ssl.SSLContext,
    sni: str | None,
    handshake_timeout: float,
) -> tuple[asyncio.BaseTransport, P]:
    """A TLS connection whose transport can half-close (`TlsStream`), once its handshake
    is done."""
    app = factory()
    assert isinstance(app, asyncio.Protocol), "a TLS stream carries a streaming protocol"

    def stream() -> TlsStream:
        return TlsStream(
            app,
            context,
            server_side=False,
            server_hostname=sni,
            handshake_timeout=handshake_timeout,
        )

    _, tls = await open_connection(address, stream, None, None, None)
    try:
        await tls.handshake
    except BaseException:
        tls.abort()
        raise
    return tls.transport, app
