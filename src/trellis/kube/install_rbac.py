"""The control plane's identity and exactly the permissions it needs.

Each rule is a call the control plane makes (`trellis.controlplane.kube_*`),
and nothing more:
- cluster-wide, list and watch Namespaces, Services, Pods and EndpointSlices
  (discovery's informers never get one object);
- cluster-wide, the Trellis CRDs (the config store): list and watch (its
  cache), get (to look again after a conflict), and create, update and delete
  (the REST API's writes: a POST, a PUT carrying the resourceVersion it
  expects, a DELETE with that precondition; never a patch of the object);
- cluster-wide, patch the Trellis CRDs' `status` subresource only (the
  leader's analysis findings, a JSON merge patch: `kube_status`);
- create TokenReviews (who a CSR's service-account token belongs to);
- in every namespace, create the `trellis-ca-root-cert` ConfigMap, and list
  (by its name) and update only that one: the mesh root sidecars trust;
- in its own namespace, a Role to create the leader-election Lease and then
  read and renew only that one, by name.
No Secrets (the CA's key is a mounted Secret, read by the kubelet), no
webhook configurations (the CA bundle is fixed at install), no write access
to anything else users own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from trellis.kube.install_settings import InstallNames
from trellis.kube.root_cert import ROOT_CERT_CONFIG_MAP

RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
FOLLOW = ("list", "watch")
"""What an informer does: list, then watch from the list's resourceVersion."""
CONFIG_STORE = ("get", "list", "watch", "create", "update", "delete")
"""What the CRD config store does (`trellis.controlplane.kube_store`)."""
STATUS_WRITE = ("patch",)
"""What the leader's status writer does to `<plural>/status` (`controlplane.kube_status`)."""


def service_account(names: InstallNames) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": names.control_plane,
            "namespace": names.namespace,
            "labels": names.labels("control-plane"),
        },
    }


def cluster_rules(crds: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The ClusterRole's rules; `crds` are the (group, plural) of the Trellis CRDs."""
    by_group: dict[str, list[str]] = defaultdict(list)
    for group, plural in crds:
        by_group[group].append(plural)
    rules: list[dict[str, Any]] = [
        _rule("", ("namespaces", "pods", "services"), FOLLOW),
        _rule("discovery.k8s.io", ("endpointslices",), FOLLOW),
    ]
    rules += [_rule(group, sorted(by_group[group]), CONFIG_STORE) for group in sorted(by_group)]
    rules += [
        _rule(group, [f"{plural}/status" for plural in sorted(by_group[group])], STATUS_WRITE)
        for group in sorted(by_group)
    ]
    rules.append(_rule("authentication.k8s.io", ("tokenreviews",), ("create",)))
    # The mesh root in every namespace (`trellis.kube.root_cert`): a list by name and
    # updates of that one name; creates cannot be limited by name.
    rules.append(
        {**_rule("", ("configmaps",), ("list", "update")), "resourceNames": [ROOT_CERT_CONFIG_MAP]}
    )
    rules.append(_rule("", ("configmaps",), ("create",)))
    return rules


def namespace_rules(names: InstallNames) -> list[dict[str, Any]]:
    """The Role's rules: leader election with one Lease (create cannot be limited by name)."""
    return [
        _rule("coordination.k8s.io", ("leases",), ("create",)),
        {
            **_rule("coordination.k8s.io", ("leases",), ("get", "update")),
            "resourceNames": [names.leader_lease],
        },
    ]


def rbac_manifests(names: InstallNames, crds: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """ClusterRole + ClusterRoleBinding, Role + RoleBinding, for the control plane's account."""
    labels = names.labels("control-plane")
    subject = {"kind": "ServiceAccount", "name": names.control_plane, "namespace": names.namespace}
    return [
        {
            "apiVersion": RBAC_API_VERSION,
            "kind": "ClusterRole",
            "metadata": {"name": names.cluster_role, "labels": labels},
            "rules": cluster_rules(crds),
        },
        {
            "apiVersion": RBAC_API_VERSION,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": names.cluster_role, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": names.cluster_role,
            },
            "subjects": [subject],
        },
        {
            "apiVersion": RBAC_API_VERSION,
            "kind": "Role",
            "metadata": {"name": names.role, "namespace": names.namespace, "labels": labels},
            "rules": namespace_rules(names),
        },
        {
            "apiVersion": RBAC_API_VERSION,
            "kind": "RoleBinding",
            "metadata": {"name": names.role, "namespace": names.namespace, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": names.role,
            },
            "subjects": [subject],
        },
    ]


def _rule(group: str, resources: Iterable[str], verbs: Iterable[str]) -> dict[str, Any]:
    return {"apiGroups": [group], "resources": list(resources), "verbs": list(verbs)}
