"""The application's probes, performed by the sidecar for the kubelet (Istio's app-health).

The injector points each HTTP, TCP and gRPC probe of the application at the
sidecar's 15020 `/app-health/<container>/livez|readyz|startupz`
(`trellis.core.app_probe`); here the sidecar does what the kubelet would have
done, at the pod's IP (`host`; the loopback outside a pod), where the capture
rules leave the proxy's own connections alone: a GET with the probe's path, headers and scheme (TLS
without verifying the certificate, as the kubelet does), a TCP connect, or a
`grpc.health.v1.Health/Check`. Every probe ends within its `timeoutSeconds`.

The answer follows Istio's agent: the application's own status for an HTTP
probe (a redirect counts as 200, as the kubelet counts it a success), 200 for
an open port or a SERVING service, and 500 when the application cannot be
reached, does not answer in time, or is not serving.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping

from trellis.core.addresses import SocketAddress
from trellis.core.app_probe import AppProbe, GrpcCheck, HttpGetCheck, TcpCheck
from trellis.runtime import wire
from trellis.runtime.admin import Response

log = logging.getLogger("trellis.probes")

GRPC_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = 1
"""`grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`."""
FAILED = 500
"""What Istio's agent answers when the application cannot be probed or is unhealthy."""
_TEXT = b"text/plain; charset=utf-8"
_MAX_HEAD = 16 * 1024


class ProbeFailedError(Exception):
    """The application did not answer the probe as a healthy one would; says why."""


class AppProber:
    """Answers the `/app-health/...` paths of `probes` by probing the application at
    `host` (the pod's IP in a pod, as the kubelet would)."""

    def __init__(self, probes: Mapping[str, AppProbe], host: str = "127.0.0.1") -> None:
        self.probes = dict(probes)
        self.host = host
        self._tls: ssl.SSLContext | None = None

    async def answer(self, path: str, headers: Mapping[str, str]) -> Response:
        """Probe the application for `path`; `headers` are the kubelet's request headers
        (lowercase names), whose `host` and `user-agent` the HTTP probe passes on."""
        probe = self.probes[path]
        try:
            async with asyncio.timeout(probe.timeout_seconds):
                status = await self._check(probe, headers)
        except TimeoutError:
            return self._failed(path, f"no answer within {probe.timeout_seconds}s")
        except (OSError, ProbeFailedError, asyncio.IncompleteReadError) as exc:
            return self._failed(path, str(exc) or type(exc).__name__)
        return status, _TEXT, f"{status}\n".encode()

    def _failed(self, path: str, reason: str) -> Response:
        log.debug("probe %s failed: %s", path, reason)
        return FAILED, _TEXT, f"{reason}\n".encode()

    async def _check(self, probe: AppProbe, headers: Mapping[str, str]) -> int:
        check = probe.check
        if isinstance(check, HttpGetCheck):
            return await self._http_get(check, headers)
        if isinstance(check, TcpCheck):
            _, writer = await asyncio.open_connection(self.host, check.port)
            _close(writer)
            return 200
        return await self._grpc(check, float(probe.timeout_seconds))

    async def _http_get(self, check: HttpGetCheck, incoming: Mapping[str, str]) -> int:
        tls = self._tls_context() if check.scheme == "HTTPS" else None
        reader, writer = await asyncio.open_connection(
            self.host, check.port, ssl=tls, server_hostname=(check.host or None) if tls else None
        )
        try:
            writer.write(self._request(check, incoming))
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise ProbeFailedError("the application's response head is too large") from None
        finally:
            _close(writer)
        return _status(head)

    def _request(self, check: HttpGetCheck, incoming: Mapping[str, str]) -> bytes:
        """The kubelet's request: its Host (with the application's port) and User-Agent,
        `Accept: */*`, no keep-alive, then the probe's own headers, which win."""
        fields = {
            "host": ("Host", _host(check, incoming.get("host", ""), self.host)),
            "user-agent": ("User-Agent", incoming.get("user-agent") or "kube-probe"),
            "accept": ("Accept", "*/*"),
            "connection": ("Connection", "close"),
        }
        for name, value in check.headers:
            fields[name.lower()] = (name, value)
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields.values()]
        return wire.request_head(b"GET", check.path.encode("ascii"), headers)

    async def _grpc(self, check: GrpcCheck, seconds: float) -> int:
        # h2 is loaded only by a pod with gRPC probes (the sidecar's memory budget).
        from trellis.runtime.grpc_stream import GrpcError, unary_call  # noqa: PLC0415

        address = SocketAddress(self.host, check.port)
        try:
            answer = await unary_call(
                address, GRPC_HEALTH_CHECK, _health_request(check.service), call_timeout=seconds
            )
        except GrpcError as exc:
            raise ProbeFailedError(f"health check failed: {exc}") from None
        status = serving_status(answer)
        if status != SERVING:
            raise ProbeFailedError(f"the service is not serving (status {status})")
        return 200

    def _tls_context(self) -> ssl.SSLContext:
        """TLS that trusts any certificate: the kubelet does not verify probes either."""
        if self._tls is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self._tls = context
        return self._tls


def _status(head: bytes) -> int:
    """The status the kubelet gets for the application's response head."""
    if len(head) > _MAX_HEAD:
        raise ProbeFailedError("the application's response head is too large")
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProbeFailedError("the application did not answer HTTP/1.x")
    code = int(parts[1])
    if 300 <= code < 400:
        return 200
    if not 200 <= code < 600:
        raise ProbeFailedError(f"the application answered {code}")
    return code


def _host(check: HttpGetCheck, incoming: str, loopback: str) -> str:
    """The probe's `host`, else the kubelet's Host (the pod's address), with the app's port."""
    name = check.host or _without_port(incoming) or loopback
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    return f"{name}:{check.port}"


def _without_port(host: str) -> str:
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def _health_request(service: str) -> bytes:
    """`HealthCheckRequest{service}` in protobuf: field 1, length-delimited."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def serving_status(message: bytes) -> int:
    """`HealthCheckResponse.status` (field 1, a varint; 0 UNKNOWN when absent)."""
    status = 0
    at = 0
    while at < len(message):
        key, at = _read_varint(message, at)
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, at = _read_varint(message, at)
            if field == 1:
                status = value
        elif kind == 2:
            size, at = _read_varint(message, at)
            at += size
        else:
            raise ProbeFailedError(f"unexpected protobuf wire type {kind} in the health answer")
    if at != len(message):
        raise ProbeFailedError("truncated health answer")
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 64, 7):
        if at >= len(data):
            raise ProbeFailedError("truncated health answer")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise ProbeFailedError("malformed varint in the health answer")


def _close(writer: asyncio.StreamWriter) -> None:
    """Done with the connection, without waiting: a TLS application may never answer
    close_notify, and the wait would count against the probe's time."""
    if writer.get_extra_info("ssl_object") is not None:
        writer.transport.abort()
    else:
        writer.close()
