"""The control plane's Deployment and Services.

Ports (DESIGN.md §4): 15010 xDS and CA in plaintext, 15012 xDS and CA over
TLS, 15014 the control plane's own metrics, 15017 the injection webhook,
8080 the REST API and dashboard (whose `/healthz` answers the probes). The
`trellis` Service carries all but the webhook; `trellis-webhook` maps 443, the
port the API server calls webhooks on, to 15017.

The container runs `trellis control-plane --platform kubernetes` with
TokenReview authentication and leader election (`control_plane_args`); the
downward API gives it POD_NAME and POD_NAMESPACE, who it is in the Lease.
The pods run as a non-root user with a read-only root filesystem, every
capability dropped and the runtime's default seccomp profile; what they write
(the data directory, temporary files) is on emptyDir volumes. The CA's key
and certificates come from the `cacerts` Secret (Istio's plug-in CA layout:
`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`), so every
replica signs with the root whose certificate is the webhook's `caBundle`.
The REST API's token comes from the optional `trellis-api-token` Secret, so
any replica behind the Service accepts the same token.
Replicas prefer different nodes. Each pod serves its own metrics on 15014
(`--monitoring-address`) and carries Prometheus's scrape annotations for them.
"""

from __future__ import annotations

from typing import Any

from trellis.kube.install_settings import InstallNames, InstallSettings
from trellis.kube.webhook_config import (
    SERVICE_PORT,
    WEBHOOK_PORT,
    webhook_dns_names,
    webhook_service_reference,
)

XDS_PORT = 15010
XDS_TLS_PORT = 15012
MONITORING_PORT = 15014
API_PORT = 8080
CONTAINER_NAME = "control-plane"
DATA_DIR = "/var/lib/trellis"
CACERTS_SECRET = "cacerts"
CACERTS_DIR = "/etc/cacerts"
API_TOKEN_SECRET = "trellis-api-token"
API_TOKEN_KEY = "token"
API_TOKEN_DIR = "/etc/trellis/api-token"
RUN_AS = 10001
HEALTH_PATH = "/healthz"
PORTS = (
    ("grpc-xds", XDS_PORT),
    ("grpc-xds-tls", XDS_TLS_PORT),
    ("http-monitoring", MONITORING_PORT),
    ("https-webhook", WEBHOOK_PORT),
    ("http-api", API_PORT),
)
"""(name, port) of every port the control-plane container declares."""
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(MONITORING_PORT),
    "prometheus.io/path": "/metrics",
}
"""Prometheus finds the control plane's own metrics (`--monitoring-address`) by these."""
RESOURCES = {
    "requests": {"cpu": "200m", "memory": "256Mi"},
    "limits": {"cpu": "2", "memory": "1Gi"},
}


def control_plane_args(settings: InstallSettings) -> list[str]:
    """`trellis control-plane ...` as the container runs it.

    The Kubernetes platform (config in the CRDs, the registry from the API
    server) through the pod's service account; the CA checks proxies'
    projected tokens with TokenReview; the replicas elect a leader with this
    installation's Lease (as $POD_NAME in $POD_NAMESPACE, from the downward
    API); the webhook's certificate names this installation's webhook Service.
    xDS and the CA are also served over TLS on 15012, with a certificate for the
    `trellis` Service's names; the injected sidecars run the same image and dial
    that port, trusting the root the control plane copies into their namespace.
    """
    names = settings.names
    return [
        "control-plane",
        "--platform",
        "kubernetes",
        "--ca-authentication",
        "token-review",
        "--leader-lease",
        names.leader_lease,
        "--data-dir",
        DATA_DIR,
        "--xds-address",
        f"0.0.0.0:{XDS_PORT}",
        "--xds-socket",
        "",
        "--xds-tls-address",
        f"0.0.0.0:{XDS_TLS_PORT}",
        "--xds-tls-names",
        ",".join(webhook_dns_names(names.control_plane, names.namespace)),
        "--api-host",
        "0.0.0.0",
        "--api-port",
        str(API_PORT),
        "--api-token-file",
        f"{API_TOKEN_DIR}/{API_TOKEN_KEY}",
        "--monitoring-address",
        f"0.0.0.0:{MONITORING_PORT}",
        "--trust-domain",
        settings.trust_domain,
        "--ca-cert",
        f"{CACERTS_DIR}/ca-cert.pem",
        "--ca-key",
        f"{CACERTS_DIR}/ca-key.pem",
        "--ca-chain",
        f"{CACERTS_DIR}/cert-chain.pem",
        "--webhook-address",
        f"0.0.0.0:{WEBHOOK_PORT}",
        "--webhook-service",
        webhook_service_reference(names.webhook_service, names.namespace),
        "--inject-image",
        settings.image,
        "--inject-image-pull-policy",
        settings.image_pull_policy,
        "--inject-control-plane",
        f"{names.control_plane}.{names.namespace}.svc:{XDS_TLS_PORT}",
    ]


def _probe(period: int, failures: int, initial_delay: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": HEALTH_PATH, "port": "http-api"},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _container(settings: InstallSettings) -> dict[str, Any]:
    return {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["trellis"],
        "args": control_plane_args(settings),
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in PORTS],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "readinessProbe": _probe(period=5, failures=3, initial_delay=1),
        "livenessProbe": _probe(period=10, failures=6, initial_delay=15),
        "resources": RESOURCES,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": CACERTS_SECRET, "mountPath": CACERTS_DIR, "readOnly": True},
            {"name": API_TOKEN_SECRET, "mountPath": API_TOKEN_DIR, "readOnly": True},
        ],
    }


def deployment(settings: InstallSettings) -> dict[str, Any]:
    names = settings.names
    selector = names.selector()
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": names.control_plane,
            "namespace": names.namespace,
            "labels": {**names.labels("control-plane"), **selector},
        },
        "spec": {
            "replicas": settings.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": {**selector, "sidecar.trellis.io/inject": "false"},
                    "annotations": dict(SCRAPE_ANNOTATIONS),
                },
                "spec": _pod_spec(settings),
            },
        },
    }


def _pod_spec(settings: InstallSettings) -> dict[str, Any]:
    names = settings.names
    return {
        "serviceAccountName": names.control_plane,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": names.selector()},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            }
        },
        "containers": [_container(settings)],
        "volumes": [
            {"name": "data", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {
                "name": CACERTS_SECRET,
                "secret": {"secretName": CACERTS_SECRET, "defaultMode": 0o440},
            },
            {
                # Optional: without it each replica keeps a token of its own.
                "name": API_TOKEN_SECRET,
                "secret": {
                    "secretName": API_TOKEN_SECRET,
                    "defaultMode": 0o440,
                    "optional": True,
                },
            },
        ],
    }


def services(names: InstallNames) -> list[dict[str, Any]]:
    """`trellis` (xDS, CA, metrics, API) and `trellis-webhook` (443 -> 15017)."""
    selector = names.selector()
    labels = names.labels("control-plane")
    main_ports = [
        {"name": name, "port": port, "targetPort": port, "protocol": "TCP"}
        for name, port in PORTS
        if port != WEBHOOK_PORT
    ]
    webhook_port = {
        "name": "https-webhook",
        "port": SERVICE_PORT,
        "targetPort": WEBHOOK_PORT,
        "protocol": "TCP",
    }
    return [
        _service(names.control_plane, names.namespace, labels, selector, main_ports),
        _service(names.webhook_service, names.namespace, labels, selector, [webhook_port]),
    ]


def _service(
    name: str,
    namespace: str,
    labels: dict[str, str],
    selector: dict[str, str],
    ports: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"type": "ClusterIP", "selector": selector, "ports": ports},
    }
