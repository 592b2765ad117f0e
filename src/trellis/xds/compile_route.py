"""Route configurations: virtual hosts, domains, routes and their matches."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from trellis.core.config import (
    HeaderMatcher,
    PathMatchKind,
    Route,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
    VirtualHost,
)
from trellis.xds.compile_action import cluster_action, direct_response, redirect_action
from trellis.xds.convert import (
    check_ads_source,
    header_mutation,
    header_name,
    regex_matcher,
    string_matcher,
    wrapped_bool,
)
from trellis.xds.where import Where

_LEGACY_HEADER_MATCH = {
    "exact_match": StringMatchKind.EXACT,
    "prefix_match": StringMatchKind.PREFIX,
    "suffix_match": StringMatchKind.SUFFIX,
    "contains_match": StringMatchKind.CONTAINS,
}


def domain_problem(domain: str) -> str | None:
    """Why a virtual host domain is invalid, or None if it is valid.

    Allowed: a plain host, `*`, or one `*` as the first or the last character.
    """
    if not domain:
        return "domain must not be empty"
    stars = domain.count("*")
    if stars == 0 or domain == "*":
        return None
    if stars > 1:
        return f"domain {domain!r} may contain only one '*'"
    if domain.startswith("*") or domain.endswith("*"):
        return None
    return f"domain {domain!r}: '*' must be the first or last character"


def route_config(
    config: route_pb2.RouteConfiguration,
    clusters: frozenset[str] | None,
    where: Where,
    *,
    vhds: bool = False,
) -> RouteConfig:
    """Convert a `RouteConfiguration`; domains are lower-cased and must be unique.

    `vhds`: whether it may take more virtual hosts over VHDS (RDS over delta ADS
    only); those are compiled with `virtual_host` and added by the caller.
    """
    if config.HasField("vhds"):
        _check_vhds(config.vhds, vhds, where.at("vhds"))
    seen_domains: dict[str, Where] = {}
    virtual_hosts = tuple(
        _virtual_host(host, clusters, where.at("virtual_hosts").item(i), seen_domains)
        for i, host in enumerate(config.virtual_hosts)
    )
    return RouteConfig(
        name=config.name,
        virtual_hosts=virtual_hosts,
        request_headers=header_mutation(
            config.request_headers_to_add, config.request_headers_to_remove, where, "request"
        ),
        response_headers=header_mutation(
            config.response_headers_to_add, config.response_headers_to_remove, where, "response"
        ),
    )


def _check_vhds(vhds: route_pb2.Vhds, allowed: bool, where: Where) -> None:
    if not allowed:
        raise where.error("VHDS is only for route configurations taken over delta ADS")
    if not vhds.HasField("config_source"):
        raise where.at("config_source").error("config_source is required")
    check_ads_source(vhds.config_source, where.at("config_source"))


def virtual_host(host: rc.VirtualHost, where: Where) -> VirtualHost:
    """Convert one virtual host that came on its own (VHDS); its domains must be unique
    within it here, and across its route configuration in `claim_domain`."""
    return _virtual_host(host, None, where, {})


def claim_domain(domain: str, here: Where, seen: dict[str, Where]) -> str:
    """`domain` lower-cased and recorded in `seen` as used at `here`; a ConfigError
    naming both places when a virtual host of the same route configuration has it."""
    lowered = domain.lower()
    first = seen.get(lowered)
    if first is not None:
        at = first.path if first.source == here.source else f"{first.source}: {first.path}"
        raise here.error(f"domain {domain!r} is already used at {at}")
    seen[lowered] = here
    return lowered


def _virtual_host(
    host: rc.VirtualHost,
    clusters: frozenset[str] | None,
    where: Where,
    seen_domains: dict[str, Where],
) -> VirtualHost:
    if not host.name:
        raise where.at("name").error("name is required")
    if not host.domains:
        raise where.at("domains").error("at least one domain is required")
    domains = []
    for i, domain in enumerate(host.domains):
        here = where.at("domains").item(i)
        problem = domain_problem(domain)
        if problem is not None:
            raise here.error(problem)
        domains.append(claim_domain(domain, here, seen_domains))
    routes = tuple(
        _route(route, clusters, where.at("routes").item(i)) for i, route in enumerate(host.routes)
    )
    return VirtualHost(
        name=host.name,
        domains=tuple(domains),
        routes=routes,
        request_headers=header_mutation(
            host.request_headers_to_add, host.request_headers_to_remove, where, "request"
        ),
        response_headers=header_mutation(
            host.response_headers_to_add, host.response_headers_to_remove, where, "response"
        ),
    )


def _route(route: rc.Route, clusters: frozenset[str] | None, where: Where) -> Route:
    if not route.HasField("match"):
        raise where.at("match").error("match is required")
    match = route_match(route.match, where.at("match"))
    kind = route.WhichOneof("action")
    action: RouteAction
    if kind == "route":
        action = cluster_action(route.route, clusters, where.at("route"))
    elif kind == "redirect":
        action = redirect_action(route.redirect, where.at("redirect"))
    elif kind == "direct_response":
        action = direct_response(route.direct_response, where.at("direct_response"))
    else:
        raise where.error("one of route, redirect or direct_response is required")
    return Route(
        name=route.name,
        match=match,
        action=action,
        request_headers=header_mutation(
            route.request_headers_to_add, route.request_headers_to_remove, where, "request"
        ),
        response_headers=header_mutation(
            route.response_headers_to_add, route.response_headers_to_remove, where, "response"
        ),
    )


def route_match(match: rc.RouteMatch, where: Where) -> RouteMatch:
    """Convert a `RouteMatch` (prefix, path or safe_regex, plus header matchers).

    As in Envoy, `case_sensitive` applies to prefix and path, not to safe_regex.
    """
    headers = tuple(
        header_matcher(h, where.at("headers").item(i)) for i, h in enumerate(match.headers)
    )
    case_sensitive = wrapped_bool(match, "case_sensitive", True)
    kind = match.WhichOneof("path_specifier")
    if kind == "safe_regex":
        regex = regex_matcher(match.safe_regex, where.at("safe_regex"))
        return RouteMatch(
            PathMatchKind.REGEX, match.safe_regex.regex, regex, case_sensitive, headers
        )
    if kind == "prefix":
        return RouteMatch(PathMatchKind.PREFIX, match.prefix, None, case_sensitive, headers)
    if kind == "path":
        return RouteMatch(PathMatchKind.PATH, match.path, None, case_sensitive, headers)
    raise where.error("one of prefix, path or safe_regex is required")


def header_matcher(matcher: rc.HeaderMatcher, where: Where) -> HeaderMatcher:
    """Convert a `HeaderMatcher`, including the deprecated `*_match` fields."""
    if not matcher.name:
        raise where.at("name").error("name is required")
    name = header_name(matcher.name, where.at("name"))
    kind = matcher.WhichOneof("header_match_specifier")
    string_match: StringMatcher | None = None
    present: bool | None = None
    if kind == "string_match":
        string_match = string_matcher(matcher.string_match, where.at("string_match"))
    elif kind == "present_match":
        present = matcher.present_match
    elif kind == "safe_regex_match":
        regex = regex_matcher(matcher.safe_regex_match, where.at("safe_regex_match"))
        pattern = matcher.safe_regex_match.regex
        string_match = StringMatcher(StringMatchKind.REGEX, pattern, regex=regex)
    elif kind in _LEGACY_HEADER_MATCH:
        value = str(getattr(matcher, kind))
        if kind != "exact_match" and not value:
            raise where.at(kind).error("must not be empty")
        string_match = StringMatcher(_LEGACY_HEADER_MATCH[kind], value)
    return HeaderMatcher(
        name=name,
        string_match=string_match,
        present=present,
        invert=matcher.invert_match,
        treat_missing_as_empty=matcher.treat_missing_header_as_empty,
    )
