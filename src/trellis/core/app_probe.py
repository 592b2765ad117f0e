"""The application's own health probes, as the sidecar performs them (Istio's app-health).

With STRICT mTLS the kubelet's plaintext probes to the application's ports
would reach the sidecar's inbound listener and be refused, so the injector
points each probe at the sidecar's 15020 (`/app-health/<container>/livez`,
`readyz` or `startupz`) and hands the original probes to the sidecar in one
environment variable: a JSON object from that path to the Kubernetes probe
action (`httpGet`, `tcpSocket` or `grpc`, ports as numbers) and its
`timeoutSeconds`. Istio's agent reads the same shape from
`ISTIO_KUBE_APP_PROBERS`.

This module is the contract between the two: the path names, the parsing and
validation of that JSON (a malformed value names the variable and the key),
and its encoding. The probing itself is `trellis.runtime.app_prober`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from trellis.errors import ConfigError

APP_PROBERS_ENV = "TRELLIS_KUBE_APP_PROBERS"
"""The proxy's environment variable holding the rewritten probes (Istio: ISTIO_KUBE_APP_PROBERS)."""
PROBE_PREFIX = "/app-health/"
PROBE_SUFFIXES: Mapping[str, str] = {
    "livenessProbe": "livez",
    "readinessProbe": "readyz",
    "startupProbe": "startupz",
}
"""The container field of each probe and the last segment of the path it becomes."""
DEFAULT_TIMEOUT_SECONDS = 1
"""The kubelet's default `timeoutSeconds`."""

_PATH = re.compile(r"^/app-health/[^/]+/(livez|readyz|startupz)$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SCHEMES = ("HTTP", "HTTPS")


@dataclass(frozen=True, slots=True)
class HttpGetCheck:
    """GET `path` on the application's `port`, as the kubelet would: success is 2xx or 3xx."""

    port: int
    path: str = "/"
    scheme: Literal["HTTP", "HTTPS"] = "HTTP"
    """HTTPS: TLS without verifying the application's certificate, like the kubelet."""
    host: str = ""
    """The probe's `host`: only the `Host` header here; the connection stays on loopback."""
    headers: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        action: dict[str, Any] = {"path": self.path, "port": self.port, "scheme": self.scheme}
        if self.host:
            action["host"] = self.host
        if self.headers:
            action["httpHeaders"] = [{"name": n, "value": v} for n, v in self.headers]
        return {"httpGet": action}


@dataclass(frozen=True, slots=True)
class TcpCheck:
    """A TCP connection to the application's `port` opens (a probe's `host` is ignored:
    the sidecar connects on the pod's loopback)."""

    port: int

    def to_json(self) -> dict[str, Any]:
        return {"tcpSocket": {"port": self.port}}


@dataclass(frozen=True, slots=True)
class GrpcCheck:
    """`grpc.health.v1.Health/Check` for `service` answers SERVING."""

    port: int
    service: str = ""

    def to_json(self) -> dict[str, Any]:
        action: dict[str, Any] = {"port": self.port}
        if self.service:
            action["service"] = self.service
        return {"grpc": action}


Check = HttpGetCheck | TcpCheck | GrpcCheck


@dataclass(frozen=True, slots=True)
class AppProbe:
    """One rewritten probe: what to check, and within how many seconds."""

    check: Check
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS

    def to_json(self) -> dict[str, Any]:
        return {**self.check.to_json(), "timeoutSeconds": self.timeout_seconds}


def probe_path(container: str, field: str) -> str:
    """The sidecar path that stands for `container`'s `field` (e.g. `livenessProbe`)."""
    return f"{PROBE_PREFIX}{container}/{PROBE_SUFFIXES[field]}"


def parse_app_probes(text: str, source: str = APP_PROBERS_ENV) -> dict[str, AppProbe]:
    """The probes of the JSON `text` by path; ConfigError naming `source` and the key."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON: {exc}", source=source) from None
    if not isinstance(document, dict):
        raise ConfigError("expected a JSON object of probes by path", source=source)
    return {path: parse_app_probe(path, entry, source) for path, entry in document.items()}


def parse_app_probe(path: str, entry: object, source: str = APP_PROBERS_ENV) -> AppProbe:
    """One entry: `path` must be `/app-health/<container>/livez|readyz|startupz`, `entry`
    one probe action and an optional `timeoutSeconds`; ConfigError naming the key."""
    if not _PATH.match(path):
        raise ConfigError(
            "the key must be /app-health/<container>/livez, readyz or startupz",
            source=source,
            path=path,
        )
    fields = _object(entry, source, path)
    actions = [name for name in ("httpGet", "tcpSocket", "grpc") if name in fields]
    unknown = sorted(set(fields) - {"httpGet", "tcpSocket", "grpc", "timeoutSeconds"})
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r}", source=source, path=path)
    if len(actions) != 1:
        raise ConfigError(
            "expected exactly one of httpGet, tcpSocket, grpc", source=source, path=path
        )
    timeout = fields.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ConfigError(
            f"expected a whole number of seconds >= 1, got {timeout!r}",
            source=source,
            path=f"{path}.timeoutSeconds",
        )
    where = f"{path}.{actions[0]}"
    action = _object(fields[actions[0]], source, where)
    check: Check
    if actions[0] == "httpGet":
        check = _http_get(action, source, where)
    elif actions[0] == "tcpSocket":
        _only(action, ("port", "host"), source, where)
        check = TcpCheck(_port(action.get("port"), source, where))
    else:
        _only(action, ("port", "service"), source, where)
        service = action.get("service", "")
        if not isinstance(service, str):
            raise ConfigError("expected a string", source=source, path=f"{where}.service")
        check = GrpcCheck(_port(action.get("port"), source, where), service)
    return AppProbe(check, timeout)


def encode_app_probes(probes: Mapping[str, AppProbe]) -> str:
    """The environment variable's value: compact JSON, keys sorted (stable re-injection)."""
    return json.dumps(
        {path: probe.to_json() for path, probe in sorted(probes.items())},
        separators=(",", ":"),
    )


def _http_get(action: Mapping[str, Any], source: str, where: str) -> HttpGetCheck:
    _only(action, ("path", "port", "scheme", "host", "httpHeaders"), source, where)
    path = action.get("path") or "/"
    if not isinstance(path, str) or not _printable(path) or " " in path:
        raise ConfigError(
            f"expected a URL path without spaces or control characters, got {path!r}",
            source=source,
            path=f"{where}.path",
        )
    scheme = action.get("scheme") or "HTTP"
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"expected HTTP or HTTPS, got {scheme!r}", source=source, path=f"{where}.scheme"
        )
    host = action.get("host") or ""
    if not isinstance(host, str) or not _printable(host) or " " in host:
        raise ConfigError(f"not a host name: {host!r}", source=source, path=f"{where}.host")
    headers: list[tuple[str, str]] = []
    items = action.get("httpHeaders") or []
    if not isinstance(items, list):
        raise ConfigError("expected a list", source=source, path=f"{where}.httpHeaders")
    for index, item in enumerate(items):
        at = f"{where}.httpHeaders[{index}]"
        header = _object(item, source, at)
        name, value = header.get("name"), header.get("value", "")
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ConfigError(f"not a header name: {name!r}", source=source, path=f"{at}.name")
        if not isinstance(value, str) or not _printable(value):
            raise ConfigError(
                "the value must be printable ASCII on one line", source=source, path=f"{at}.value"
            )
        headers.append((name, value))
    return HttpGetCheck(
        port=_port(action.get("port"), source, where),
        path=path if path.startswith("/") else f"/{path}",
        scheme="HTTPS" if scheme == "HTTPS" else "HTTP",
        host=host,
        headers=tuple(headers),
    )


def _port(value: object, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise ConfigError(
            f"expected a port number 1-65535, got {value!r}", source=source, path=f"{where}.port"
        )
    return value


def _object(value: object, source: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError("expected a JSON object", source=source, path=where)
    return value


def _only(action: Mapping[str, Any], known: tuple[str, ...], source: str, where: str) -> None:
    for name in action:
        if name not in known:
            raise ConfigError(f"unknown field {name!r}", source=source, path=where)


def _printable(text: str) -> bool:
    """Printable ASCII: nothing that could end a request line or a header early."""
    return text.isascii() and all(0x20 <= ord(char) != 0x7F for char in text)
