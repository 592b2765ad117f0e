"""Who may call the REST API: loopback callers freely, anyone else with the bearer token.

The token is created once, on the control plane's first start, in its data
directory (`api-token`, mode 0600), and read from there afterwards, unless a
token file all replicas share is given (`api_token`). It is never logged.
Loopback callers need no token but must address the server by a loopback name
(`Host: 127.0.0.1`, `localhost`, `[::1]`): that keeps a web page that rebinds
its own DNS name to 127.0.0.1 from driving the API through a browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from trellis.errors import ConfigError

log = logging.getLogger("trellis.controlplane.api")

TOKEN_FILE = "api-token"
_MIN_TOKEN_LENGTH = 16
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def load_or_create_token(data_dir: Path) -> str:
    """The API token stored in `data_dir`, created (mode 0600) if there is none yet.

    Raises ConfigError when the file exists but holds no usable token.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / TOKEN_FILE
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)
    try:
        os.write(fd, token.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("created the API token file %s", path)
    return token


def api_token(data_dir: Path, token_file: Path | None = None) -> str:
    """The token from `token_file` when given and present, else DATA_DIR's (created if missing).

    `token_file` is a token all replicas share, e.g. a Secret mounted by Kubernetes
    (which sets its mode, so it is not checked); when that file does not exist the
    replica keeps a token of its own, and says so. ConfigError when it holds no token.
    """
    if token_file is not None:
        if token_file.is_file():
            return _read_token(token_file, check_mode=False)
        log.warning(
            "no API token file %s; this replica uses its own token in %s", token_file, data_dir
        )
    return load_or_create_token(data_dir)


def _read_token(path: Path, *, check_mode: bool = True) -> str:
    mode = path.stat().st_mode
    if check_mode and mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the API token file %s is readable by other users (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    token = path.read_text(encoding="ascii", errors="replace").strip()
    if len(token) < _MIN_TOKEN_LENGTH or any(char.isspace() for char in token):
        raise ConfigError(
            f"must hold one token of at least {_MIN_TOKEN_LENGTH} characters; "
            "delete the file to have a new one created",
            source=str(path),
        )
    return token


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _host_name(host_header: str) -> str:
    """The name part of a Host header (`[::1]:8080` -> `[::1]`, `localhost:80` -> `localhost`)."""
    if host_header.startswith("["):
        end = host_header.find("]")
        return host_header[: end + 1] if end > 0 else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers") or ()
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `token` (constant-time comparison)."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


class TokenAuthMiddleware:
    """ASGI middleware: lets loopback callers through, asks everyone else for the token.

    `open_paths` (e.g. `/healthz`) need no token from anyone.
    """

    def __init__(self, app: ASGIApp, *, token: str, open_paths: Iterable[str] = ()) -> None:
        if len(token) < _MIN_TOKEN_LENGTH:
            raise ValueError(f"the API token must have at least {_MIN_TOKEN_LENGTH} characters")
        self._app = app
        self._token = token
        self._open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self._open_paths:
            await self._app(scope, receive, send)
            return
        if bearer_matches(_header(scope, b"authorization"), self._token):
            await self._app(scope, receive, send)
            return
        client = scope.get("client")
        if client is not None and is_loopback(client[0]):
            host = _host_name(_header(scope, b"host") or "").lower()
            if host in _LOOPBACK_NAMES or is_loopback(host):
                await self._app(scope, receive, send)
                return
            await _deny(
                send, 403, "Forbidden", f"loopback callers must use a loopback Host, not {host!r}"
            )
            return
        await _deny(
            send,
            401,
            "Unauthorized",
            "this API needs 'Authorization: Bearer <token>' from non-loopback callers "
            "(the token is in the control plane's data directory, file api-token)",
        )


async def _deny(send: Send, code: int, reason: str, message: str) -> None:
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": reason,
            "message": message,
            "code": code,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if code == 401:
        headers.append((b"www-authenticate", b'Bearer realm="trellis"'))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
