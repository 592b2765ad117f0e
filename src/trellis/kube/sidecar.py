"""The containers and volumes injection adds to a pod, as Kubernetes JSON.

Modelled on Istio's injection template: `trellis-init` installs the capture
rules (`trellis iptables`, like `istio-iptables`) with NET_ADMIN and NET_RAW,
then exits; `trellis-proxy` runs as uid/gid 1337, which those rules let
through. The proxy learns who it is from the downward API (pod name,
namespace, service account, IP, expanded by the kubelet in its arguments as
`$(VAR)`), and proves it to the CA with a projected service-account token
whose audience is `trellis-ca`. It reaches the control plane over TLS,
trusting the root the control plane keeps in the `trellis-ca-root-cert`
ConfigMap of the pod's namespace (the pod waits for that volume until the
ConfigMap exists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trellis.core.app_probe import APP_PROBERS_ENV
from trellis.core.sidecar_ports import (
    ADMIN_PORT,
    ENVOY_METRICS_PORT,
    HEALTH_PORT,
    MERGED_METRICS_PORT,
    PROXY_GID,
    PROXY_UID,
    SIDECAR_PORTS,
)
from trellis.kube.root_cert import ROOT_CERT_CONFIG_MAP, ROOT_CERT_KEY
from trellis.kube.settings import (
    INBOUND_PORT,
    INIT_NAME,
    OUTBOUND_PORT,
    PODINFO_DIR,
    PODINFO_VOLUME,
    PROXY_NAME,
    READY_PATH,
    ROOT_CERT_DIR,
    ROOT_CERT_VOLUME,
    TMP_VOLUME,
    TOKEN_AUDIENCE,
    TOKEN_DIR,
    TOKEN_EXPIRATION,
    TOKEN_PATH,
    TOKEN_VOLUME,
    InjectionSettings,
)

Json = dict[str, Any]

DOWNWARD_ENV = (
    ("POD_NAME", "metadata.name"),
    ("POD_NAMESPACE", "metadata.namespace"),
    ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ("INSTANCE_IP", "status.podIP"),
)
"""Environment from the downward API; the proxy's arguments refer to it as $(NAME)."""


@dataclass(frozen=True, slots=True)
class Capture:
    """Which traffic the init step leaves alone, from the pod's annotations."""

    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_ip_ranges: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Workload:
    """What the proxy is told about its pod besides the downward API."""

    name: str
    labels: Mapping[str, str]
    metrics_annotations: Mapping[str, str]
    """The application's own `prometheus.io/*`, which the proxy merges into 15020."""
    app_probes: str = ""
    """The application's probes the proxy performs for the kubelet (JSON; "" for none)."""


def init_container(settings: InjectionSettings, capture: Capture) -> Json:
    """`trellis-init`: writes the pod's nat table, then exits."""
    excluded_inbound = dict.fromkeys((*SIDECAR_PORTS, *capture.exclude_inbound_ports))
    args = [
        "iptables",
        "--proxy-gid",
        str(PROXY_GID),
        "--outbound-port",
        str(OUTBOUND_PORT),
        "--inbound-port",
        str(INBOUND_PORT),
        "--exclude-inbound-ports",
        _join(excluded_inbound),
    ]
    if capture.exclude_outbound_ports:
        args += ["--exclude-outbound-ports", _join(capture.exclude_outbound_ports)]
    if capture.exclude_outbound_ip_ranges:
        args += ["--exclude-outbound-ip-ranges", ",".join(capture.exclude_outbound_ip_ranges)]
    return {
        "name": INIT_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["trellis"],
        "args": args,
        "resources": settings.init_resources.to_spec(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": False,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "runAsUser": 0,
        },
    }


def proxy_container(settings: InjectionSettings, workload: Workload) -> Json:
    """`trellis-proxy`: the sidecar, a native one (restartPolicy Always) or a regular one."""
    container: Json = {
        "name": PROXY_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["trellis"],
        "args": proxy_arguments(settings, workload),
        "env": _env(workload),
        "ports": [
            {"containerPort": ENVOY_METRICS_PORT, "name": "http-envoy-prom", "protocol": "TCP"}
        ],
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": HEALTH_PORT},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 30,
        },
        "resources": settings.proxy_resources.to_spec(),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsGroup": PROXY_GID,
            "runAsNonRoot": True,
            "runAsUser": PROXY_UID,
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": True},
            {"name": ROOT_CERT_VOLUME, "mountPath": ROOT_CERT_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }
    if settings.native_sidecar:
        container["restartPolicy"] = "Always"
        # The application's containers start once this passes: they never run unmeshed.
        container["startupProbe"] = {
            "httpGet": {"path": READY_PATH, "port": HEALTH_PORT},
            "periodSeconds": 1,
            "timeoutSeconds": 3,
            "failureThreshold": 600,
        }
    return container


def proxy_arguments(settings: InjectionSettings, workload: Workload) -> list[str]:
    """`trellis proxy ...`, with Istio's node id and metadata keys."""
    args = [
        "proxy",
        "--xds",
        settings.control_plane,
        # TLS, trusting the mesh root the control plane keeps in the pod's namespace.
        "--xds-root-ca",
        f"{ROOT_CERT_DIR}/{ROOT_CERT_KEY}",
        "--node-id",
        "sidecar~$(INSTANCE_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local",
        "--admin-port",
        str(ADMIN_PORT),
        # What the readiness probe and Prometheus (the pod's scrape annotations) ask,
        # from outside the pod; the admin port stays on 127.0.0.1.
        "--stats-port",
        str(MERGED_METRICS_PORT),
        "--health-port",
        str(HEALTH_PORT),
        "--public-address",
        "0.0.0.0",
        "--join-token-file",
        TOKEN_PATH,
        "--log-level",
        settings.log_level,
    ]
    metadata = {
        "NAME": "$(POD_NAME)",
        "NAMESPACE": "$(POD_NAMESPACE)",
        "SERVICE_ACCOUNT": "$(SERVICE_ACCOUNT)",
        "INSTANCE_IPS": "$(INSTANCE_IP)",
        "WORKLOAD_NAME": workload.name,
        "TRELLIS_CAPTURE_MODE": "transparent",
        "TRELLIS_OUTBOUND_PORT": str(OUTBOUND_PORT),
    }
    for key, value in metadata.items():
        args += ["--metadata", f"{key}={value}"]
    for key, value in sorted(workload.labels.items()):
        args += ["--label", f"{key}={_literal(value)}"]
    for key, value in sorted(workload.metrics_annotations.items()):
        args += ["--annotation", f"{key}={_literal(value)}"]
    return args


def volumes() -> list[Json]:
    """The token the CA checks, the pod's labels and annotations, the mesh root, and a
    scratch /tmp."""
    return [
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE,
                            "expirationSeconds": TOKEN_EXPIRATION,
                            "path": TOKEN_VOLUME,
                        }
                    }
                ]
            },
        },
        {
            "name": PODINFO_VOLUME,
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                ]
            },
        },
        {
            "name": ROOT_CERT_VOLUME,
            "configMap": {
                "name": ROOT_CERT_CONFIG_MAP,
                "items": [{"key": ROOT_CERT_KEY, "path": ROOT_CERT_KEY}],
            },
        },
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]


def _env(workload: Workload) -> list[Json]:
    """The downward API's facts, and the application's probes when the proxy performs them."""
    env: list[Json] = [
        {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
        for name, path in DOWNWARD_ENV
    ]
    if workload.app_probes:
        env.append({"name": APP_PROBERS_ENV, "value": workload.app_probes})
    return env


def _join(ports: Sequence[int] | Mapping[int, None]) -> str:
    return ",".join(str(port) for port in ports)


def _literal(value: str) -> str:
    """A value the kubelet must not expand: `$(` is written `$$(` (Kubernetes' escape)."""
    return value.replace("$(", "$$(")
