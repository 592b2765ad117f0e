"""The application's probes, pointed at the sidecar (Istio's rewriteAppHTTPProbers).

Once a pod's inbound traffic is captured, the kubelet's plaintext probes to
the application's ports reach the sidecar's inbound listener, which refuses
them under STRICT mTLS (and a TCP probe would see the sidecar's open port,
not the application's). So each `httpGet`, `tcpSocket` and `grpc` liveness,
readiness and startup probe of the application's containers becomes an
`httpGet` on the sidecar's 15020 at `/app-health/<container>/livez|readyz|startupz`,
keeping its timing fields, and the original goes to the sidecar in
`TRELLIS_KUBE_APP_PROBERS` (`trellis.core.app_probe`), which probes the
application on the pod's loopback. Exec probes run inside the container and
are left alone, as are probes on ports the capture excludes, probes naming a
port the container does not declare (the kubelet would fail them too) and
probes already rewritten.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from trellis.core.app_probe import PROBE_PREFIX, PROBE_SUFFIXES, AppProbe, parse_app_probe
from trellis.core.sidecar_ports import (
    MERGED_METRICS_PORT,
    SIDECAR_PORTS,
)
from trellis.errors import ConfigError
from trellis.kube.settings import (
    PROXY_NAME,
    REWRITE_PROBES_KEYS,
    InjectionError,
)

Json = dict[str, Any]

ACTIONS = ("httpGet", "tcpSocket", "grpc")
"""The probe actions the sidecar takes over; `exec` stays as it is."""
_TRUE = frozenset({"1", "t", "true"})
_FALSE = frozenset({"0", "f", "false"})


def rewrite_enabled(annotations: Mapping[str, Any]) -> bool:
    """The first of `sidecar.trellis.io/rewriteAppHTTPProbers`, Istio's same-named
    annotation present decides; rewriting is on by default. InjectionError for a
    value that is not a boolean."""
    for key in REWRITE_PROBES_KEYS:
        if key in annotations:
            value = str(annotations[key]).strip().lower()
            if value not in _TRUE | _FALSE:
                raise InjectionError(f"annotation {key}: {annotations[key]!r} is not true or false")
            return value in _TRUE
    return True


def rewrite_probes(
    containers: list[Any], field: str, excluded_ports: Collection[int]
) -> tuple[list[Any], dict[str, AppProbe]]:
    """`containers` (the pod's `spec.<field>`) with their probes pointed at the sidecar,
    and the original probes by sidecar path. InjectionError names a malformed probe."""
    rewritten: list[Any] = []
    probes: dict[str, AppProbe] = {}
    for index, container in enumerate(containers):
        if not isinstance(container, Mapping) or container.get("name") == PROXY_NAME:
            rewritten.append(container)
            continue
        changed = dict(container)
        for probe_field in PROBE_SUFFIXES:
            where = f"spec.{field}[{index}].{probe_field}"
            found = _rewrite(container, probe_field, where, excluded_ports)
            if found is not None:
                path, original, probe = found
                changed[probe_field] = probe
                probes[path] = original
        rewritten.append(changed)
    return rewritten, probes


def _rewrite(
    container: Mapping[str, Any], field: str, where: str, excluded_ports: Collection[int]
) -> tuple[str, AppProbe, Json] | None:
    """(sidecar path, original probe, rewritten probe) for one probe; None: leave it."""
    probe = container.get(field)
    if probe is None:
        return None
    if not isinstance(probe, Mapping):
        raise InjectionError(f"{where}: expected an object, got {type(probe).__name__}")
    kinds = [kind for kind in ACTIONS if kind in probe]
    if len(kinds) != 1:
        return None  # exec, or invalid in a way the API server reports itself
    kind = kinds[0]
    action = probe[kind]
    if not isinstance(action, Mapping):
        raise InjectionError(f"{where}.{kind}: expected an object")
    port = _port(action.get("port"), container)
    if port is None or port in excluded_ports or port in SIDECAR_PORTS:
        return None  # the kubelet reaches it (or fails it) without the sidecar's help
    path = f"{PROBE_PREFIX}{container.get('name')}/{PROBE_SUFFIXES[field]}"
    entry = {kind: {**action, "port": port}, "timeoutSeconds": probe.get("timeoutSeconds", 1)}
    try:
        original = parse_app_probe(path, entry, source=where)
    except ConfigError as exc:
        raise InjectionError(str(exc)) from None
    rewritten = {name: value for name, value in probe.items() if name not in ACTIONS}
    rewritten["httpGet"] = {"path": path, "port": MERGED_METRICS_PORT, "scheme": "HTTP"}
    return path, original, rewritten


def _port(value: Any, container: Mapping[str, Any]) -> int | None:
    """A probe's port as a number: a number, or the name of one of the container's ports."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    for declared in container.get("ports") or []:
        if isinstance(declared, Mapping) and declared.get("name") == value:
            number = declared.get("containerPort")
            return number if isinstance(number, int) else None
    return None
