"""AuthorizationPolicies -> the RBAC filters of a workload's inbound listeners.

A policy applies to a workload when it is in the workload's namespace or in
the root namespace (`trellis-system`, alias `istio-system`; there a selector
picks workloads in every namespace), and its `selector.matchLabels` (if any)
are among the workload's labels. The applying policies become up to three
RBAC filters, in Istio's order: AUDIT (action LOG), DENY, ALLOW; each rule
one RBAC policy (`authz_rules`). A policy without rules becomes a policy
that never matches, so an ALLOW policy without rules (and no other ALLOW
policy) denies everything, as in Istio. A workload no policy applies to gets
no RBAC filter at all.

Inbound HTTP ports get `envoy.filters.http.rbac` filters before the router;
inbound TCP ports get `envoy.filters.network.rbac` filters (stat prefix
`tcp.`, as Istio) before the TCP proxy, built with Istio's TCP semantics:
HTTP-only fields are left out of DENY and AUDIT rules (which then deny or
audit more), and ALLOW rules that use them are dropped (allow less). An
ALLOW filter whose rules were all dropped stays, with no policies, and
denies every connection, as Istio's does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2

from trellis.api.security import AuthorizationAction, AuthorizationPolicy, is_root_namespace
from trellis.xds.mesh.authz_rules import match_never, policy_name, rule_policy, uses_http_only
from trellis.xds.mesh.build import pack
from trellis.xds.protos import http_connection_manager_pb2, network_rbac_pb2

RBAC_FILTER = "envoy.filters.http.rbac"
NETWORK_RBAC_FILTER = "envoy.filters.network.rbac"
TCP_STAT_PREFIX = "tcp."  # Istio's stat prefix for the network RBAC filters
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


@dataclass(frozen=True, slots=True)
class InboundAuthz:
    """The RBAC filters of one workload's inbound listeners: `http` before the
    router of HTTP ports, `tcp` before the TCP proxy of TCP ports."""

    http: tuple[http_connection_manager_pb2.HttpFilter, ...] = ()
    tcp: tuple[listener_components_pb2.Filter, ...] = ()


NO_AUTHZ = InboundAuthz()
"""No policy applies: no RBAC filter anywhere."""


def rbac_rules(
    policies: Sequence[AuthorizationPolicy],
    action: rbac_pb2.RBAC.Action.ValueType,
    *,
    tcp: bool = False,
) -> rbac_pb2.RBAC:
    """The rules of one RBAC filter holding every rule of `policies` (all of one action);
    `tcp`: for the network filter (Istio's TCP semantics, see the module docstring)."""
    rules = rbac_pb2.RBAC(action=action)
    drop_http = tcp and action == rbac_pb2.RBAC.ALLOW
    for policy in policies:
        namespace, name = policy.metadata.namespace, policy.metadata.name
        for index, rule in enumerate(policy.spec.rules):
            if drop_http and uses_http_only(rule):
                continue
            built = rule_policy(rule, tcp=tcp)
            rules.policies[policy_name(namespace, name, index)].CopyFrom(built)
        if not policy.spec.rules:
            rules.policies[policy_name(namespace, name, 0)].CopyFrom(match_never())
    return rules


def rbac_config(
    policies: Sequence[AuthorizationPolicy], action: rbac_pb2.RBAC.Action.ValueType
) -> http_rbac_pb2.RBAC:
    """One RBAC HTTP filter config holding every rule of `policies` (all of one action)."""
    return http_rbac_pb2.RBAC(rules=rbac_rules(policies, action))


def tcp_rbac_config(
    policies: Sequence[AuthorizationPolicy], action: rbac_pb2.RBAC.Action.ValueType
) -> network_rbac_pb2.RBAC:
    """One RBAC network filter config holding every rule of `policies` (all of one action)."""
    rules = rbac_rules(policies, action, tcp=True)
    return network_rbac_pb2.RBAC(rules=rules, stat_prefix=TCP_STAT_PREFIX)


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


def tcp_authz_filters(
    policies: Sequence[AuthorizationPolicy],
) -> list[listener_components_pb2.Filter]:
    """The network RBAC filters for the policies that apply to one workload."""
    filters = []
    for action, envoy_action in _ORDER:
        chosen = [policy for policy in policies if policy.spec.action is action]
        if chosen:
            config = tcp_rbac_config(chosen, envoy_action)
            filters.append(
                listener_components_pb2.Filter(name=NETWORK_RBAC_FILTER, typed_config=pack(config))
            )
    return filters


def inbound_authz(policies: Sequence[AuthorizationPolicy]) -> InboundAuthz:
    """Both kinds of RBAC filters for the policies that apply to one workload."""
    if not policies:
        return NO_AUTHZ
    return InboundAuthz(tuple(authz_filters(policies)), tuple(tcp_authz_filters(policies)))


def workload_authz_filters(
    policies: Iterable[AuthorizationPolicy], namespace: str, labels: Mapping[str, str]
) -> list[http_connection_manager_pb2.HttpFilter]:
    """The RBAC filters of the workload in `namespace` with `labels`; [] when none apply."""
    return authz_filters(selected_policies(policies, namespace, labels))
