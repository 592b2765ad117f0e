"""Authorization decisions: Envoy's RBAC filters, evaluated as Istio layers them.

An inbound connection manager carries up to three RBAC HTTP filters, and an
inbound TCP proxy up to three RBAC network filters before it, in this order
(Istio's): AUDIT policies (Envoy action LOG: never blocks, marks the request
or connection audited), DENY policies, ALLOW policies. `AuthzConfig` holds them as
`AuthzLayer`s, in filter order, and `decide` walks them:

- a LOG layer notes its first matching policy and goes on;
- a DENY layer whose policy matches denies, naming the policy;
- an ALLOW layer where no policy matches denies ("no ALLOW policy matched");
  an ALLOW layer without policies therefore denies everything;
- a request that passes every layer is allowed.

Policies of a layer are tried in name order, as Envoy does (its policy map
is ordered), so the decision names the first matching policy by name; Istio
names them `ns[NS]-policy[NAME]-rule[IDX]`. Decisions are frozen and
preallocated per policy; only an audited request allocates one (the audit
mark added to the decision).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from trellis.core.authz_match import AuthzRequest, Matcher

RBAC_FILTER_NAME = "envoy.filters.http.rbac"
NETWORK_RBAC_FILTER_NAME = "envoy.filters.network.rbac"
DENIED_BODY = b"RBAC: access denied"
DENIED_STATUS = 403
NO_ALLOW_MATCHED = "no ALLOW policy matched"


class AuthzAction(enum.Enum):
    """Envoy `config.rbac.v3.RBAC.Action`."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    LOG = "LOG"


@dataclass(frozen=True, slots=True)
class AuthzDecision:
    """The outcome of `AuthzConfig.decide`, for the response, metrics and the access log.

    `policy` is the RBAC policy that decided (`ns[shop]-policy[deny-admin]-rule[0]`),
    "" when none did (allowed without ALLOW policies, or no ALLOW policy
    matched). `reason` says it in words; `details` is Envoy's response code
    details for a denial (`rbac_access_denied_matched_policy[...]`).
    `audit_policy` is the AUDIT policy that matched, "" if none.
    """

    allowed: bool
    policy: str = ""
    reason: str = ""
    details: str = ""
    audit_policy: str = ""

    @property
    def audited(self) -> bool:
        return self.audit_policy != ""


ALLOWED = AuthzDecision(True, reason="no ALLOW or DENY policy applies")
"""The decision without any policy that could block."""
DENIED_NO_MATCH = AuthzDecision(
    False, reason=NO_ALLOW_MATCHED, details="rbac_access_denied_matched_policy[none]"
)


@dataclass(frozen=True, slots=True)
class AuthzPolicy:
    """One named Envoy RBAC policy: some permission and some principal must match."""

    name: str
    permissions: Matcher
    principals: Matcher
    allow: AuthzDecision = field(init=False, compare=False, repr=False)
    deny: AuthzDecision = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", AuthzDecision(True, self.name, f"allowed by {self.name}"))
        object.__setattr__(
            self,
            "deny",
            AuthzDecision(
                False,
                self.name,
                f"denied by {self.name}",
                f"rbac_access_denied_matched_policy[{self.name}]",
            ),
        )

    def matches(self, request: AuthzRequest) -> bool:
        return self.permissions.matches(request) and self.principals.matches(request)


@dataclass(frozen=True, slots=True)
class AuthzLayer:
    """One RBAC filter: an action and its policies, in name order.

    `stat_prefix` is a network RBAC filter's (its counters are
    `<stat_prefix>rbac.allowed` / `.denied`); "" for the HTTP filter.
    """

    action: AuthzAction
    policies: tuple[AuthzPolicy, ...]
    filter_name: str = RBAC_FILTER_NAME
    stat_prefix: str = ""

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.policies, key=lambda policy: policy.name))
        object.__setattr__(self, "policies", ordered)

    def first_match(self, request: AuthzRequest) -> AuthzPolicy | None:
        """The first policy (by name) that matches, or None."""
        for policy in self.policies:
            if policy.matches(request):
                return policy
        return None


@dataclass(frozen=True, slots=True)
class AuthzConfig:
    """The RBAC filters of one connection manager or TCP proxy, in filter order."""

    layers: tuple[AuthzLayer, ...]

    @property
    def policy_names(self) -> tuple[str, ...]:
        """Every policy name, layer by layer (for dumps and debugging)."""
        return tuple(policy.name for layer in self.layers for policy in layer.policies)

    def decide(self, request: AuthzRequest) -> AuthzDecision:
        """Allow or deny `request`; the decision names the policy that decided."""
        decision = ALLOWED
        audit = ""
        for layer in self.layers:
            matched = layer.first_match(request)
            action = layer.action
            if action is AuthzAction.LOG:
                if matched is not None and not audit:
                    audit = matched.name
            elif action is AuthzAction.DENY:
                if matched is not None:
                    decision = matched.deny
                    break
            elif matched is None:
                decision = DENIED_NO_MATCH
                break
            else:
                decision = matched.allow
        if audit:
            return dataclasses.replace(decision, audit_policy=audit)
        return decision
