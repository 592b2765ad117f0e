"""Every manifest of a Trellis installation on Kubernetes, as data, and as YAML.

`render_manifests` returns, in the order they must be applied: the
namespace, the CRDs, the control plane's ServiceAccount and RBAC, the CA
and API token Secrets when asked for, the Services, the Deployment, and the
MutatingWebhookConfiguration (last, so the webhook it names can exist before
the API server starts calling it). `render_yaml` prints them as one
multi-document YAML stream; the same settings always give the same bytes.

The CA: the webhook's `caBundle` is the mesh CA's root, so the control plane
must sign with that root. It reads its key from the `cacerts` Secret; `trellis
install` renders that Secret only when asked (it holds the private key), and
otherwise the operator creates it (see docs/kubernetes-install.md).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from trellis.kube.crds import KindNames, crd_manifests, crd_names
from trellis.kube.install_rbac import rbac_manifests, service_account
from trellis.kube.install_settings import (
    ISTIO_REVISION_LABEL,
    PART_OF,
    REVISION_LABEL,
    InstallNames,
    InstallSettings,
)
from trellis.kube.install_workload import (
    API_TOKEN_KEY,
    API_TOKEN_SECRET,
    CACERTS_SECRET,
    deployment,
    services,
)
from trellis.kube.settings import NAMESPACE_LABELS
from trellis.kube.webhook_config import mutating_webhook_configuration


@dataclass(frozen=True, slots=True)
class CaFiles:
    """The CA's files in Istio's plug-in layout, for the `cacerts` Secret (all PEM)."""

    cert_pem: str
    """The signing certificate (`ca-cert.pem`)."""
    key_pem: str
    """Its private key (`ca-key.pem`)."""
    chain_pem: str
    """The signing certificate and those above it up to the root (`cert-chain.pem`)."""
    root_pem: str
    """The root (`root-cert.pem`)."""

    def items(self) -> dict[str, str]:
        return {
            "ca-cert.pem": self.cert_pem,
            "ca-key.pem": self.key_pem,
            "cert-chain.pem": self.chain_pem,
            "root-cert.pem": self.root_pem,
        }


def shared_labels(component: str) -> dict[str, str]:
    """Labels of the objects all revisions share (namespace, CRDs)."""
    return {
        "app.kubernetes.io/name": "trellis",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/component": component,
    }


def namespace(names: InstallNames) -> dict[str, Any]:
    """The control plane's namespace; its pods meet the `restricted` Pod Security Standard."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": names.namespace,
            "labels": {
                **shared_labels("control-plane"),
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }


def ca_secret(names: InstallNames, files: CaFiles) -> dict[str, Any]:
    """The `cacerts` Secret the control plane reads its CA from (holds the private key)."""
    return _secret(names, CACERTS_SECRET, "ca", files.items())


def api_token_secret(names: InstallNames, token: str) -> dict[str, Any]:
    """The `trellis-api-token` Secret: the REST API token every replica accepts."""
    return _secret(names, API_TOKEN_SECRET, "api", {API_TOKEN_KEY: token})


def _secret(
    names: InstallNames, name: str, component: str, data: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": names.namespace,
            "labels": names.labels(component),
        },
        "type": "Opaque",
        "data": {
            key: base64.b64encode(value.encode("ascii")).decode("ascii")
            for key, value in data.items()
        },
    }


def webhook_configuration(settings: InstallSettings) -> dict[str, Any]:
    """The MutatingWebhookConfiguration, for this installation's Service and revision.

    The default installation injects namespaces labelled `trellis-injection=enabled`
    (or `istio-injection=enabled`); a revision injects those labelled
    `trellis.io/rev=REVISION` (or `istio.io/rev=REVISION`) and no injection label.
    """
    names = settings.names
    configuration = mutating_webhook_configuration(
        settings.ca_bundle_pem, names.webhook_service, names.namespace
    )
    configuration["metadata"] = {
        "name": names.webhook_configuration,
        "labels": names.labels("injector"),
    }
    if names.revision:
        for webhook, selector in zip(
            configuration["webhooks"], _revision_selectors(names.revision), strict=True
        ):
            webhook["namespaceSelector"] = selector
    return configuration


def _revision_selectors(revision: str) -> list[dict[str, Any]]:
    trellis_label, istio_label = NAMESPACE_LABELS
    absent = [{"key": key, "operator": "DoesNotExist"} for key in (trellis_label, istio_label)]
    return [
        {
            "matchExpressions": [
                {"key": REVISION_LABEL, "operator": "In", "values": [revision]},
                *absent,
            ]
        },
        {
            "matchExpressions": [
                {"key": ISTIO_REVISION_LABEL, "operator": "In", "values": [revision]},
                {"key": REVISION_LABEL, "operator": "DoesNotExist"},
                *absent,
            ]
        },
    ]


def render_manifests(
    settings: InstallSettings,
    kinds: Iterable[KindNames],
    ca_files: CaFiles | None = None,
    api_token: str | None = None,
) -> list[dict[str, Any]]:
    """All manifests of the installation, in apply order.

    `kinds` are the kinds to define CRDs for (`trellis.controlplane.api_kinds.KINDS`);
    `ca_files`, when given, adds the `cacerts` Secret, `api_token` the
    `trellis-api-token` one.
    """
    names = settings.names
    crds = crd_manifests(kinds, shared_labels("crd"))
    manifests = [
        namespace(names),
        *crds,
        service_account(names),
        *rbac_manifests(names, crd_names(crds)),
    ]
    if ca_files is not None:
        manifests.append(ca_secret(names, ca_files))
    if api_token is not None:
        manifests.append(api_token_secret(names, api_token))
    manifests += [*services(names), deployment(settings), webhook_configuration(settings)]
    return manifests


def render_yaml(manifests: Sequence[Mapping[str, Any]], header: str = "") -> str:
    """One multi-document YAML stream; `header` lines are prefixed with `# `."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.safe_dump_all(
        [dict(manifest) for manifest in manifests],
        sort_keys=False,
        explicit_start=True,
        allow_unicode=True,
        width=100,
    )
    return comment + body
