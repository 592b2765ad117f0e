"""One AuthorizationPolicy rule as an Envoy RBAC `Policy`, the way Istio builds it.

(istio/istio `pilot/pkg/security/authz/model`.) A rule becomes one policy
named `ns[NS]-policy[NAME]-rule[IDX]`: one principal per `from` entry and one
permission per `to` entry (or a single one built from `when` alone), each an
AND of the set fields; a field's values are an OR, its `not*` values a NOT
of an OR. `when` conditions are appended to every principal (source-side
keys) or permission (destination-side keys). Field order inside the ANDs is
Istio's: principals, namespaces, remote IPs, IPs, then `when`; hosts,
methods, paths, ports, then `when`.

Value forms: `*` (any non-empty value), `prefix*`, `*suffix`, or exact.
Principals get the `spiffe://` prefix; namespaces match the principal with
the regex `.*/ns/NS/.*`; hosts are case-insensitive; a `request.headers`
condition matches one value of a comma-joined header (Istio's regex).

For a TCP port (the network RBAC filter) the HTTP-only fields (hosts,
methods, paths and their `not*` forms, `request.headers` conditions) cannot
be evaluated; `rule_policy(rule, tcp=True)` leaves them out, which widens
the rule. Istio does that for DENY and AUDIT rules (they deny or audit
more); an ALLOW rule that uses them is dropped instead (`uses_http_only`),
so it allows nothing on TCP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.rbac.v3.rbac_pb2 import Permission, Principal
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2

from trellis.api.security import Condition, Rule, header_of_key
from trellis.xds.mesh.build import u32

_SPIFFE = "spiffe://"
_HTTP_OPERATION_FIELDS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def policy_name(namespace: str, name: str, index: int) -> str:
    """Istio's RBAC policy name for rule `index` of policy `namespace/name`."""
    return f"ns[{namespace}]-policy[{name}]-rule[{index}]"


def quote_re2(text: str) -> str:
    """`text` as a literal in an RE2 pattern (Go's `regexp.QuoteMeta`)."""
    return "".join(f"\\{char}" if char in _RE2_SPECIAL else char for char in text)


def _regex(pattern: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def string_matcher(
    value: str, prefix: str = "", ignore_case: bool = False
) -> string_pb2.StringMatcher:
    """Istio's `StringMatcherWithPrefix`: `*` any non-empty, `*x` suffix, `x*` prefix, exact."""
    if value == "*":
        return _regex(".+")
    if value.startswith("*"):
        if prefix:
            return _regex(quote_re2(prefix) + ".*" + quote_re2(value[1:]))
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def _cidr(value: str) -> address_pb2.CidrRange:
    address, _, length = value.partition("/")
    if not length:
        length = "128" if ":" in address else "32"
    return address_pb2.CidrRange(address_prefix=address, prefix_len=u32(int(length)))


def _authenticated(matcher: string_pb2.StringMatcher) -> Principal:
    return Principal(authenticated=Principal.Authenticated(principal_name=matcher))


def _source_principal(value: str) -> Principal:
    return _authenticated(string_matcher(value, _SPIFFE))


def _source_namespace(value: str) -> Principal:
    pattern = ".*".join(quote_re2(part) for part in value.split("*"))
    return _authenticated(_regex(f".*/ns/{pattern}/.*"))


def _direct_remote_ip(value: str) -> Principal:
    return Principal(direct_remote_ip=_cidr(value))


def _remote_ip(value: str) -> Principal:
    return Principal(remote_ip=_cidr(value))


def _header_principal(name: str) -> Callable[[str], Principal]:
    def build(value: str) -> Principal:
        if value == "*":
            return Principal(header=rc.HeaderMatcher(name=name, present_match=True))
        if value.startswith("*"):
            literal = ".*" + quote_re2(value[1:])
        elif value.endswith("*"):
            literal = quote_re2(value[:-1]) + ".*"
        else:
            literal = quote_re2(value)
        pattern = f"^{literal}$|^{literal},.*|.*,{literal},.*|.*,{literal}$"
        matcher = rc.HeaderMatcher(
            name=name, safe_regex_match=regex_pb2.RegexMatcher(regex=pattern)
        )
        return Principal(header=matcher)

    return build


def _header_permission(name: str, ignore_case: bool) -> Callable[[str], Permission]:
    def build(value: str) -> Permission:
        if value == "*":
            return Permission(header=rc.HeaderMatcher(name=name, present_match=True))
        matcher = string_matcher(value, ignore_case=ignore_case)
        return Permission(header=rc.HeaderMatcher(name=name, string_match=matcher))

    return build


def _path(value: str) -> Permission:
    return Permission(url_path=path_pb2.PathMatcher(path=string_matcher(value)))


def _port(value: str) -> Permission:
    return Permission(destination_port=int(value))


def _destination_ip(value: str) -> Permission:
    return Permission(destination_ip=_cidr(value))


def _principal_field(
    build: Callable[[str], Principal], values: Sequence[str], not_values: Sequence[str]
) -> list[Principal]:
    found = []
    if values:
        found.append(Principal(or_ids=Principal.Set(ids=[build(v) for v in values])))
    if not_values:
        inner = Principal(or_ids=Principal.Set(ids=[build(v) for v in not_values]))
        found.append(Principal(not_id=inner))
    return found


def _permission_field(
    build: Callable[[str], Permission], values: Sequence[str], not_values: Sequence[str]
) -> list[Permission]:
    found = []
    if values:
        found.append(Permission(or_rules=Permission.Set(rules=[build(v) for v in values])))
    if not_values:
        inner = Permission(or_rules=Permission.Set(rules=[build(v) for v in not_values]))
        found.append(Permission(not_rule=inner))
    return found


_PRINCIPAL_KEYS: Mapping[str, Callable[[str], Principal]] = MappingProxyType(
    {
        "source.principal": _source_principal,
        "source.namespace": _source_namespace,
        "source.ip": _direct_remote_ip,
        "remote.ip": _remote_ip,
    }
)
_PERMISSION_KEYS: Mapping[str, Callable[[str], Permission]] = MappingProxyType(
    {"destination.ip": _destination_ip, "destination.port": _port}
)


def _when(conditions: Sequence[Condition], tcp: bool) -> tuple[list[Principal], list[Permission]]:
    principals: list[Principal] = []
    permissions: list[Permission] = []
    for condition in conditions:
        values, not_values = condition.values, condition.not_values
        header = header_of_key(condition.key)
        if header is not None:
            if not tcp:
                principals += _principal_field(_header_principal(header), values, not_values)
        elif condition.key in _PRINCIPAL_KEYS:
            principals += _principal_field(_PRINCIPAL_KEYS[condition.key], values, not_values)
        else:
            permissions += _permission_field(_PERMISSION_KEYS[condition.key], values, not_values)
    return principals, permissions


def _and_ids(ids: list[Principal]) -> Principal:
    return Principal(and_ids=Principal.Set(ids=ids or [Principal(any=True)]))


def _and_rules(rules: list[Permission]) -> Permission:
    return Permission(and_rules=Permission.Set(rules=rules or [Permission(any=True)]))


def uses_http_only(rule: Rule) -> bool:
    """Whether `rule` sets a field only HTTP requests have (hosts, methods, paths,
    `request.headers` conditions), so it cannot be evaluated on a TCP connection."""
    for target in rule.to or ():
        operation = target.operation
        if any(getattr(operation, name) for name in _HTTP_OPERATION_FIELDS):
            return True
    return any(header_of_key(condition.key) is not None for condition in rule.when)


def rule_policy(rule: Rule, *, tcp: bool = False) -> rbac_pb2.Policy:
    """The Envoy RBAC policy of one (validated) rule; `tcp`: for the network RBAC
    filter, without the HTTP-only fields."""
    when_principals, when_permissions = _when(rule.when, tcp)
    principals = []
    for entry in rule.from_ or ():
        source = entry.source
        ids = _principal_field(_source_principal, source.principals, source.not_principals)
        ids += _principal_field(_source_namespace, source.namespaces, source.not_namespaces)
        ids += _principal_field(_remote_ip, source.remote_ip_blocks, source.not_remote_ip_blocks)
        ids += _principal_field(_direct_remote_ip, source.ip_blocks, source.not_ip_blocks)
        principals.append(_and_ids(ids + when_principals))
    if not rule.from_:
        principals.append(_and_ids(list(when_principals)))
    permissions = []
    hosts = _header_permission(":authority", ignore_case=True)
    methods = _header_permission(":method", ignore_case=False)
    for target in rule.to or ():
        operation = target.operation
        rules = []
        if not tcp:
            rules += _permission_field(hosts, operation.hosts, operation.not_hosts)
            rules += _permission_field(methods, operation.methods, operation.not_methods)
            rules += _permission_field(_path, operation.paths, operation.not_paths)
        rules += _permission_field(_port, operation.ports, operation.not_ports)
        permissions.append(_and_rules(rules + when_permissions))
    if not rule.to:
        permissions.append(_and_rules(list(when_permissions)))
    return rbac_pb2.Policy(permissions=permissions, principals=principals)


def match_never() -> rbac_pb2.Policy:
    """Istio's policy for a policy without rules: nothing matches it."""
    return rbac_pb2.Policy(
        permissions=[Permission(not_rule=Permission(any=True))],
        principals=[Principal(not_id=Principal(any=True))],
    )
