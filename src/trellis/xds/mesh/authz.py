"""AuthorizationPolicies -> the RBAC HTTP filters of a workload's inbound listeners.

A policy applies to a workload when it is in the workload's namespace or in
the root namespace (`trellis-system`, alias `istio-system`; there a selector
picks workloads in every namespace), and its `selector.matchLabels` (if any)
are among the workload's labels. The applying policies become up to three
`envoy.filters.http.rbac` filters, in Istio's order: AUDIT (action LOG),
DENY, ALLOW; each rule one RBAC policy (`authz_rules`). A policy without
rules becomes a policy that never matches, so an ALLOW policy without rules
(and no other ALLOW policy) denies everything, as in Istio. A workload no
policy applies to gets no RBAC filter at all.

Trellis applies the filters to inbound HTTP ports only; inbound TCP ports
are not authorized yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2

from trellis.api.security import AuthorizationAction, AuthorizationPolicy, is_root_namespace
from trellis.xds.mesh.authz_rules import match_never, policy_name, rule_policy
from trellis.xds.mesh.build import pack
from trellis.xds.protos import http_connection_manager_pb2

RBAC_FILTER = "envoy.filters.http.rbac"
_ORDER = (
    (AuthorizationAction.AUDIT, rbac_pb2.RBAC.LOG),
    (AuthorizationAction.DENY, rbac_pb2.RBAC.DENY),
    (AuthorizationAction.ALLOW, rbac_pb2.RBAC.ALLOW),
)


def applies(policy: AuthorizationPolicy, namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether `policy` applies to the workload in `namespace` with `labels`."""
    policy_namespace = policy.metadata.namespace
    if policy_namespace != namespace and not is_root_namespace(policy_namespace):
        return False
    selector = policy.spec.selector
    return selector is None or selector.selects(labels)


def selected_policies(
    policies: Iterable[AuthorizationPolicy], namespace: str, labels: Mapping[str, str]
) -> list[AuthorizationPolicy]:
    """The policies that apply to the workload, sorted by namespace and name."""
    found = [policy for policy in policies if applies(policy, namespace, labels)]
    return sorted(found, key=lambda policy: policy.key)


def rbac_config(
    policies: Sequence[AuthorizationPolicy], action: rbac_pb2.RBAC.Action.ValueType
) -> http_rbac_pb2.RBAC:
    """One RBAC filter config holding every rule of `policies` (all of one action)."""
    rules = rbac_pb2.RBAC(action=action)
    for policy in policies:
        namespace, name = policy.metadata.namespace, policy.metadata.name
        for index, rule in enumerate(policy.spec.rules):
            rules.policies[policy_name(namespace, name, index)].CopyFrom(rule_policy(rule))
        if not policy.spec.rules:
            rules.policies[policy_name(namespace, name, 0)].CopyFrom(match_never())
    return http_rbac_pb2.RBAC(rules=rules)


def authz_filters(
    policies: Sequence[AuthorizationPolicy],
) -> list[http_connection_manager_pb2.HttpFilter]:
    """The RBAC filters for the policies that apply to one workload (AUDIT, DENY, ALLOW)."""
    filters = []
    for action, envoy_action in _ORDER:
        chosen = [policy for policy in policies if policy.spec.action is action]
        if chosen:
            config = rbac_config(chosen, envoy_action)
            filters.append(
                http_connection_manager_pb2.HttpFilter(name=RBAC_FILTER, typed_config=pack(config))
            )
    return filters


def workload_authz_filters(
    policies: Iterable[AuthorizationPolicy], namespace: str, labels: Mapping[str, str]
) -> list[http_connection_manager_pb2.HttpFilter]:
    """The RBAC filters of the workload in `namespace` with `labels`; [] when none apply."""
    return authz_filters(selected_policies(policies, namespace, labels))
