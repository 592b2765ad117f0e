"""The control plane's Unix socket for xDS and the CA: claimed, locked down, removed.

A sidecar in its workload's network namespace cannot reach the host's
127.0.0.1, but it can reach a socket file (Istio's envoy<->agent UDS works the
same way). Before binding, a socket file left by a control plane that died is
removed, but one that still answers is not: gRPC would unlink it silently and
take the other process's proxies. After binding the file is made 0600, and on a
clean stop it is removed, if it is still the one this process made.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from trellis.core.addresses import PIPE_PATH_MAX_BYTES
from trellis.errors import TrellisError

SOCKET_MODE = 0o600
PROBE_TIMEOUT = 1.0


class SocketPathError(TrellisError):
    """The socket path cannot be used: too long, not a socket, or another server's."""


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """A socket file this process bound: its path and (device, inode), to remove only it."""

    path: Path
    identity: tuple[int, int]


def check_socket_path(path: Path) -> None:
    """SocketPathError when `path` cannot be a Unix socket address (it must be absolute)."""
    size = len(os.fsencode(path))
    if size > PIPE_PATH_MAX_BYTES:
        raise SocketPathError(
            f"the socket path {str(path)!r} is {size} bytes long; "
            f"at most {PIPE_PATH_MAX_BYTES} fit in a Unix socket address"
        )
    if not path.is_absolute():
        raise SocketPathError(f"the socket path {str(path)!r} must be absolute")


def claim_socket_path(path: Path) -> None:
    """Make `path` free to bind: remove a stale socket file, refuse anything else there."""
    check_socket_path(path)
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; not replacing it")
    if _answers(path):
        raise SocketPathError(
            f"{path}: another process is serving on this socket "
            "(is a control plane running with the same data directory?)"
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _answers(path: Path) -> bool:
    """Whether a server accepts connections on the socket file at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        raise SocketPathError(
            f"cannot tell whether {path} is in use: {exc.strerror or exc}"
        ) from None
    finally:
        probe.close()
    return True


def secure_socket(path: Path) -> BoundSocket:
    """Restrict the freshly bound socket file to its owner (mode 0600)."""
    os.chmod(path, SOCKET_MODE)
    found = os.stat(path)
    return BoundSocket(path, (found.st_dev, found.st_ino))


def remove_socket(bound: BoundSocket) -> None:
    """Remove the socket file if it is still the one bound (not a successor's)."""
    try:
        found = os.lstat(bound.path)
    except FileNotFoundError:
        return
    if (found.st_dev, found.st_ino) == bound.identity:
        with contextlib.suppress(FileNotFoundError):
            bound.path.unlink()
