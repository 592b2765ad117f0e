"""Filter chains with RBAC: Envoy's RBAC filter configs -> `trellis.core.authz`.

An HTTP connection manager's filters are any number of
`envoy.filters.http.rbac` filters (typed `extensions.filters.http.rbac.v3.RBAC`)
followed by the router; a TCP proxy may follow any number of
`envoy.filters.network.rbac` filters (`extensions.filters.network.rbac.v3.RBAC`,
which see the connection only: header and URL path matchers are refused
there). Each RBAC filter with `rules` becomes one
`AuthzLayer` (a filter without `rules` enforces nothing, as in Envoy, and
is left out). Permissions and principals compile to the matchers of
`trellis.core.authz_match`, regexes compiled here once. Supported fields are
listed in `trellis.xds.supported_rbac`; anything else was rejected by the
allowlist walk, and what remains is checked here with Envoy's rules (sets
not empty, `any: true`, ports and prefix lengths in range).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.type.matcher.v3 import string_pb2

from trellis.core.authz import (
    NETWORK_RBAC_FILTER_NAME,
    RBAC_FILTER_NAME,
    AuthzAction,
    AuthzConfig,
    AuthzLayer,
    AuthzPolicy,
)
from trellis.core.authz_match import (
    MATCH_ANY,
    AddressSource,
    HeaderSource,
    MatchAddress,
    Matcher,
    MatchHeader,
    MatchPath,
    MatchPort,
    MatchPrincipal,
    TextKind,
    TextMatch,
    all_of,
    any_of,
    negate,
    network,
    text_regex,
)
from trellis.core.config import StringMatchKind
from trellis.xds.compile_route import header_matcher
from trellis.xds.convert import string_matcher
from trellis.xds.supported import ROUTER_TYPE, unpack_any
from trellis.xds.supported_rbac import NETWORK_RBAC_TYPE, RBAC_TYPE
from trellis.xds.where import Where

if TYPE_CHECKING:  # loaded with the first RBAC filter a config names (trellis.xds.type_modules)
    from envoy.config.rbac.v3 import rbac_pb2
    from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

ROUTER_NAME = "envoy.filters.http.router"
_HTTP_FILTERS = frozenset({ROUTER_TYPE, RBAC_TYPE})
_NETWORK_RBAC = frozenset({NETWORK_RBAC_TYPE})
_HTTP_ONLY = "is HTTP-only: the network RBAC filter sees the connection, not requests"
_PSEUDO = MappingProxyType(
    {
        ":method": HeaderSource.METHOD,
        ":authority": HeaderSource.AUTHORITY,
        "host": HeaderSource.AUTHORITY,
    }
)
_TEXT_KINDS = MappingProxyType(
    {
        StringMatchKind.EXACT: TextKind.EXACT,
        StringMatchKind.PREFIX: TextKind.PREFIX,
        StringMatchKind.SUFFIX: TextKind.SUFFIX,
        StringMatchKind.CONTAINS: TextKind.CONTAINS,
    }
)


def http_filter_chain(
    filters: Sequence[http_connection_manager_pb2.HttpFilter], where: Where
) -> AuthzConfig | None:
    """Check the HTTP filters (RBAC filters, then the router last); the RBAC layers or None."""
    if not filters:
        raise where.error(f"at least one HTTP filter is required; the last must be {ROUTER_NAME}")
    layers: list[AuthzLayer] = []
    last = len(filters) - 1
    for i, http_filter in enumerate(filters):
        here = where.item(i)
        typed = http_filter.HasField("typed_config")
        type_name = http_filter.typed_config.TypeName() if typed else ""
        if type_name == ROUTER_TYPE or (not typed and http_filter.name == ROUTER_NAME):
            if i != last:
                raise here.error(f"{ROUTER_NAME} must be the last HTTP filter")
            continue
        if type_name == RBAC_TYPE:
            config = cast(
                "http_rbac_pb2.RBAC",
                unpack_any(http_filter.typed_config, _HTTP_FILTERS, here.at("typed_config")),
            )
            layer = rbac_layer(config, here.at("typed_config"), http_filter.name)
            if layer is not None:
                layers.append(layer)
        elif not typed and http_filter.name == RBAC_FILTER_NAME:
            raise here.at("typed_config").error(f"typed_config is required for {RBAC_FILTER_NAME}")
        else:
            raise here.error(
                f"HTTP filter {http_filter.name!r} is not supported "
                f"(only {RBAC_FILTER_NAME} and {ROUTER_NAME})"
            )
        if i == last:
            raise here.error(f"the last HTTP filter must be {ROUTER_NAME}")
    return AuthzConfig(tuple(layers)) if layers else None


def network_filter_chain(
    filters: Sequence[listener_components_pb2.Filter], where: Where
) -> AuthzConfig | None:
    """The network RBAC filters before a TCP proxy (`where`: the chain's `filters`)."""
    layers: list[AuthzLayer] = []
    for i, network_filter in enumerate(filters):
        here = where.item(i).at("typed_config")
        if not network_filter.HasField("typed_config"):
            raise here.error(f"typed_config is required for {NETWORK_RBAC_FILTER_NAME}")
        config = cast(
            "network_rbac_pb2.RBAC", unpack_any(network_filter.typed_config, _NETWORK_RBAC, here)
        )
        if not config.stat_prefix:
            raise here.at("stat_prefix").error("stat_prefix is required")
        if config.HasField("rules"):
            layers.append(
                _layer(
                    config.rules,
                    here.at("rules"),
                    network_filter.name or NETWORK_RBAC_FILTER_NAME,
                    config.stat_prefix,
                )
            )
    return AuthzConfig(tuple(layers)) if layers else None


def rbac_layer(
    config: http_rbac_pb2.RBAC, where: Where, filter_name: str = RBAC_FILTER_NAME
) -> AuthzLayer | None:
    """One RBAC HTTP filter config as a layer; None when it has no `rules` (enforces nothing)."""
    if not config.HasField("rules"):
        return None
    return _layer(config.rules, where.at("rules"), filter_name or RBAC_FILTER_NAME)


def _layer(
    rules: rbac_pb2.RBAC, where: Where, filter_name: str, stat_prefix: str | None = None
) -> AuthzLayer:
    """`stat_prefix`: a network filter's (None: an HTTP filter)."""
    network = stat_prefix is not None
    from envoy.config.rbac.v3 import rbac_pb2  # noqa: PLC0415 - loaded with the filter's type

    action = AuthzAction(rbac_pb2.RBAC.Action.Name(rules.action))
    policies = []
    for name in sorted(rules.policies):
        here = where.at("policies").key(name)
        policies.append(_policy(name, rules.policies[name], here, network))
    return AuthzLayer(action, tuple(policies), filter_name, stat_prefix or "")


def _policy(name: str, policy: rbac_pb2.Policy, where: Where, network: bool) -> AuthzPolicy:
    if not policy.permissions:
        raise where.at("permissions").error("at least one permission is required")
    if not policy.principals:
        raise where.at("principals").error("at least one principal is required")
    permissions = any_of(
        permission(item, where.at("permissions").item(i), network=network)
        for i, item in enumerate(policy.permissions)
    )
    principals = any_of(
        principal(item, where.at("principals").item(i), network=network)
        for i, item in enumerate(policy.principals)
    )
    return AuthzPolicy(name, permissions, principals)


def _members(items: Sequence[object], where: Where) -> None:
    if not items:
        raise where.error("at least one entry is required")


def permission(config: rbac_pb2.Permission, where: Where, *, network: bool = False) -> Matcher:
    """Compile an RBAC `Permission` (what the request asks for; `network`: of a network filter)."""
    kind = config.WhichOneof("rule")
    here = where.at(kind) if kind else where
    if network and kind in ("header", "url_path"):
        raise here.error(f"{kind} {_HTTP_ONLY}")
    if kind in ("and_rules", "or_rules"):
        rules = getattr(config, kind).rules
        _members(rules, here.at("rules"))
        items = [
            permission(item, here.at("rules").item(i), network=network)
            for i, item in enumerate(rules)
        ]
        return all_of(items) if kind == "and_rules" else any_of(items)
    if kind == "not_rule":
        return negate(permission(config.not_rule, here, network=network))
    if kind == "any":
        return _any(config.any, here)
    if kind == "header":
        return _header(config.header, here)
    if kind == "url_path":
        return MatchPath(_text(config.url_path.path, here.at("path")))
    if kind == "destination_ip":
        return MatchAddress(AddressSource.DESTINATION, (_cidr(config.destination_ip, here),))
    if kind == "destination_port":
        if config.destination_port > 65535:
            raise here.error(f"port must be 0-65535, got {config.destination_port}")
        return MatchPort(frozenset({config.destination_port}))
    if kind == "destination_port_range":
        span = config.destination_port_range
        if not 0 <= span.start < span.end <= 65536:
            raise here.error(
                f"range must satisfy 0 <= start < end <= 65536, got {span.start}-{span.end}"
            )
        return MatchPort(ranges=((span.start, span.end),))
    raise where.error("a permission rule is required (and_rules, or_rules, any, header, ...)")


def principal(config: rbac_pb2.Principal, where: Where, *, network: bool = False) -> Matcher:
    """Compile an RBAC `Principal` (who sends the request; `network`: of a network filter)."""
    kind = config.WhichOneof("identifier")
    here = where.at(kind) if kind else where
    if network and kind in ("header", "url_path"):
        raise here.error(f"{kind} {_HTTP_ONLY}")
    if kind in ("and_ids", "or_ids"):
        ids = getattr(config, kind).ids
        _members(ids, here.at("ids"))
        items = [
            principal(item, here.at("ids").item(i), network=network) for i, item in enumerate(ids)
        ]
        return all_of(items) if kind == "and_ids" else any_of(items)
    if kind == "not_id":
        return negate(principal(config.not_id, here, network=network))
    if kind == "any":
        return _any(config.any, here)
    if kind == "authenticated":
        auth = config.authenticated
        if not auth.HasField("principal_name"):
            return MatchPrincipal()
        return MatchPrincipal(_text(auth.principal_name, here.at("principal_name")))
    if kind in ("direct_remote_ip", "remote_ip"):
        source = AddressSource.DIRECT_REMOTE if kind == "direct_remote_ip" else AddressSource.REMOTE
        return MatchAddress(source, (_cidr(getattr(config, kind), here),))
    if kind == "header":
        return _header(config.header, here)
    if kind == "url_path":
        return MatchPath(_text(config.url_path.path, here.at("path")))
    raise where.error(
        "a principal identifier is required (and_ids, or_ids, any, authenticated, ...)"
    )


def _any(value: bool, where: Where) -> Matcher:
    if not value:
        raise where.error("any must be true")
    return MATCH_ANY


def _text(matcher: string_pb2.StringMatcher, where: Where) -> TextMatch:
    compiled = string_matcher(matcher, where)
    if compiled.kind is StringMatchKind.REGEX:
        assert compiled.regex is not None
        return text_regex(compiled.regex)
    return TextMatch(_TEXT_KINDS[compiled.kind], compiled.value, compiled.ignore_case)


def _header(config: rc.HeaderMatcher, where: Where) -> MatchHeader:
    compiled = header_matcher(config, where)
    name = compiled.name
    source = _PSEUDO.get(name, HeaderSource.HEADER)
    if name.startswith(":") and source is HeaderSource.HEADER:
        raise where.at("name").error(
            f"header {name!r} is not available to RBAC in Trellis "
            "(pseudo-headers: :method, :authority; match paths with url_path)"
        )
    text = None
    if compiled.string_match is not None:
        string = compiled.string_match
        if string.kind is StringMatchKind.REGEX:
            assert string.regex is not None
            text = text_regex(string.regex)
        else:
            text = TextMatch(_TEXT_KINDS[string.kind], string.value, string.ignore_case)
    return MatchHeader(
        name=name.encode("latin-1"),
        source=source,
        text=text,
        present=True if compiled.present is None else compiled.present,
        invert=compiled.invert,
        missing_as_empty=compiled.treat_missing_as_empty,
    )


def _cidr(config: address_pb2.CidrRange, where: Where) -> tuple[int, int, int]:
    prefix = config.address_prefix
    try:
        address = ipaddress.ip_address(prefix)
    except ValueError:
        raise where.at("address_prefix").error(f"{prefix!r} is not an IP address") from None
    # As Envoy: an unset prefix_len is 0 (every address), a too long one is the address.
    most = 32 if address.version == 4 else 128
    return network(prefix, min(config.prefix_len.value, most))
