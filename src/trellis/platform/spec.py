"""What `trellis run` launches, and what follows from it, as pure functions.

A `WorkloadSpec` (names, labels, the application's port) and the sidecar's
`SidecarPorts` give the WorkloadEntry and ServiceEntry documents the launcher
applies, the `trellis proxy` arguments and the application's environment.
Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from trellis.api.meta import RUN_OWNER_ANNOTATION, check_dns1123_label, check_dns1123_subdomain
from trellis.core.sidecar_ports import (
    ADMIN_PORT,
    HEALTH_PORT,
    INBOUND_CAPTURE_PORT,
    MERGED_METRICS_PORT,
    OUTBOUND_CAPTURE_PORT,
)
from trellis.errors import ConfigError, TrellisError

NETWORKING_VERSION = "networking.istio.io/v1"
LOOPBACK = "127.0.0.1"
NO_PROXY = "localhost,127.0.0.1,::1"
PROXY_ENV = tuple(
    name
    for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for name in (base, base.upper())
)
"""Proxy variables a transparently captured application must not inherit."""
SERVICE_PORT = 80
"""The port of a ServiceEntry the launcher creates: clients call `http://SVC/`."""
SERVICE_PORT_NAME = "http"
STATS_PORT = MERGED_METRICS_PORT
DEFAULT_APP_PORT = 8080
"""Transparent capture: the application's port when `--port` is not given."""
TLS_MODE_LABEL = "security.istio.io/tlsMode"
SERVING_LABEL = "app"
"""The label that puts the workload into its service; added once the application listens."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "trellis-run"
OWNER_ANNOTATION = RUN_OWNER_ANNOTATION
"""`HOST/PID/ID` of the launcher that registered a WorkloadEntry."""
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
SECRET_ENV = ("TRELLIS_TOKEN", "TRELLIS_JOIN_TOKEN", "TRELLIS_JOIN_TOKEN_FILE")
"""Credentials of the launcher's environment that neither child inherits."""

_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class LaunchError(TrellisError):
    """`trellis run` cannot go on; the message says what is wrong."""


def _check_label(key: str, value: str, flag: str) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix:
        check_dns1123_subdomain(prefix, f"{flag}: label prefix")
    if len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(f"{flag}: {key!r} is not a valid label name")
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(
            f"{flag}: {value!r} is not a valid label value (at most 63 letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit)"
        )


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """One workload: its names, labels and (if fixed) the port its application listens on.

    `service` and `service_account` default to `name`; `app_port` None means
    the launcher allocates one and tells the application in `PORT`.
    """

    name: str
    namespace: str = "default"
    service: str = ""
    version: str = ""
    service_account: str = ""
    app_port: int | None = None
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    # The application's Prometheus endpoint on 127.0.0.1, merged into the sidecar's
    # /stats/prometheus (the annotations prometheus.io/port and prometheus.io/path).
    metrics_port: int | None = None
    metrics_path: str = "/metrics"

    def __post_init__(self) -> None:
        checks = (
            ("--name", self.name, check_dns1123_subdomain),
            ("--namespace", self.namespace, check_dns1123_label),
            ("--service", self.service or self.name, check_dns1123_label),
            ("--service-account", self.service_account or self.name, check_dns1123_subdomain),
        )
        for flag, value, check in checks:
            try:
                check(value, "")
            except ValueError as exc:
                raise ConfigError(str(exc).strip(), path=flag) from None
        if self.app_port is not None and not 0 < self.app_port < 65536:
            raise ConfigError(f"expected a port 1-65535, got {self.app_port}", path="--port")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError(
                f"expected a port 1-65535, got {self.metrics_port}", path="--metrics-port"
            )
        if not self.metrics_path.startswith("/") or any(c in self.metrics_path for c in " \r\n"):
            raise ConfigError(
                f"expected a path starting with '/', got {self.metrics_path!r}",
                path="--metrics-path",
            )
        labels = {"--version": {"version": self.version}} if self.version else {}
        labels["--label"] = dict(self.extra_labels)
        for flag, items in labels.items():
            for key, value in items.items():
                try:
                    _check_label(key, value, flag)
                except ValueError as exc:
                    raise ConfigError(str(exc), path=flag) from None
                if flag == "--label" and key in (SERVING_LABEL, "version", TLS_MODE_LABEL):
                    raise ConfigError(
                        f"{key!r} is set by the launcher (use --service or --version)", path=flag
                    )
        object.__setattr__(self, "extra_labels", MappingProxyType(dict(self.extra_labels)))

    @property
    def service_name(self) -> str:
        return self.service or self.name

    @property
    def account(self) -> str:
        return self.service_account or self.name

    @property
    def host(self) -> str:
        """The service's FQDN: `SVC.NS.svc.cluster.local`."""
        return f"{self.service_name}.{self.namespace}.svc.cluster.local"

    @property
    def node_id(self) -> str:
        """The sidecar's node id: unique per workload across namespaces."""
        return f"{self.name}.{self.namespace}"

    def labels(self, *, serving: bool = True) -> dict[str, str]:
        """The workload's labels; without `app` (out of its service) unless `serving`."""
        labels = dict(self.extra_labels)
        if serving:
            labels[SERVING_LABEL] = self.service_name
        if self.version:
            labels["version"] = self.version
        labels[TLS_MODE_LABEL] = "istio"
        return labels


@dataclass(frozen=True, slots=True)
class SidecarPorts:
    """Where one workload's sidecar and application listen.

    Explicit capture (`transparent` False): loopback ports the launcher
    allocated, the inbound one registered as the workload's address.
    Transparent capture: Istio's fixed capture ports inside the workload's own
    network namespace, `address` its address on the bridge (registered with
    the application's port; the sidecar's admin, merged-metrics (`stats`) and
    health ports listen there too).
    """

    outbound: int
    inbound: int
    admin: int
    app: int
    address: str = LOOPBACK
    transparent: bool = False
    stats: int | None = None
    health: int | None = None

    @classmethod
    def in_namespace(cls, address: str, app: int) -> SidecarPorts:
        """Transparent capture: 15001 outbound, 15006 inbound, 15000 admin, 15020 merged
        metrics and 15021 health on `address`."""
        return cls(
            OUTBOUND_CAPTURE_PORT,
            INBOUND_CAPTURE_PORT,
            ADMIN_PORT,
            app,
            address,
            transparent=True,
            stats=STATS_PORT,
            health=HEALTH_PORT,
        )

    @property
    def capture(self) -> str:
        return "transparent" if self.transparent else "explicit"

    @property
    def workload_port(self) -> int:
        """The port peers connect to: the sidecar's inbound listener (explicit), else the
        application's own port, which iptables redirects to the inbound capture port."""
        return self.app if self.transparent else self.inbound


def service_entry(spec: WorkloadSpec, owner: str) -> dict[str, Any]:
    """The ServiceEntry the launcher creates when the service has none: one HTTP port 80."""
    return {
        "apiVersion": NETWORKING_VERSION,
        "kind": "ServiceEntry",
        "metadata": {
            "name": spec.service_name,
            "namespace": spec.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGER},
            "annotations": {OWNER_ANNOTATION: owner},
            "resourceVersion": "0",  # create only: another replica may be creating it too
        },
        "spec": {
            "hosts": [spec.host],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": SERVICE_PORT, "name": SERVICE_PORT_NAME, "protocol": "HTTP"}],
            "workloadSelector": {"labels": {SERVING_LABEL: spec.service_name}},
        },
    }


def service_port_names(entry: Mapping[str, Any], spec: WorkloadSpec) -> tuple[str, ...]:
    """The port names of an existing ServiceEntry that lead to this workload's one port.

    Raises LaunchError when the entry cannot take the workload: it selects no
    workloads, its selector does not match the workload's labels, or it mixes
    HTTP and TCP ports (the launcher serves one application port).
    """
    where = f"ServiceEntry {spec.namespace}/{spec.service_name}"
    body = entry.get("spec") or {}
    selector = (body.get("workloadSelector") or {}).get("labels")
    if not selector:
        raise LaunchError(
            f"{where} has no workloadSelector (it lists its endpoints itself), so trellis run "
            "cannot add a workload to it; give the workload another --service"
        )
    labels = spec.labels(serving=True)
    missing = {k: v for k, v in selector.items() if labels.get(k) != v}
    if missing:
        wanted = ",".join(f"{k}={v}" for k, v in sorted(missing.items()))
        raise LaunchError(
            f"{where} selects workloads with {wanted}, which this workload lacks "
            "(add them with --label KEY=VALUE)"
        )
    ports = body.get("ports") or []
    kinds = {str(port.get("protocol", "")).upper() in HTTP_PROTOCOLS for port in ports}
    if len(kinds) > 1:
        raise LaunchError(
            f"{where} mixes HTTP and TCP ports; trellis run serves one application port"
        )
    names = tuple(str(port["name"]) for port in ports if port.get("name"))
    if not names:
        raise LaunchError(f"{where} has no named ports")
    return names


def workload_entry(
    spec: WorkloadSpec,
    ports: SidecarPorts,
    port_names: Sequence[str],
    *,
    owner: str,
    serving: bool,
    resource_version: str,
) -> dict[str, Any]:
    """The workload's registration: `ports.workload_port` under every service port name.

    `resource_version` makes the write conditional ("0": create only).
    """
    return {
        "apiVersion": NETWORKING_VERSION,
        "kind": "WorkloadEntry",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGER},
            "annotations": {OWNER_ANNOTATION: owner},
            "resourceVersion": resource_version,
        },
        "spec": {
            "address": ports.address,
            "ports": {name: ports.workload_port for name in port_names},
            "labels": spec.labels(serving=serving),
            "serviceAccount": spec.account,
        },
    }


def owner_of(document: Mapping[str, Any]) -> str | None:
    """The launcher that registered a stored resource, None when not `trellis run`."""
    metadata = document.get("metadata") or {}
    owner = (metadata.get("annotations") or {}).get(OWNER_ANNOTATION)
    return str(owner) if owner else None


def proxy_arguments(
    spec: WorkloadSpec,
    ports: SidecarPorts,
    *,
    xds: str,
    token_file: str,
    drain_time: float,
    log_level: str = "info",
) -> list[str]:
    """`trellis proxy` arguments (after `proxy`) for the workload's sidecar."""
    args = ["--xds", xds, "--node-id", spec.node_id, "--admin-port", str(ports.admin)]
    if ports.address != LOOPBACK:
        args += ["--admin-address", ports.address]
    for flag, port in (("--stats-port", ports.stats), ("--health-port", ports.health)):
        if port is not None:
            args += [flag, str(port)]
    if (ports.stats, ports.health) != (None, None) and ports.address != LOOPBACK:
        args += ["--public-address", ports.address]
    args += ["--join-token-file", token_file, "--drain-time-s", f"{drain_time:g}"]
    args += ["--log-level", log_level]
    metadata = {
        "WORKLOAD_NAME": spec.name,
        "NAMESPACE": spec.namespace,
        "SERVICE_ACCOUNT": spec.account,
        "TRELLIS_CAPTURE_MODE": ports.capture,
        "TRELLIS_OUTBOUND_PORT": str(ports.outbound),
    }
    if not ports.transparent:
        metadata["TRELLIS_APP_PORTS"] = f"{ports.inbound}:{ports.app}"
    for key, value in metadata.items():
        args += ["--metadata", f"{key}={value}"]
    # All of them: the proxy labels its metrics with `app` and `version` (destination_app,
    # canonical service). The control plane goes by the WorkloadEntry while it exists.
    for key, value in spec.labels(serving=True).items():
        args += ["--label", f"{key}={value}"]
    if spec.metrics_port is not None:
        for key, value in (
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", str(spec.metrics_port)),
            ("prometheus.io/path", spec.metrics_path),
        ):
            args += ["--annotation", f"{key}={value}"]
    return args


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The launcher's environment without the credentials children must not see."""
    return {key: value for key, value in environ.items() if key not in SECRET_ENV}


def app_environment(
    environ: Mapping[str, str], spec: WorkloadSpec, ports: SidecarPorts
) -> dict[str, str]:
    """The application's environment: the caller's, plus its sidecar as HTTP proxy
    (explicit capture; transparent capture needs none, and drops any the caller had)."""
    env = child_environment(environ)
    if ports.transparent:
        for key in PROXY_ENV:
            env.pop(key, None)
    else:
        proxy = f"http://{LOOPBACK}:{ports.outbound}"
        env.update(HTTP_PROXY=proxy, http_proxy=proxy, NO_PROXY=NO_PROXY, no_proxy=NO_PROXY)
    env.update(
        PORT=str(ports.app),
        TRELLIS_WORKLOAD=spec.name,
        TRELLIS_NAMESPACE=spec.namespace,
        TRELLIS_SERVICE=spec.service_name,
    )
    return env
