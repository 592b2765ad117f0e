"""The injection webhook's names and its registration with the API server, as data.

The API server reaches the webhook through a Service (`trellis-webhook` in
`trellis-system` unless the install names another) and verifies its serving
certificate against the `caBundle` of the MutatingWebhookConfiguration: the
mesh CA's root, which also signs that certificate
(`trellis.controlplane.webhook`) for the Service's DNS names, so the control
plane must be told which Service that is (`--webhook-service NAME.NAMESPACE`,
read by `parse_webhook_service`). `trellis install` renders the configuration
with `mutating_webhook_configuration`.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from trellis.kube.settings import INJECT_KEYS, NAMESPACE_LABELS

SERVICE_NAME = "trellis-webhook"
SERVICE_NAMESPACE = "trellis-system"
WEBHOOK_PORT = 15017
SERVICE_PORT = 443
INJECT_PATH = "/inject"
CONFIGURATION_NAME = "trellis-sidecar-injector"
WEBHOOK_NAME = "sidecar-injector.trellis.io"
TIMEOUT_SECONDS = 10

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def webhook_service_reference(service: str, namespace: str) -> str:
    """`NAME.NAMESPACE`: how the install tells the control plane its webhook's Service."""
    return f"{service}.{namespace}"


def parse_webhook_service(value: str) -> tuple[str, str]:
    """`NAME.NAMESPACE` as (name, namespace); ValueError saying what is wrong.

    Both parts must be DNS-1123 labels, as a Service's name and a namespace are.
    """
    name, dot, namespace = value.partition(".")
    if not dot:
        raise ValueError(f"expected NAME.NAMESPACE (a Service and its namespace), got {value!r}")
    for what, part in (("service name", name), ("namespace", namespace)):
        if len(part) > 63 or not _DNS1123_LABEL.match(part):
            raise ValueError(
                f"the {what} {part!r} in {value!r} is not a DNS-1123 label (lowercase letters, "
                "digits and '-', at most 63)"
            )
    return name, namespace


def webhook_dns_names(
    service: str = SERVICE_NAME, namespace: str = SERVICE_NAMESPACE
) -> tuple[str, ...]:
    """The names the API server may use for the webhook's Service: its certificate's SANs."""
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    )


def ca_bundle(root_pem: str | bytes) -> str:
    """The `caBundle` field: the PEM root, base64 encoded."""
    data = root_pem.encode("ascii") if isinstance(root_pem, str) else root_pem
    return base64.b64encode(data).decode("ascii")


def client_config(
    root_pem: str | bytes, service: str = SERVICE_NAME, namespace: str = SERVICE_NAMESPACE
) -> dict[str, Any]:
    """`webhooks[].clientConfig`: the Service, the path and the CA bundle."""
    return {
        "service": {
            "name": service,
            "namespace": namespace,
            "path": INJECT_PATH,
            "port": SERVICE_PORT,
        },
        "caBundle": ca_bundle(root_pem),
    }


def mutating_webhook_configuration(
    root_pem: str | bytes, service: str = SERVICE_NAME, namespace: str = SERVICE_NAMESPACE
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration: pods created in namespaces labelled for injection.

    Two webhooks as Istio has them: `trellis-injection=enabled`, and
    `istio-injection=enabled` where no `trellis-injection` label is set. Pods
    labelled `sidecar.trellis.io/inject=false` are not even sent.
    """
    trellis_label, istio_label = NAMESPACE_LABELS
    selectors = [
        {"matchExpressions": [{"key": trellis_label, "operator": "In", "values": ["enabled"]}]},
        {
            "matchExpressions": [
                {"key": istio_label, "operator": "In", "values": ["enabled"]},
                {"key": trellis_label, "operator": "DoesNotExist"},
            ]
        },
    ]
    webhooks = [
        {
            "name": f"{prefix}.{WEBHOOK_NAME}",
            "admissionReviewVersions": ["v1"],
            "clientConfig": client_config(root_pem, service, namespace),
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "namespaceSelector": selector,
            "objectSelector": {
                "matchExpressions": [
                    {"key": key, "operator": "NotIn", "values": ["false"]} for key in INJECT_KEYS
                ]
            },
            "reinvocationPolicy": "Never",
            "rules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["pods"],
                    "scope": "Namespaced",
                }
            ],
            "sideEffects": "None",
            "timeoutSeconds": TIMEOUT_SECONDS,
        }
        for prefix, selector in (("namespace", selectors[0]), ("istio-namespace", selectors[1]))
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION_NAME, "labels": {"app": "trellis"}},
        "webhooks": webhooks,
    }
