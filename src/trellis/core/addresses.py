"""Where things listen and connect: socket addresses, Unix socket paths, IP networks.

Plain values shared by the compiled config (`trellis.core.config`), the CLI's
flags and the runtime; `SocketAddress.parse` is the one reading of `HOST:PORT`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SocketAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> SocketAddress:
        """`HOST:PORT` (`[V6]:PORT` too; port 0-65535); ValueError saying what is wrong."""
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host, int(port))


PIPE_PATH_MAX_BYTES = 107
"""The longest Unix socket path the kernel takes (`sun_path` holds 108 bytes with the NUL)."""


@dataclass(frozen=True, slots=True)
class PipeAddress:
    """Envoy's `core.v3.Pipe`: a Unix domain socket by its file system path.

    A path crosses network namespaces where 127.0.0.1 does not: a sidecar in its
    workload's namespace reaches the control plane on the host through one.
    """

    path: str

    def __str__(self) -> str:
        return self.path


EndpointAddress = SocketAddress | PipeAddress
"""Where an upstream endpoint listens; listeners and the admin port need a `SocketAddress`."""
