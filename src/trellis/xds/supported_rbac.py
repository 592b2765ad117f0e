"""The Envoy RBAC fields Trellis implements (merged into `trellis.xds.supported`).

The HTTP RBAC filter and the network RBAC filter (before a TCP proxy, with
its `stat_prefix`) with enforcing `rules`, and the permission and principal
kinds Istio emits for AuthorizationPolicy: and/or/not, any, headers, URL
path, destination IP and port, authenticated principal, direct and remote
client IP (headers and URL paths only in the HTTP filter). Shadow rules,
matchers, enforcement types, delayed denial, metadata, SNI, CEL conditions
and custom matchers are rejected by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

RBAC_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC_TYPE = "envoy.extensions.filters.network.rbac.v3.RBAC"
_RBAC = "envoy.config.rbac.v3."

RBAC_SUPPORTED_FIELDS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        RBAC_TYPE: frozenset({"rules"}),
        NETWORK_RBAC_TYPE: frozenset({"rules", "stat_prefix"}),
        _RBAC + "RBAC": frozenset({"action", "policies"}),
        _RBAC + "Policy": frozenset({"permissions", "principals"}),
        _RBAC + "Permission": frozenset(
            {
                "and_rules",
                "or_rules",
                "any",
                "header",
                "url_path",
                "destination_ip",
                "destination_port",
                "destination_port_range",
                "not_rule",
            }
        ),
        _RBAC + "Permission.Set": frozenset({"rules"}),
        _RBAC + "Principal": frozenset(
            {
                "and_ids",
                "or_ids",
                "any",
                "authenticated",
                "direct_remote_ip",
                "remote_ip",
                "header",
                "url_path",
                "not_id",
            }
        ),
        _RBAC + "Principal.Set": frozenset({"ids"}),
        _RBAC + "Principal.Authenticated": frozenset({"principal_name"}),
        "envoy.type.matcher.v3.PathMatcher": frozenset({"path"}),
        "envoy.config.core.v3.CidrRange": frozenset({"address_prefix", "prefix_len"}),
        "envoy.type.v3.Int32Range": frozenset({"start", "end"}),
    }
)
