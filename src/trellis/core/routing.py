"""Route selection with Envoy's semantics, precompiled once per `RouteConfig`.

Virtual hosts are chosen by authority: exact domain, then suffix wildcards
(`*.foo.com`, longest first), then prefix wildcards (`foo.*`, longest first),
then `*`. Case and port are ignored: an authority with a port first tries the
domains as written (`foo:9080` and `foo:8080` may name different virtual hosts),
then its bare host against port-stripped domains. The first matching route wins.

Paths, as in Envoy: `prefix` is compared with the whole request target, query
string included (Envoy matches it against `:path` as received); `path` (exact)
and `safe_regex` (full match) see the path without query string and fragment;
`case_sensitive=False` lower-cases both sides for `prefix` and `path` only
(Envoy ignores it for regexes).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from types import MappingProxyType

from trellis.core.config import (
    ClusterAction,
    HeaderMatcher,
    PathMatchKind,
    RedirectAction,
    Route,
    RouteConfig,
    StringMatcher,
    VirtualHost,
    WeightedCluster,
)
from trellis.core.headers import CompiledMutation

Headers = Sequence[tuple[bytes, bytes]]

# Where a header matcher takes its value from.
_FROM_HEADER = 0
_FROM_AUTHORITY = 1
_FROM_PATH = 2
_FROM_METHOD = 3
_FROM_SCHEME = 4

_PSEUDO_SOURCES = MappingProxyType(
    {":authority": _FROM_AUTHORITY, "host": _FROM_AUTHORITY, ":path": _FROM_PATH}
    | {":method": _FROM_METHOD, ":scheme": _FROM_SCHEME}
)


def strip_port(host: str) -> str:
    """`host` without a trailing `:port`; `[v6]:port` keeps its brackets."""
    if host.startswith("["):
        end = host.find("]")
        return host if end < 0 else host[: end + 1]
    colon = host.rfind(":")
    if colon < 0 or host.find(":") != colon:  # no port, or a bare IPv6 literal
        return host
    port = host[colon + 1 :]
    return host[:colon] if port == "" or port.isdigit() else host


def path_without_query(path: str) -> str:
    """The path before the first `?` or `#`."""
    end = path.find("?")
    hash_at = path.find("#", 0, end if end >= 0 else len(path))
    if hash_at >= 0:
        end = hash_at
    return path if end < 0 else path[:end]


def _header_value(headers: Headers, name: bytes) -> str | None:
    """All values of `name`, joined with "," in arrival order; None if absent."""
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            found = value if found is None else found + b"," + value
    return None if found is None else found.decode("latin-1")


class _HeaderCheck:
    """One compiled `HeaderMatcher`."""

    __slots__ = ("invert", "matcher", "missing_as_empty", "name", "present", "source")

    def __init__(self, config: HeaderMatcher) -> None:
        name = config.name.lower()
        self.name = name.encode("latin-1")
        self.source = _PSEUDO_SOURCES.get(name, _FROM_HEADER)
        self.matcher: StringMatcher | None = config.string_match
        self.present = config.present
        if self.matcher is None and self.present is None:
            self.present = True
        self.invert = config.invert
        self.missing_as_empty = config.treat_missing_as_empty

    def matches(
        self, headers: Headers, authority: str, path: str, method: str | None, scheme: str | None
    ) -> bool:
        source = self.source
        value: str | None
        if source == _FROM_HEADER:
            value = _header_value(headers, self.name)
        elif source == _FROM_AUTHORITY:
            value = authority
        elif source == _FROM_PATH:
            value = path
        elif source == _FROM_METHOD:
            value = method if method is not None else _header_value(headers, self.name)
        else:
            value = scheme if scheme is not None else _header_value(headers, self.name)
        present = self.present
        if present is not None:
            return ((value is not None) == present) != self.invert
        if value is None:
            if not self.missing_as_empty:
                return False
            value = ""
        assert self.matcher is not None
        return self.matcher.matches(value) != self.invert


class _CompiledRoute:
    __slots__ = ("headers", "ignore_case", "kind", "regex", "route", "value")

    def __init__(self, route: Route) -> None:
        match = route.match
        self.route = route
        self.kind = match.path_kind
        self.ignore_case = not match.case_sensitive and self.kind is not PathMatchKind.REGEX
        self.value = match.path.lower() if self.ignore_case else match.path
        regex = match.regex
        if self.kind is PathMatchKind.REGEX and regex is None:
            regex = re.compile(match.path)
        self.regex = regex
        self.headers = tuple(_HeaderCheck(h) for h in match.headers)


class RouteMutations:
    """Compiled header mutations for one route, in the order to apply them."""

    __slots__ = ("request", "response")

    def __init__(
        self, request: tuple[CompiledMutation, ...], response: tuple[CompiledMutation, ...]
    ) -> None:
        self.request = request
        self.response = response


class _CompiledVirtualHost:
    __slots__ = ("routes", "vhost")

    def __init__(self, vhost: VirtualHost) -> None:
        self.vhost = vhost
        self.routes = tuple(_CompiledRoute(r) for r in vhost.routes)


def _wildcard_tables(
    entries: dict[str, _CompiledVirtualHost],
) -> tuple[tuple[int, dict[str, _CompiledVirtualHost]], ...]:
    by_length: dict[int, dict[str, _CompiledVirtualHost]] = {}
    for key, vh in entries.items():
        by_length.setdefault(len(key), {})[key] = vh
    return tuple(sorted(by_length.items(), reverse=True))


class RouteTable:
    """A `RouteConfig` compiled for lookups on the request path."""

    __slots__ = (
        "_default",
        "_exact",
        "_mutations",
        "_pickers",
        "_prefix",
        "_suffix",
        "config",
        "matches_pseudo_headers",
    )

    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        # Callers pass `method`/`scheme` to `select_route` only when some route needs them.
        self.matches_pseudo_headers = any(
            matcher.name in (":method", ":scheme")
            for vhost in config.virtual_hosts
            for route in vhost.routes
            for matcher in route.match.headers
        )
        exact: dict[str, _CompiledVirtualHost] = {}
        stripped: dict[str, _CompiledVirtualHost] = {}
        suffix: dict[str, _CompiledVirtualHost] = {}
        prefix: dict[str, _CompiledVirtualHost] = {}
        default: _CompiledVirtualHost | None = None
        self._mutations: dict[int, RouteMutations] = {}
        self._pickers: dict[int, WeightedPicker] = {}
        for vhost in config.virtual_hosts:
            compiled = _CompiledVirtualHost(vhost)
            for written in vhost.domains:
                domain = written.lower()
                if domain == "*":
                    default = default or compiled
                elif domain.startswith("*"):
                    suffix.setdefault(strip_port(domain[1:]), compiled)
                elif domain.endswith("*"):
                    prefix.setdefault(domain[:-1], compiled)
                else:
                    exact.setdefault(domain, compiled)
                    stripped.setdefault(strip_port(domain), compiled)
            for route in vhost.routes:
                self._compile_route_extras(config, vhost, route)
        for host, compiled in stripped.items():
            exact.setdefault(host, compiled)
        self._exact = exact
        self._suffix = _wildcard_tables(suffix)
        self._prefix = _wildcard_tables(prefix)
        self._default = default

    def _compile_route_extras(self, config: RouteConfig, vhost: VirtualHost, route: Route) -> None:
        levels = (route, vhost, config)
        self._mutations[id(route)] = RouteMutations(
            tuple(
                CompiledMutation(x.request_headers) for x in levels if not x.request_headers.empty
            ),
            tuple(
                CompiledMutation(x.response_headers) for x in levels if not x.response_headers.empty
            ),
        )
        action = route.action
        if isinstance(action, ClusterAction):
            self._pickers[id(action)] = WeightedPicker(action)
            for cluster in action.clusters:
                self._mutations[id(cluster)] = RouteMutations(
                    tuple(CompiledMutation(m) for m in (cluster.request_headers,) if not m.empty),
                    tuple(CompiledMutation(m) for m in (cluster.response_headers,) if not m.empty),
                )

    def _find(self, authority: str) -> _CompiledVirtualHost | None:
        exact = self._exact
        if not exact and not self._suffix and not self._prefix:
            return self._default  # only `*`: no need to look at the authority
        host = authority.lower()
        found = exact.get(host)
        if found is not None:
            return found
        bare = strip_port(host)
        if bare is not host:
            found = exact.get(bare)
            if found is not None:
                return found
            host = bare
        size = len(host)
        for length, table in self._suffix:
            if length < size:  # a wildcard stands for at least one character
                found = table.get(host[size - length :])
                if found is not None:
                    return found
        for length, table in self._prefix:
            if length < size:
                found = table.get(host[:length])
                if found is not None:
                    return found
        return self._default

    def select_virtual_host(self, authority: str) -> VirtualHost | None:
        found = self._find(authority)
        return None if found is None else found.vhost

    def select_route(
        self,
        authority: str,
        path: str,
        headers: Headers,
        *,
        method: str | None = None,
        scheme: str | None = None,
    ) -> tuple[VirtualHost, Route] | None:
        """The virtual host and the first of its routes that matches, or None.

        Header matchers on `:authority`/`host` and `:path` use `authority` and
        `path`; `:method` and `:scheme` use `method` and `scheme` when given,
        otherwise the header list.
        """
        found = self._find(authority)
        if found is None:
            return None
        bare: str | None = None
        lowered: str | None = None
        for compiled in found.routes:
            kind = compiled.kind
            if kind is PathMatchKind.PREFIX:
                if compiled.ignore_case:
                    if lowered is None:
                        lowered = path.lower()
                    if not lowered.startswith(compiled.value):
                        continue
                elif not path.startswith(compiled.value):
                    continue
            else:
                if bare is None:
                    bare = path_without_query(path)
                if kind is PathMatchKind.PATH:
                    candidate = bare.lower() if compiled.ignore_case else bare
                    if candidate != compiled.value:
                        continue
                else:
                    assert compiled.regex is not None
                    if compiled.regex.fullmatch(bare) is None:
                        continue
            checks = compiled.headers
            if checks and not all(
                c.matches(headers, authority, path, method, scheme) for c in checks
            ):
                continue
            return found.vhost, compiled.route
        return None

    def mutations(self, item: Route | WeightedCluster) -> RouteMutations:
        """Precompiled header mutations of a route (route, virtual host, route config) or of a
        weighted cluster; apply a cluster's before its route's."""
        return self._mutations[id(item)]

    def picker(self, action: ClusterAction) -> WeightedPicker:
        """The precompiled weighted picker of a route's `ClusterAction`."""
        return self._pickers[id(action)]


class WeightedPicker:
    """Weighted cluster choice with cumulative weights computed once."""

    __slots__ = ("_cumulative", "clusters", "total")

    def __init__(self, action: ClusterAction) -> None:
        self.clusters = action.clusters
        self._cumulative = tuple(accumulate(c.weight for c in action.clusters))
        self.total = self._cumulative[-1] if self._cumulative else 0

    def pick(self, draw: int) -> WeightedCluster:
        """The cluster owning `draw`, an integer in [0, total)."""
        index = bisect_right(self._cumulative, draw)
        clusters = self.clusters
        return clusters[index] if index < len(clusters) else clusters[-1]


def pick_weighted_cluster(action: ClusterAction, draw: int) -> WeightedCluster:
    """The cluster owning `draw` in [0, total_weight): Envoy's running-sum walk."""
    clusters = action.clusters
    for cluster in clusters:
        draw -= cluster.weight
        if draw < 0:
            return cluster
    return clusters[-1]


def _matched_length(path: str, route: Route) -> int:
    if route.match.path_kind is PathMatchKind.PREFIX:
        return len(route.match.path)
    return len(path_without_query(path))


def rewrite_path(path: str, route: Route, action: ClusterAction) -> str:
    """Apply `prefix_rewrite`: the matched part (the prefix, or the whole path for
    exact and regex matches) is replaced; the rest, query included, is kept."""
    rewrite = action.prefix_rewrite
    if not rewrite:
        return path
    return rewrite + path[_matched_length(path, route) :]


def _redirect_host(authority: str, scheme: str, new_scheme: str, new_port: bool) -> str:
    """The request host for a redirect: drop its port when a port is given, or when the
    scheme changes and the port was the old scheme's default (Envoy's rule)."""
    if authority.startswith("["):
        end = authority.rfind("]:")
        colon = end + 1 if end >= 0 else -1
    else:
        colon = authority.rfind(":")
    if colon < 0:
        return authority
    remove = new_port
    old = scheme.lower()
    if not remove and new_scheme.lower() != old:
        port = authority[colon:]
        remove = (old == "https" and port == ":443") or (old == "http" and port == ":80")
    return authority[:colon] if remove else authority


def redirect_location(
    scheme: str, authority: str, path: str, route: Route, action: RedirectAction
) -> str:
    """The `Location` for a redirect route, built as Envoy builds it."""
    new_scheme = action.scheme or scheme
    port = f":{action.port}" if action.port else ""
    host = action.host or _redirect_host(authority, scheme, new_scheme, bool(port))
    if action.prefix_rewrite:
        path = action.prefix_rewrite + path[_matched_length(path, route) :]
    new_path = action.path or ""
    query_fixed = "?" in new_path  # its query wins and is never stripped
    if new_path:
        if not query_fixed:
            query_at = path.find("?")
            new_path += path[query_at:] if query_at >= 0 else ""
        path = new_path
    if not path.startswith("/"):
        path = "/" + path
    if action.strip_query and not query_fixed:
        query_at = path.find("?")
        if query_at >= 0:
            path = path[:query_at]
    return f"{new_scheme}://{host}{port}{path}"
