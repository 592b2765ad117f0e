"""Route matching and route actions, seen from a real client and a real upstream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from .bootstrap import bootstrap, cluster, free_port, http_listener, virtual_host
from .client import request
from .harness import proxy_manager, upstream_manager
from .proxyproc import ProxyProcess, delta
from .upstream import HttpUpstream


@dataclass(frozen=True, slots=True)
class Env:
    proxy: ProxyProcess
    port: int
    v1: HttpUpstream
    v2: HttpUpstream


def _cart_routes() -> list[dict[str, object]]:
    return [
        {
            "match": {
                "prefix": "/api",
                "headers": [{"name": "x-canary", "string_match": {"exact": "1"}}],
            },
            "route": {"cluster": "v2"},
        },
        {"match": {"prefix": "/api"}, "route": {"cluster": "v1"}},
        {
            "match": {"prefix": "/old"},
            "redirect": {"path_redirect": "/new", "response_code": "FOUND"},
        },
        {
            "match": {"path": "/health"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
        },
        {
            "match": {"path": "/teapot"},
            "direct_response": {"status": 418, "body": {"inline_string": "short and stout"}},
        },
        {
            "match": {"prefix": "/v1/"},
            "route": {
                "cluster": "v1",
                "prefix_rewrite": "/",
                "host_rewrite_literal": "cart.internal",
            },
            "request_headers_to_add": [{"header": {"key": "x-route", "value": "v1"}}],
            "request_headers_to_remove": ["x-drop-me"],
            "response_headers_to_add": [{"header": {"key": "x-resp", "value": "added"}}],
            "response_headers_to_remove": ["x-remove-me"],
        },
        {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "v2"}},
        {
            "match": {"prefix": "/mut"},
            "route": {"cluster": "v1"},
            "request_headers_to_add": [
                {"header": {"key": "x-app", "value": "added"}},
                {
                    "header": {"key": "x-ow", "value": "new"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
                {"header": {"key": "x-absent", "value": "set"}, "append_action": "ADD_IF_ABSENT"},
            ],
        },
        {"match": {"prefix": "/nocase", "case_sensitive": False}, "route": {"cluster": "v2"}},
        {
            "match": {
                "prefix": "/inv",
                "headers": [
                    {"name": "x-env", "string_match": {"exact": "prod"}, "invert_match": True}
                ],
            },
            "route": {"cluster": "v2"},
        },
        {"match": {"prefix": "/inv"}, "route": {"cluster": "v1"}},
        {
            "match": {"prefix": "/secure"},
            "redirect": {
                "https_redirect": True,
                "host_redirect": "secure.example",
                "strip_query": True,
            },
        },
        {
            "match": {"prefix": "/moved/"},
            "redirect": {"prefix_rewrite": "/here/", "response_code": "PERMANENT_REDIRECT"},
        },
        {"match": {"path": "/exact"}, "route": {"cluster": "v2"}},
        {
            "match": {"prefix": "/flag", "headers": [{"name": "x-flag", "present_match": True}]},
            "route": {"cluster": "v2"},
        },
        {"match": {"prefix": "/flag"}, "route": {"cluster": "v1"}},
    ]


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("routing")
    with upstream_manager() as make_up, proxy_manager(request.config, workdir) as start:
        v1, v2 = make_up("v1"), make_up("v2")
        port = free_port()

        def tag(value: str) -> list[dict[str, object]]:
            return [{"header": {"key": "x-vhost", "value": value}}]

        vhosts = [
            virtual_host("cart", _cart_routes(), ["cart", "cart.default.svc.cluster.local"]),
            virtual_host(
                "suffix",
                [{"match": {"prefix": "/"}, "route": {"cluster": "v2"}}],
                ["*.example.com"],
                response_headers_to_add=tag("suffix"),
            ),
            virtual_host(
                "prefix",
                [{"match": {"prefix": "/"}, "route": {"cluster": "v1"}}],
                ["svc.*"],
                response_headers_to_add=tag("prefix"),
            ),
            virtual_host(
                "fallback",
                [{"match": {"prefix": "/only-here"}, "route": {"cluster": "v1"}}],
                ["*"],
                response_headers_to_add=tag("fallback"),
                request_headers_to_add=[{"header": {"key": "x-vhost-added", "value": "yes"}}],
            ),
        ]
        listener = http_listener("routing", port, vhosts)
        config = bootstrap(
            free_port(), [listener], [cluster("v1", [v1.port]), cluster("v2", [v2.port])]
        )
        yield Env(start(config, name="routing"), port, v1, v2)


@pytest.fixture(autouse=True)
def _clear(env: Env) -> None:
    env.v1.clear()
    env.v2.clear()


@pytest.mark.parametrize(
    ("host", "vhost"),
    [
        ("cart", None),
        ("cart:8080", None),
        ("cart.default.svc.cluster.local", None),
        ("CART", None),
        ("a.example.com", "suffix"),
        ("deep.a.example.com:99", "suffix"),
        ("svc.anything", "prefix"),
        ("svc.x.y:1234", "prefix"),
    ],
)
def test_virtual_host_domain_matching(env: Env, host: str, vhost: str | None) -> None:
    resp = request(env.port, "GET", "/api/x" if vhost is None else "/", host=host)
    assert resp.status == 200, resp
    assert resp.header("x-vhost") == vhost, resp


def test_suffix_wildcard_needs_a_label_before_it(env: Env) -> None:
    resp = request(env.port, "GET", "/", host="example.com")
    # falls through to the "*" virtual host, which has no route for "/"
    assert resp.status == 404, resp
    assert env.v1.requests == [] and env.v2.requests == []


def test_header_match_selects_route(env: Env) -> None:
    canary = request(env.port, "GET", "/api/a", host="cart", headers={"x-canary": "1"})
    other = request(env.port, "GET", "/api/a", host="cart", headers={"x-canary": "2"})
    plain = request(env.port, "GET", "/api/a", host="cart")
    assert canary.header("x-upstream") == "v2", canary
    assert other.header("x-upstream") == "v1", other
    assert plain.header("x-upstream") == "v1", plain


def test_present_match(env: Env) -> None:
    assert (
        request(env.port, "GET", "/flag", host="cart", headers={"x-flag": ""}).header("x-upstream")
        == "v2"
    )
    assert request(env.port, "GET", "/flag", host="cart").header("x-upstream") == "v1"


@pytest.mark.parametrize(
    ("path", "status", "upstream"),
    [
        ("/items/42", 200, "v2"),
        ("/items/42/more", 404, None),  # safe_regex must match the whole path
        ("/items/abc", 404, None),
        ("/exact", 200, "v2"),
        ("/exact/more", 404, None),
        ("/exact?q=1", 200, "v2"),  # the query string is not part of the path
    ],
)
def test_regex_and_exact_path(env: Env, path: str, status: int, upstream: str | None) -> None:
    resp = request(env.port, "GET", path, host="cart")
    assert resp.status == status, resp
    assert resp.header("x-upstream") == upstream, resp


def test_prefix_rewrite_host_rewrite_and_header_mutation(env: Env) -> None:
    resp = request(env.port, "GET", "/v1/items/7?q=1", host="cart", headers={"x-drop-me": "secret"})
    assert resp.status == 200, resp
    assert resp.header("x-upstream") == "v1"
    assert resp.header("x-resp") == "added"
    assert resp.header("x-remove-me") is None, "response_headers_to_remove not applied"
    (seen,) = env.v1.requests
    assert seen.target == "/items/7?q=1"
    assert seen.header("host") == "cart.internal"
    assert seen.header("x-route") == "v1"
    assert seen.header("x-drop-me") is None


def test_virtual_host_request_headers_to_add(env: Env) -> None:
    resp = request(env.port, "GET", "/only-here", host="unmatched.host")
    assert resp.status == 200, resp
    assert resp.header("x-vhost") == "fallback"
    (seen,) = env.v1.requests
    assert seen.header("x-vhost-added") == "yes"


def test_redirect(env: Env) -> None:
    resp = request(env.port, "GET", "/old/page", host="cart")
    assert resp.status == 302, resp
    location = resp.header("location")
    assert location is not None, resp
    assert urlsplit(location).path == "/new", location
    assert urlsplit(location).netloc in ("", "cart"), location
    assert env.v1.requests == [] and env.v2.requests == []


def test_direct_response(env: Env) -> None:
    ok = request(env.port, "GET", "/health", host="cart")
    assert (ok.status, ok.body) == (200, b"ok"), ok
    teapot = request(env.port, "GET", "/teapot", host="cart")
    assert (teapot.status, teapot.body) == (418, b"short and stout"), teapot
    assert env.v1.requests == [] and env.v2.requests == []


@pytest.mark.parametrize(("host", "path"), [("cart", "/nowhere"), ("unmatched.host", "/api")])
def test_no_route_is_404_with_nr_flag(env: Env, host: str, path: str) -> None:
    before = env.proxy.samples()
    resp = request(env.port, "GET", path, host=host)
    assert resp.status == 404, resp
    assert env.v1.requests == [] and env.v2.requests == []
    grown = delta(
        before,
        env.proxy.samples(),
        "istio_requests_total",
        response_code="404",
        response_flags="NR",
    )
    assert grown == 1, (
        f"istio_requests_total{{response_code=404,response_flags=NR}} grew by {grown}"
    )


def test_header_append_actions(env: Env) -> None:
    headers = {"x-app": "orig", "x-ow": "old", "x-absent": "keep"}
    assert request(env.port, "GET", "/mut", host="cart", headers=headers).status == 200
    (seen,) = env.v1.requests
    assert [v.strip() for v in (seen.header("x-app") or "").split(",")] == ["orig", "added"]
    assert seen.header_values("x-ow") == ["new"]
    assert seen.header_values("x-absent") == ["keep"]


def test_case_insensitive_prefix(env: Env) -> None:
    assert request(env.port, "GET", "/NoCase/x", host="cart").header("x-upstream") == "v2"


def test_inverted_header_match(env: Env) -> None:
    dev = request(env.port, "GET", "/inv", host="cart", headers={"x-env": "dev"})
    assert dev.header("x-upstream") == "v2"
    # as in Envoy, a missing header never matches a value matcher, inverted or not
    assert request(env.port, "GET", "/inv", host="cart").header("x-upstream") == "v1"
    prod = request(env.port, "GET", "/inv", host="cart", headers={"x-env": "prod"})
    assert prod.header("x-upstream") == "v1"


def test_https_redirect_with_host_and_strip_query(env: Env) -> None:
    resp = request(env.port, "GET", "/secure/page?token=1", host="cart")
    assert resp.status == 301, resp
    assert resp.header("location") == "https://secure.example/secure/page", resp


def test_redirect_prefix_rewrite_keeps_query(env: Env) -> None:
    resp = request(env.port, "GET", "/moved/a/b?q=2", host="cart:8080")
    assert resp.status == 308, resp
    assert resp.header("location") == "http://cart:8080/here/a/b?q=2", resp
