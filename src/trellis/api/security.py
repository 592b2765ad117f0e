"""The `security.istio.io` kinds Trellis implements, in one place.

Import the security models from here (conventions as in `trellis.api.networking`).
"""

from __future__ import annotations

from trellis.api.authorization_policy import (
    SUPPORTED_WHEN_KEYS,
    AuthorizationAction,
    AuthorizationPolicy,
    AuthorizationPolicySpec,
    Condition,
    Operation,
    Rule,
    RuleFrom,
    RuleTo,
    Source,
    header_of_key,
)
from trellis.api.meta import Resource
from trellis.api.peer_authentication import (
    MtlsMode,
    MutualTLS,
    PeerAuthentication,
    PeerAuthenticationSpec,
)
from trellis.api.policy_selector import (
    ROOT_NAMESPACES,
    SECURITY_VERSIONS,
    PolicySelector,
    is_root_namespace,
    selector_is_empty,
)

SecurityResource = PeerAuthentication | AuthorizationPolicy
"""Any resource of the kinds this module defines."""

SECURITY_KINDS: tuple[type[Resource], ...] = (PeerAuthentication, AuthorizationPolicy)

__all__ = [
    "ROOT_NAMESPACES",
    "SECURITY_KINDS",
    "SECURITY_VERSIONS",
    "SUPPORTED_WHEN_KEYS",
    "AuthorizationAction",
    "AuthorizationPolicy",
    "AuthorizationPolicySpec",
    "Condition",
    "MtlsMode",
    "MutualTLS",
    "Operation",
    "PeerAuthentication",
    "PeerAuthenticationSpec",
    "PolicySelector",
    "Rule",
    "RuleFrom",
    "RuleTo",
    "SecurityResource",
    "Source",
    "header_of_key",
    "is_root_namespace",
    "selector_is_empty",
]
