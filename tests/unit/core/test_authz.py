"""Authorization decisions: Envoy RBAC matchers and Istio's AUDIT -> DENY -> ALLOW layering."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

import pytest

from trellis.core.authz import (
    ALLOWED,
    DENIED_NO_MATCH,
    AuthzAction,
    AuthzConfig,
    AuthzLayer,
    AuthzPolicy,
)
from trellis.core.authz_match import (
    MATCH_ANY,
    MATCH_NONE,
    AddressSource,
    AuthzRequest,
    HeaderSource,
    MatchAddress,
    MatchAll,
    MatchAnyOf,
    Matcher,
    MatchHeader,
    MatchNot,
    MatchPath,
    MatchPort,
    MatchPrincipal,
    TextKind,
    TextMatch,
    all_of,
    any_of,
    negate,
    network,
    parse_ip,
    text_regex,
)

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def request(**changes: object) -> AuthzRequest:
    base = AuthzRequest(
        principal=SLEEP,
        source_ip=ipaddress.ip_address("10.1.2.3"),
        destination_ip=ipaddress.ip_address("10.9.0.1"),
        destination_port=8080,
        method="GET",
        path="/api/items",
        authority="shop.default:8080",
        headers=((b"x-user", b"alice"), (b"x-tag", b"a"), (b"x-tag", b"b")),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def exact(value: str) -> TextMatch:
    return TextMatch(TextKind.EXACT, value)


def policy(
    name: str, permissions: Matcher = MATCH_ANY, principals: Matcher = MATCH_ANY
) -> AuthzPolicy:
    return AuthzPolicy(name, permissions, principals)


def test_text_match_kinds() -> None:
    assert exact("/a").matches("/a") and not exact("/a").matches("/a/")
    assert TextMatch(TextKind.PREFIX, "/a").matches("/a/b")
    assert TextMatch(TextKind.SUFFIX, ".png").matches("/x.png")
    assert TextMatch(TextKind.CONTAINS, "/ns/").matches("x/ns/y")
    assert TextMatch(TextKind.EXACT, "shop", ignore_case=True).matches("SHOP")
    assert TextMatch(TextKind.ONE_OF, values=frozenset({"a", "b"})).matches("b")
    non_empty = text_regex(re.compile(".+"))
    assert non_empty.kind is TextKind.NON_EMPTY
    assert non_empty.matches("x") and not non_empty.matches("")
    namespaces = text_regex(re.compile(".*/ns/default/.*"))
    assert namespaces.matches(SLEEP)
    assert not namespaces.matches("spiffe://cluster.local/ns/defaults/sa/x")


def test_header_matcher_follows_envoy() -> None:
    user = MatchHeader(b"x-user", text=exact("alice"))
    assert user.matches(request())
    assert not user.matches(request(headers=()))
    # Repeated headers are joined with "," before matching.
    assert MatchHeader(b"x-tag", text=exact("a,b")).matches(request())
    # An absent header: a string match fails, inverted or not; present_match false matches.
    inverted = MatchHeader(b"x-missing", text=exact("x"), invert=True)
    assert not inverted.matches(request())
    assert MatchHeader(b"x-missing", present=False).matches(request())
    assert not MatchHeader(b"x-missing").matches(request())
    assert MatchHeader(b"x-missing", present=True, invert=True).matches(request())
    empty = MatchHeader(b"x-missing", text=exact(""), missing_as_empty=True)
    assert empty.matches(request())
    method = MatchHeader(b":method", HeaderSource.METHOD, text=exact("GET"))
    assert method.matches(request()) and not method.matches(request(method="POST"))
    host = MatchHeader(
        b":authority", HeaderSource.AUTHORITY, text=TextMatch(TextKind.PREFIX, "shop.")
    )
    assert host.matches(request())


def test_principal_and_addresses() -> None:
    assert MatchPrincipal().matches(request())
    assert not MatchPrincipal().matches(request(principal=None))
    assert MatchPrincipal(exact(SLEEP)).matches(request())
    inside = MatchAddress(AddressSource.DIRECT_REMOTE, (network("10.1.0.0", 16),))
    assert inside.matches(request())
    assert not inside.matches(request(source_ip=ipaddress.ip_address("10.2.0.1")))
    assert not inside.matches(request(source_ip=None))
    assert not inside.matches(request(source_ip=ipaddress.ip_address("::1")))
    # remote_ip falls back to the peer address; given, it is used instead.
    remote = MatchAddress(AddressSource.REMOTE, (network("10.1.0.0", 16),))
    assert remote.matches(request())
    assert not remote.matches(request(remote_ip=ipaddress.ip_address("192.0.2.1")))
    # Host bits of the prefix are ignored, as in Envoy's CidrRange.
    assert MatchAddress(AddressSource.DESTINATION, (network("10.9.0.77", 24),)).matches(request())
    v6 = MatchAddress(AddressSource.DIRECT_REMOTE, (network("fd00::", 8),))
    assert v6.matches(request(source_ip=ipaddress.ip_address("fd00::5")))
    assert parse_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_ip("not-an-ip") is None


def test_ports_and_paths() -> None:
    assert MatchPort(frozenset({8080})).matches(request())
    assert MatchPort(ranges=((8000, 8081),)).matches(request())
    assert not MatchPort(ranges=((8000, 8080),)).matches(request())
    assert MatchPath(TextMatch(TextKind.PREFIX, "/api/")).matches(request())


def test_builders_flatten_and_merge() -> None:
    port = MatchPort(frozenset({1}))
    assert all_of([]) is MATCH_ANY
    assert all_of([MATCH_ANY, port]) is port
    assert any_of([]) == MATCH_NONE and not MATCH_NONE.matches(request())
    assert any_of([port, MATCH_ANY]) is MATCH_ANY
    assert negate(negate(port)) is port
    merged = any_of(
        [MatchPort(frozenset({80})), MatchPort(frozenset({8080})), MatchPath(exact("/"))]
    )
    assert isinstance(merged, MatchAnyOf)
    assert MatchPort(frozenset({80, 8080})) in merged.items
    principals = any_of([MatchPrincipal(exact("spiffe://a")), MatchPrincipal(exact("spiffe://b"))])
    assert isinstance(principals, MatchPrincipal) and principals.text is not None
    assert principals.text.kind is TextKind.ONE_OF
    assert principals.matches(request(principal="spiffe://b"))
    nested = all_of([MatchAll((port, port)), MatchNot(port)])
    assert isinstance(nested, MatchAll) and len(nested.items) == 3


def test_no_layers_allows() -> None:
    assert AuthzConfig(()).decide(request()) is ALLOWED


def test_deny_names_the_policy_and_wins_over_allow() -> None:
    admin = policy(
        "ns[shop]-policy[no-admin]-rule[0]", MatchPath(TextMatch(TextKind.PREFIX, "/admin"))
    )
    config = AuthzConfig(
        (
            AuthzLayer(AuthzAction.DENY, (admin,)),
            AuthzLayer(AuthzAction.ALLOW, (policy("ns[shop]-policy[all]-rule[0]"),)),
        )
    )
    denied = config.decide(request(path="/admin/users"))
    assert not denied.allowed
    assert denied.policy == "ns[shop]-policy[no-admin]-rule[0]"
    assert denied.details == "rbac_access_denied_matched_policy[ns[shop]-policy[no-admin]-rule[0]]"
    assert denied is admin.deny  # preallocated
    allowed = config.decide(request())
    assert allowed.allowed and allowed.policy == "ns[shop]-policy[all]-rule[0]"


def test_allow_layer_without_a_match_denies() -> None:
    only_sleep = policy("ns[shop]-policy[sleep]-rule[0]", principals=MatchPrincipal(exact(SLEEP)))
    config = AuthzConfig((AuthzLayer(AuthzAction.ALLOW, (only_sleep,)),))
    assert config.decide(request()).allowed
    denied = config.decide(request(principal="spiffe://cluster.local/ns/default/sa/other"))
    assert denied is DENIED_NO_MATCH
    assert denied.reason == "no ALLOW policy matched"
    assert denied.details == "rbac_access_denied_matched_policy[none]"
    # An ALLOW layer with no policy at all denies everything.
    assert not AuthzConfig((AuthzLayer(AuthzAction.ALLOW, ()),)).decide(request()).allowed


def test_audit_marks_but_never_blocks() -> None:
    audit = AuthzLayer(AuthzAction.LOG, (policy("ns[shop]-policy[audit]-rule[0]"),))
    decision = AuthzConfig((audit,)).decide(request())
    assert decision.allowed and decision.audited
    assert decision.audit_policy == "ns[shop]-policy[audit]-rule[0]"
    never = AuthzLayer(AuthzAction.LOG, (policy("x", MatchNot(MATCH_ANY)),))
    assert AuthzConfig((never,)).decide(request()) is ALLOWED
    deny = AuthzLayer(AuthzAction.DENY, (policy("ns[shop]-policy[deny]-rule[0]"),))
    denied = AuthzConfig((audit, deny)).decide(request())
    assert not denied.allowed and denied.audited


def test_first_matching_policy_by_name_decides() -> None:
    second = policy("ns[a]-policy[b]-rule[0]")
    first = policy("ns[a]-policy[a]-rule[0]")
    layer = AuthzLayer(AuthzAction.DENY, (second, first))
    assert [item.name for item in layer.policies] == [first.name, second.name]
    assert AuthzConfig((layer,)).decide(request()).policy == first.name


def test_a_policy_needs_a_permission_and_a_principal() -> None:
    only_path = policy("p", MatchPath(exact("/api/items")), MatchPrincipal(exact("spiffe://x")))
    assert not only_path.matches(request())
    assert policy("p", MatchPath(exact("/api/items"))).matches(request())


@pytest.mark.parametrize("kind", list(TextKind))
def test_every_text_kind_is_handled(kind: TextKind) -> None:
    matcher = TextMatch(kind, "a", regex=re.compile("a") if kind is TextKind.REGEX else None)
    assert isinstance(matcher.matches("a"), bool)
