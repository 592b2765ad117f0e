"""Property tests: Istio's value forms (exact, `prefix*`, `*suffix`, `*`) for paths, hosts
and principals mean the same thing after translation to RBAC and the proxy's compiler."""

from __future__ import annotations

import ipaddress

from envoy.config.rbac.v3 import rbac_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.api.security import AuthorizationPolicy
from trellis.core.authz import AuthzPolicy
from trellis.core.authz_match import AuthzRequest
from trellis.xds.compile_rbac import rbac_layer
from trellis.xds.mesh.authz import rbac_config
from trellis.xds.where import Where

ALPHABET = "ab/.-Z"
text = st.text(ALPHABET, max_size=8)
literal = st.text(ALPHABET, min_size=1, max_size=5)
value = st.one_of(
    st.just("*"),
    literal,
    literal.map(lambda item: item + "*"),
    literal.map(lambda item: "*" + item),
)


def istio_matches(pattern: str, candidate: str, *, ignore_case: bool = False) -> bool:
    """The reference meaning of an AuthorizationPolicy value."""
    if ignore_case:
        pattern, candidate = pattern.lower(), candidate.lower()
    if pattern == "*":
        return candidate != ""
    if pattern.startswith("*"):
        return candidate.endswith(pattern[1:])
    if pattern.endswith("*"):
        return candidate.startswith(pattern[:-1])
    return candidate == pattern


def compiled(rule: dict[str, object]) -> AuthzPolicy:
    resource = AuthorizationPolicy.model_validate(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"rules": [rule]},
        }
    )
    layer = rbac_layer(rbac_config([resource], rbac_pb2.RBAC.ALLOW), Where("test"))
    assert layer is not None
    (policy,) = layer.policies
    return policy


def request(path: str = "/", authority: str = "h", principal: str | None = None) -> AuthzRequest:
    address = ipaddress.ip_address("10.0.0.1")
    return AuthzRequest(principal, address, address, 80, "GET", path, authority)


def candidates(pattern: str) -> st.SearchStrategy[str]:
    """Random text, and text built to match the pattern (so both outcomes are exercised)."""
    core = pattern.strip("*")
    return st.one_of(text, st.builds(lambda a, b: a + core + b, text, text))


@settings(max_examples=200, deadline=None)
@given(pattern=value, data=st.data())
def test_paths(pattern: str, data: st.DataObject) -> None:
    path = data.draw(candidates(pattern))
    policy = compiled({"to": [{"operation": {"paths": [pattern]}}]})
    assert policy.matches(request(path=path)) is istio_matches(pattern, path)
    negated = compiled({"to": [{"operation": {"notPaths": [pattern]}}]})
    assert negated.matches(request(path=path)) is not istio_matches(pattern, path)


@settings(max_examples=200, deadline=None)
@given(pattern=value, data=st.data())
def test_hosts_ignore_case(pattern: str, data: st.DataObject) -> None:
    authority = data.draw(candidates(pattern).map(lambda item: item.swapcase()))
    policy = compiled({"to": [{"operation": {"hosts": [pattern]}}]})
    # Hosts `*` is Istio's present_match: any authority, even an empty one.
    expected = pattern == "*" or istio_matches(pattern, authority, ignore_case=True)
    assert policy.matches(request(authority=authority)) is expected


@settings(max_examples=200, deadline=None)
@given(pattern=value, data=st.data())
def test_principals_get_the_spiffe_prefix(pattern: str, data: st.DataObject) -> None:
    identity = data.draw(candidates(pattern))
    policy = compiled({"from": [{"source": {"principals": [pattern]}}]})
    principal = "spiffe://" + identity
    expected = istio_matches(pattern, identity) or (pattern == "*")
    assert policy.matches(request(principal=principal)) is expected
    assert not policy.matches(request(principal=None))
