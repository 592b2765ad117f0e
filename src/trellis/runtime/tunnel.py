"""An upgraded HTTP/1.1 connection (WebSocket): bytes both ways, half-close passed on.

The downstream connection creates the tunnel when its parser hands over an
upgrade request; client bytes wait in it until the upstream answers 101. Then
bytes flow both ways, an EOF from one side becomes a `write_eof` on the other,
and the request ends once both directions have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trellis.runtime.router import Stream
    from trellis.runtime.upstream import UpstreamConnection

_UPSTREAM_EOF = 1
_DOWNSTREAM_EOF = 2


class Tunnel:
    __slots__ = ("_eofs", "_pending", "stream", "upstream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.upstream: UpstreamConnection | None = None  # set by the upstream's 101
        self._pending: list[bytes] = []
        self._eofs = 0

    @property
    def open(self) -> bool:
        return self.upstream is not None

    def start(self, upstream: UpstreamConnection, rest: bytes) -> None:
        """The upstream switched protocols; `rest` is what it sent after the 101."""
        self.upstream = upstream
        conn = self.stream.conn
        if rest:
            conn.write(rest)
        conn.start_tunnel(self)
        pending, self._pending = self._pending, []
        for data in pending:
            self.from_downstream(data)

    def from_downstream(self, data: bytes) -> None:
        """Client bytes; empty means the client half-closed."""
        upstream = self.upstream
        if upstream is None:
            self._pending.append(data)
        elif data:
            self.stream.body_bytes += len(data)
            upstream.write(data)
        else:
            upstream.write_eof()
            self._ended(_DOWNSTREAM_EOF)

    def from_upstream(self, data: bytes) -> None:
        """Upstream bytes; empty means the upstream half-closed."""
        stream = self.stream
        if data:
            stream.response_bytes += len(data)
            stream.conn.write(data)
        else:
            stream.conn.write_eof()
            self._ended(_UPSTREAM_EOF)

    def _ended(self, side: int) -> None:
        self._eofs |= side
        if self._eofs == _UPSTREAM_EOF | _DOWNSTREAM_EOF:
            self.stream.end_tunnel()
