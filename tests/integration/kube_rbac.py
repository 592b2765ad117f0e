"""RBAC as the API server decides it, over rendered manifests: a TEST DOUBLE's authorizer.

`RbacAuthorizer.for_account` collects the ClusterRoles and Roles that the
manifests bind to one ServiceAccount, and `allows(access)` answers as
Kubernetes' RBAC authorizer does for the requests the stand-in serves: a
rule matches when its apiGroups, resources and verbs hold the request's (or
`*`), and, when it lists resourceNames, the request names one of them (so a
create or a list never matches such a rule). A ClusterRole bound by a
ClusterRoleBinding applies everywhere; a Role bound by a RoleBinding only to
requests in its namespace. Aggregated roles and non-resource URLs are not
modelled: the install uses neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .kube_standin import Access

Manifest = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ScopedRules:
    """The rules of one bound role; `namespace` "" for a ClusterRole."""

    namespace: str
    rules: tuple[Mapping[str, Any], ...]


def _holds(values: Iterable[str], wanted: str) -> bool:
    values = list(values)
    return "*" in values or wanted in values


def rule_allows(rule: Mapping[str, Any], access: Access) -> bool:
    """Whether one PolicyRule grants `access`."""
    names = rule.get("resourceNames") or []
    return (
        _holds(rule.get("apiGroups") or [], access.group)
        and _holds(rule.get("resources") or [], access.resource)
        and _holds(rule.get("verbs") or [], access.verb)
        and (not names or access.name in names)
    )


class RbacAuthorizer:
    """What one ServiceAccount may do under the rendered RBAC manifests."""

    def __init__(self, bound: Iterable[ScopedRules]) -> None:
        self.bound = tuple(bound)

    @classmethod
    def for_account(
        cls, manifests: Iterable[Manifest], namespace: str, name: str
    ) -> RbacAuthorizer:
        found = list(manifests)
        subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
        roles = {
            (m["kind"], m["metadata"].get("namespace", ""), m["metadata"]["name"]): m
            for m in found
            if m["kind"] in ("ClusterRole", "Role")
        }
        bound: list[ScopedRules] = []
        for binding in found:
            if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
                continue
            if subject not in binding.get("subjects", []):
                continue
            scope = binding["metadata"].get("namespace", "")
            ref = binding["roleRef"]
            role_scope = "" if ref["kind"] == "ClusterRole" else scope
            role = roles.get((ref["kind"], role_scope, ref["name"]))
            assert role is not None, f"{binding['kind']} {binding['metadata']['name']}: no {ref}"
            bound.append(ScopedRules(scope, tuple(role.get("rules", []))))
        return cls(bound)

    def allows(self, access: Access) -> bool:
        return any(
            (not scoped.namespace or scoped.namespace == access.namespace)
            and any(rule_allows(rule, access) for rule in scoped.rules)
            for scoped in self.bound
        )
