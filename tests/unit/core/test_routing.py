"""Route table: virtual host selection, route matching, weighted picks, rewrites, redirects."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.core.config import (
    AppendAction,
    ClusterAction,
    DirectResponseAction,
    HeaderMatcher,
    HeaderMutation,
    HeaderToAdd,
    PathMatchKind,
    RedirectAction,
    Route,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    StringMatchKind,
    VirtualHost,
    WeightedCluster,
)
from trellis.core.routing import (
    RouteTable,
    WeightedPicker,
    path_without_query,
    pick_weighted_cluster,
    redirect_location,
    rewrite_path,
    strip_port,
)

OK = DirectResponseAction(200)


def route(
    name: str,
    kind: PathMatchKind = PathMatchKind.PREFIX,
    path: str = "/",
    *,
    case_sensitive: bool = True,
    headers: tuple[HeaderMatcher, ...] = (),
    action: ClusterAction | RedirectAction | DirectResponseAction = OK,
) -> Route:
    regex = re.compile(path) if kind is PathMatchKind.REGEX else None
    match = RouteMatch(kind, path, regex, case_sensitive, headers)
    return Route(name, match, action)


def vhost(name: str, *domains: str, routes: tuple[Route, ...] | None = None) -> VirtualHost:
    return VirtualHost(name, domains, routes if routes is not None else (route(name),))


def table(*vhosts: VirtualHost) -> RouteTable:
    return RouteTable(RouteConfig("rc", vhosts))


def selected(t: RouteTable, authority: str) -> str | None:
    found = t.select_virtual_host(authority)
    return None if found is None else found.name


def exact(value: str) -> StringMatcher:
    return StringMatcher(StringMatchKind.EXACT, value)


def cluster_action(*weights: int, prefix_rewrite: str | None = None) -> ClusterAction:
    clusters = tuple(WeightedCluster(f"c{i}", w) for i, w in enumerate(weights))
    return ClusterAction(clusters, sum(weights), prefix_rewrite=prefix_rewrite)


# --- authority normalisation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("foo.com", "foo.com"),
        ("foo.com:8080", "foo.com"),
        ("foo.com:", "foo.com"),
        ("[::1]:443", "[::1]"),
        ("[::1]", "[::1]"),
        ("::1", "::1"),
        ("foo.com:abc", "foo.com:abc"),
    ],
)
def test_strip_port(host: str, expected: str) -> None:
    assert strip_port(host) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/a?b#c", "/a"), ("/a#c?b", "/a"), ("/a", "/a"), ("/?", "/"), ("/a#x", "/a")],
)
def test_path_without_query(path: str, expected: str) -> None:
    assert path_without_query(path) == expected


# --- virtual hosts ---------------------------------------------------------------------------


PRECEDENCE = table(
    vhost("default", "*"),
    vhost("prefix-short", "api.*"),
    vhost("prefix-long", "api.foo.*"),
    vhost("suffix-short", "*.com"),
    vhost("suffix-long", "*.foo.com"),
    vhost("suffix-dash", "*-bar.foo.com"),
    vhost("exact", "api.foo.com"),
)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("api.foo.com", "exact"),
        ("API.Foo.COM:8443", "exact"),
        ("www.foo.com", "suffix-long"),
        ("baz-bar.foo.com", "suffix-dash"),
        ("x.com", "suffix-short"),
        ("api.foo.org", "prefix-long"),
        ("api.bar.org", "prefix-short"),
        ("other.org", "default"),
        ("-bar.foo.com", "suffix-long"),  # "*-bar" needs at least one character before "-bar"
    ],
)
def test_domain_precedence(authority: str, expected: str) -> None:
    assert selected(PRECEDENCE, authority) == expected


def test_wildcards_never_match_the_empty_string() -> None:
    t = table(vhost("suffix", "*.foo.com"), vhost("prefix", "foo.*"))
    assert selected(t, ".foo.com") is None
    assert selected(t, "foo.") is None
    assert selected(t, "a.foo.com") == "suffix"
    assert selected(t, "foo.a") == "prefix"


def test_no_match_without_default() -> None:
    t = table(vhost("a", "a.com"))
    assert selected(t, "b.com") is None
    assert t.select_route("b.com", "/", []) is None


def test_domains_with_ports_are_matched_exactly_first() -> None:
    t = table(vhost("p9080", "svc:9080"), vhost("p8080", "svc:8080"))
    assert selected(t, "svc:9080") == "p9080"
    assert selected(t, "svc:8080") == "p8080"
    assert selected(t, "svc") == "p9080"  # the bare host: first domain that strips to it
    assert selected(t, "svc:1234") == "p9080"


def test_ipv6_authority() -> None:
    t = table(vhost("v6", "[::1]"))
    assert selected(t, "[::1]:15001") == "v6"


def test_first_virtual_host_wins_for_duplicate_domains() -> None:
    t = table(vhost("one", "a.com"), vhost("two", "a.com", "*"))
    assert selected(t, "a.com") == "one"
    assert selected(t, "z.com") == "two"


def _reference_select(domains: dict[str, str], host: str) -> str | None:
    host = host.lower()
    if host in domains:
        return domains[host]
    suffixes = [d for d in domains if d.startswith("*") and d != "*"]
    suffixes.sort(key=len, reverse=True)
    for d in suffixes:
        if len(host) > len(d) - 1 and host.endswith(d[1:]):
            return domains[d]
    prefixes = [d for d in domains if d.endswith("*") and d != "*"]
    prefixes.sort(key=len, reverse=True)
    for d in prefixes:
        if len(host) > len(d) - 1 and host.startswith(d[:-1]):
            return domains[d]
    return domains.get("*")


labels = st.sampled_from(["a", "b", "ab", "foo", "x-y"])
hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)
domain_patterns = st.one_of(
    hosts,
    hosts.map(lambda h: "*." + h),
    hosts.map(lambda h: "*-" + h),
    hosts.map(lambda h: h + ".*"),
    st.just("*"),
)


@given(st.lists(domain_patterns, min_size=1, max_size=8, unique=True), hosts)
def test_domain_selection_matches_reference(patterns: list[str], host: str) -> None:
    # Patterns of equal length never collide on one host here, so "longest wins" is total.
    domains = {p: f"vh{i}" for i, p in enumerate(patterns)}
    t = table(*(vhost(name, p) for p, name in domains.items()))
    assert selected(t, host) == _reference_select(domains, host)
    assert selected(t, host.upper() + ":80") == _reference_select(domains, host)


# --- routes ------------------------------------------------------------------------------


def one_host(*routes: Route) -> RouteTable:
    return table(vhost("vh", "*", routes=routes))


def matched(t: RouteTable, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> str:
    found = t.select_route("host", path, headers or [])
    return "-" if found is None else found[1].name


def test_prefix_sees_the_query_string() -> None:
    t = one_host(route("q", path="/search?q="))
    assert matched(t, "/search?q=x") == "q"
    assert matched(t, "/search") == "-"


def test_exact_path_ignores_query_and_fragment() -> None:
    t = one_host(route("p", PathMatchKind.PATH, "/login"))
    assert matched(t, "/login") == "p"
    assert matched(t, "/login?next=/") == "p"
    assert matched(t, "/login#top") == "p"
    assert matched(t, "/login/") == "-"
    assert matched(t, "/Login") == "-"


def test_regex_is_a_full_match_on_the_path_only() -> None:
    t = one_host(route("r", PathMatchKind.REGEX, r"/users/\d+"))
    assert matched(t, "/users/42") == "r"
    assert matched(t, "/users/42?x=1") == "r"
    assert matched(t, "/users/42/posts") == "-"
    assert matched(t, "/v1/users/42") == "-"


def test_case_insensitive_prefix_and_path() -> None:
    t = one_host(
        route("p", PathMatchKind.PATH, "/Exact", case_sensitive=False),
        route("pre", PathMatchKind.PREFIX, "/API/", case_sensitive=False),
    )
    assert matched(t, "/eXACT?Q") == "p"
    assert matched(t, "/api/users") == "pre"
    assert matched(t, "/Api/x") == "pre"


def test_case_sensitive_flag_is_ignored_for_regex() -> None:
    t = one_host(route("r", PathMatchKind.REGEX, "/abc", case_sensitive=False))
    assert matched(t, "/abc") == "r"
    assert matched(t, "/ABC") == "-"


def test_first_matching_route_wins() -> None:
    t = one_host(route("api", path="/api"), route("all", path="/"), route("never", path="/api"))
    assert matched(t, "/api/x") == "api"
    assert matched(t, "/other") == "all"


def test_select_route_returns_the_virtual_host() -> None:
    vh = vhost("vh", "a.com")
    found = table(vh).select_route("a.com", "/", [])
    assert found is not None
    assert found[0] is vh
    assert found[1] is vh.routes[0]


def header_route(*matchers: HeaderMatcher) -> RouteTable:
    return one_host(route("h", headers=matchers), route("fallback"))


def test_header_exact_match_joins_repeated_values() -> None:
    t = header_route(HeaderMatcher("x-v", exact("a,b")))
    assert matched(t, "/", [(b"x-v", b"a"), (b"other", b"z"), (b"x-v", b"b")]) == "h"
    assert matched(t, "/", [(b"x-v", b"a")]) == "fallback"


def test_header_present_and_absent() -> None:
    present = header_route(HeaderMatcher("x-debug"))  # no string match, no present: "present"
    assert matched(present, "/", [(b"x-debug", b"")]) == "h"
    assert matched(present, "/", []) == "fallback"
    absent = header_route(HeaderMatcher("x-debug", present=False))
    assert matched(absent, "/", []) == "h"
    assert matched(absent, "/", [(b"x-debug", b"1")]) == "fallback"
    inverted = header_route(HeaderMatcher("x-debug", present=True, invert=True))
    assert matched(inverted, "/", []) == "h"
    assert matched(inverted, "/", [(b"x-debug", b"1")]) == "fallback"


def test_inverted_string_match_never_matches_a_missing_header() -> None:
    t = header_route(HeaderMatcher("x-v", exact("a"), invert=True))
    assert matched(t, "/", [(b"x-v", b"b")]) == "h"
    assert matched(t, "/", [(b"x-v", b"a")]) == "fallback"
    assert matched(t, "/", []) == "fallback"


def test_treat_missing_header_as_empty() -> None:
    t = header_route(HeaderMatcher("x-v", exact(""), treat_missing_as_empty=True))
    assert matched(t, "/", []) == "h"
    inverted = header_route(
        HeaderMatcher("x-v", exact("a"), invert=True, treat_missing_as_empty=True)
    )
    assert matched(inverted, "/", []) == "h"


def test_all_header_matchers_must_match() -> None:
    t = header_route(HeaderMatcher("a", exact("1")), HeaderMatcher("b", exact("2")))
    assert matched(t, "/", [(b"a", b"1"), (b"b", b"2")]) == "h"
    assert matched(t, "/", [(b"a", b"1")]) == "fallback"


def test_regex_and_case_insensitive_header_matchers() -> None:
    rx = StringMatcher(StringMatchKind.REGEX, r"v\d", regex=re.compile(r"v\d"))
    ci = StringMatcher(StringMatchKind.PREFIX, "bearer ", ignore_case=True)
    t = header_route(HeaderMatcher("x-version", rx), HeaderMatcher("authorization", ci))
    assert matched(t, "/", [(b"x-version", b"v2"), (b"authorization", b"Bearer x")]) == "h"
    assert matched(t, "/", [(b"x-version", b"v22"), (b"authorization", b"Bearer x")]) == "fallback"


def route_name(t: RouteTable, authority: str, path: str, **kwargs: str) -> str:
    found = t.select_route(authority, path, [], **kwargs)
    return "-" if found is None else found[1].name


def test_pseudo_header_matchers() -> None:
    t = header_route(HeaderMatcher(":method", exact("POST")), HeaderMatcher(":path", exact("/x")))
    assert route_name(t, "h", "/x", method="POST") == "h"
    assert route_name(t, "h", "/x", method="GET") == "fallback"
    assert route_name(t, "h", "/y", method="POST") == "fallback"
    # Without the keyword, an HTTP/2-style pseudo-header in the list is used.
    assert matched(t, "/x", [(b":method", b"POST")]) == "h"
    auth = header_route(HeaderMatcher(":authority", exact("h:80")))
    assert route_name(auth, "h:80", "/") == "h"
    assert route_name(auth, "h", "/") == "fallback"
    scheme = header_route(HeaderMatcher(":scheme", exact("https")))
    assert route_name(scheme, "h", "/", scheme="https") == "h"
    assert route_name(scheme, "h", "/", scheme="http") == "fallback"


# --- weighted clusters ---------------------------------------------------------------------


def test_pick_weighted_cluster_covers_each_weight_exactly() -> None:
    action = cluster_action(1, 0, 3, 6)
    counts = {c.name: 0 for c in action.clusters}
    for draw in range(action.total_weight):
        counts[pick_weighted_cluster(action, draw).name] += 1
    assert counts == {"c0": 1, "c1": 0, "c2": 3, "c3": 6}
    assert pick_weighted_cluster(action, 0).name == "c0"
    assert pick_weighted_cluster(action, 1).name == "c2"


@given(st.lists(st.integers(0, 20), min_size=1, max_size=8).filter(lambda w: sum(w) > 0))
def test_weighted_pick_distribution_is_exact(weights: list[int]) -> None:
    action = cluster_action(*weights)
    picker = WeightedPicker(action)
    assert picker.total == sum(weights)
    counts = [0] * len(weights)
    for draw in range(action.total_weight):
        chosen = pick_weighted_cluster(action, draw)
        assert picker.pick(draw) is chosen
        counts[int(chosen.name[1:])] += 1
    assert counts == weights


def test_route_table_precompiles_pickers_and_mutations() -> None:
    add = HeaderMutation(add=(HeaderToAdd("x-route", "r", AppendAction.ADD_IF_ABSENT),))
    cluster = WeightedCluster("c", 1, request_headers=HeaderMutation(remove=frozenset({"x"})))
    action = ClusterAction((cluster,), 1)
    r = Route("r", RouteMatch(PathMatchKind.PREFIX, "/"), action, request_headers=add)
    vh = VirtualHost("vh", ("*",), (r,), response_headers=add)
    t = RouteTable(RouteConfig("rc", (vh,), request_headers=add))
    assert len(t.mutations(r).request) == 2  # route, then route config
    assert len(t.mutations(r).response) == 1  # virtual host
    assert len(t.mutations(cluster).request) == 1
    assert t.mutations(cluster).response == ()
    assert t.picker(action).pick(0) is cluster
    headers = [(b"x-route", b"old")]
    for mutation in t.mutations(r).request:
        mutation.apply(headers)
    assert headers == [(b"x-route", b"old")]


# --- rewrites and redirects ------------------------------------------------------------------


def test_prefix_rewrite_keeps_the_rest_and_the_query() -> None:
    action = cluster_action(1, prefix_rewrite="/v2/")
    r = route("r", path="/api/")
    assert rewrite_path("/api/users?x=1", r, action) == "/v2/users?x=1"
    ci = route("r", path="/API/", case_sensitive=False)
    assert rewrite_path("/api/users", ci, action) == "/v2/users"
    assert rewrite_path("/api/users", r, cluster_action(1)) == "/api/users"


def test_prefix_rewrite_on_exact_and_regex_routes_replaces_the_path() -> None:
    action = cluster_action(1, prefix_rewrite="/new")
    assert rewrite_path("/old?q=1", route("p", PathMatchKind.PATH, "/old"), action) == "/new?q=1"
    rx = route("x", PathMatchKind.REGEX, r"/o\w+")
    assert rewrite_path("/old#frag", rx, action) == "/new#frag"


def redirect(
    action: RedirectAction,
    scheme: str = "http",
    authority: str = "foo.com",
    path: str = "/a/b?q=1",
    r: Route | None = None,
) -> str:
    return redirect_location(scheme, authority, path, r or route("r", path="/a/"), action)


def test_https_redirect_drops_the_old_default_port() -> None:
    to_https = RedirectAction(scheme="https")
    assert redirect(to_https, authority="foo.com:80") == "https://foo.com/a/b?q=1"
    assert redirect(to_https, authority="foo.com:8080") == "https://foo.com:8080/a/b?q=1"
    assert redirect(to_https, authority="[::1]:80") == "https://[::1]/a/b?q=1"
    # Same scheme: the port stays, even a default one.
    assert (
        redirect(RedirectAction(host=None), authority="foo.com:80") == "http://foo.com:80/a/b?q=1"
    )


def test_redirect_port_and_host() -> None:
    assert redirect(RedirectAction(port=8443), authority="foo.com:80") == (
        "http://foo.com:8443/a/b?q=1"
    )
    assert redirect(RedirectAction(host="bar.com")) == "http://bar.com/a/b?q=1"
    assert redirect(RedirectAction(host="bar.com", port=81), authority="foo.com:9") == (
        "http://bar.com:81/a/b?q=1"
    )


def test_redirect_path_and_query() -> None:
    assert redirect(RedirectAction(path="/new")) == "http://foo.com/new?q=1"
    assert redirect(RedirectAction(path="/new", strip_query=True)) == "http://foo.com/new"
    # A query in path_redirect replaces the request's and is never stripped.
    assert redirect(RedirectAction(path="/new?x=2", strip_query=True)) == ("http://foo.com/new?x=2")
    assert redirect(RedirectAction(path="new")) == "http://foo.com/new?q=1"
    assert redirect(RedirectAction(strip_query=True)) == "http://foo.com/a/b"


def test_redirect_prefix_rewrite() -> None:
    action = RedirectAction(prefix_rewrite="/z/", response_code=302)
    assert redirect(action) == "http://foo.com/z/b?q=1"
    assert redirect(RedirectAction(prefix_rewrite="/z/", strip_query=True)) == "http://foo.com/z/b"
