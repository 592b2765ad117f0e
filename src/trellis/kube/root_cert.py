"""The mesh's root certificate in every namespace, as a ConfigMap sidecars mount.

Injected sidecars reach the control plane over TLS (port 15012) and must
trust its certificate before they hold one of their own. Like Istio's
`istio-ca-root-cert`, the control plane keeps a ConfigMap
`trellis-ca-root-cert` with the root bundle under `root-cert.pem` in every
namespace (but Kubernetes' own), and injection mounts it into the proxy.

Pure: `plan_root_certs` compares the namespaces and the ConfigMaps that
exist with the bundle the CA has and says what to create and what to
rewrite; `trellis.controlplane.kube_root_cert` carries it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ROOT_CERT_CONFIG_MAP = "trellis-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
SKIPPED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
"""Kubernetes' own namespaces never run meshed workloads; Istio skips them too."""
MANAGED_BY = {"app.kubernetes.io/managed-by": "trellis"}


def root_cert_config_map(namespace: str, root_pem: str) -> dict[str, Any]:
    """The ConfigMap as it should be in `namespace`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CERT_CONFIG_MAP,
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
        },
        "data": {ROOT_CERT_KEY: root_pem},
    }


@dataclass(frozen=True, slots=True)
class RootCertPlan:
    """What one round writes: new ConfigMaps, and existing ones whose data is wrong.

    `update` holds the existing objects with their data replaced, keeping
    their resourceVersion, so a concurrent change makes the write conflict
    instead of being overwritten blindly.
    """

    create: tuple[dict[str, Any], ...] = ()
    update: tuple[dict[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.create or self.update)


def plan_root_certs(
    namespaces: Iterable[Mapping[str, Any]],
    config_maps: Iterable[Mapping[str, Any]],
    root_pem: str,
) -> RootCertPlan:
    """Creates and updates that make every meshable namespace hold `root_pem`.

    `namespaces` are Namespace objects (one terminating is left alone: the API
    server refuses new objects there); `config_maps` the `trellis-ca-root-cert`
    ConfigMaps that exist, any namespace. ConfigMaps in namespaces that are gone
    need nothing: they went with their namespace.
    """
    existing = {
        str(cm.get("metadata", {}).get("namespace", "")): cm
        for cm in config_maps
        if cm.get("metadata", {}).get("name") == ROOT_CERT_CONFIG_MAP
    }
    create: list[dict[str, Any]] = []
    update: list[dict[str, Any]] = []
    for namespace in sorted(_meshable(namespaces)):
        current = existing.get(namespace)
        if current is None:
            create.append(root_cert_config_map(namespace, root_pem))
        elif (current.get("data") or {}).get(ROOT_CERT_KEY) != root_pem:
            update.append(_with_root(current, root_pem))
    return RootCertPlan(tuple(create), tuple(update))


def _meshable(namespaces: Iterable[Mapping[str, Any]]) -> set[str]:
    names = set()
    for namespace in namespaces:
        name = str(namespace.get("metadata", {}).get("name", ""))
        phase = (namespace.get("status") or {}).get("phase")
        if name and name not in SKIPPED_NAMESPACES and phase != "Terminating":
            names.add(name)
    return names


def _with_root(config_map: Mapping[str, Any], root_pem: str) -> dict[str, Any]:
    """`config_map` with its root replaced (other keys, labels and version kept)."""
    metadata = dict(config_map.get("metadata") or {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **MANAGED_BY}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {**(config_map.get("data") or {}), ROOT_CERT_KEY: root_pem},
    }
