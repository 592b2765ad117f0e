"""Precompiled matchers for authorization: the request view and Envoy RBAC's conditions.

An Envoy RBAC permission or principal becomes a tree of the frozen matchers
below (`matches(request) -> bool`); `all_of`, `any_of` and `negate` build
the tree and flatten what they can (nested ANDs and ORs, double negation,
ports and exact strings merged into set lookups), so evaluation is a few
attribute reads and comparisons. Regexes are compiled when the config is,
never per request, and nothing is allocated per request except the joined
value of a repeated header, as Envoy does.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """What authorization looks at in one inbound request.

    `principal` is the peer's URI SAN (`spiffe://...`) when the connection is
    mTLS with a client certificate, else None. `remote_ip` is the original
    client (X-Forwarded-For / proxy protocol) when known, else leave it None
    to mean `source_ip`. `destination_port` is the port the connection
    arrived on (the workload port). `path` is without the query string;
    `authority` is the `:authority`/`Host` value as received ("" if none).
    `headers` are the request's (lower-case name, value) pairs as received.
    """

    principal: str | None
    source_ip: IPAddress | None
    destination_ip: IPAddress | None
    destination_port: int
    method: str
    path: str
    authority: str
    headers: Headers = ()
    remote_ip: IPAddress | None = None


def parse_ip(text: str) -> IPAddress | None:
    """An address for `AuthzRequest` from a socket address string; None if not an IP."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


class Matcher(Protocol):
    """A condition on a request (an Envoy RBAC permission or principal)."""

    def matches(self, request: AuthzRequest) -> bool: ...


class TextKind(enum.Enum):
    """How a `TextMatch` compares (Envoy's StringMatcher plus the shapes Istio emits)."""

    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    CONTAINS = "contains"
    REGEX = "safe_regex"
    ONE_OF = "one_of"  # several exact values (merged ORs)
    NON_EMPTY = "non_empty"  # regex `.+`
    ANY = "any"  # regex `.*`


@dataclass(frozen=True, slots=True)
class TextMatch:
    """A compiled string matcher; `value` is lower-cased when `ignore_case`."""

    kind: TextKind
    value: str = ""
    ignore_case: bool = False
    regex: re.Pattern[str] | None = None
    values: frozenset[str] = frozenset()

    def matches(self, text: str) -> bool:
        kind = self.kind
        if self.ignore_case:
            text = text.lower()
        if kind is TextKind.EXACT:
            return text == self.value
        if kind is TextKind.PREFIX:
            return text.startswith(self.value)
        if kind is TextKind.SUFFIX:
            return text.endswith(self.value)
        if kind is TextKind.ONE_OF:
            return text in self.values
        if kind is TextKind.NON_EMPTY:
            return text != ""
        if kind is TextKind.ANY:
            return True
        if kind is TextKind.CONTAINS:
            return self.value in text
        assert self.regex is not None
        return self.regex.fullmatch(text) is not None


def text_regex(pattern: re.Pattern[str]) -> TextMatch:
    """A regex matcher; `.+` and `.*` become plain checks."""
    if pattern.pattern == ".+":
        return TextMatch(TextKind.NON_EMPTY)
    if pattern.pattern == ".*":
        return TextMatch(TextKind.ANY)
    return TextMatch(TextKind.REGEX, pattern.pattern, regex=pattern)


@dataclass(frozen=True, slots=True)
class MatchAny:
    """Envoy's `any: true`."""

    def matches(self, request: AuthzRequest) -> bool:
        return True


MATCH_ANY = MatchAny()


@dataclass(frozen=True, slots=True)
class MatchNot:
    """`not_rule` / `not_id`."""

    inner: Matcher

    def matches(self, request: AuthzRequest) -> bool:
        return not self.inner.matches(request)


@dataclass(frozen=True, slots=True)
class MatchAll:
    """`and_rules` / `and_ids`: every item matches."""

    items: tuple[Matcher, ...]

    def matches(self, request: AuthzRequest) -> bool:
        for item in self.items:  # noqa: SIM110 - a loop allocates no generator per request
            if not item.matches(request):
                return False
        return True


@dataclass(frozen=True, slots=True)
class MatchAnyOf:
    """`or_rules` / `or_ids` (and a policy's permission or principal list): one item matches."""

    items: tuple[Matcher, ...]

    def matches(self, request: AuthzRequest) -> bool:
        for item in self.items:  # noqa: SIM110 - a loop allocates no generator per request
            if item.matches(request):
                return True
        return False


MATCH_NONE = MatchAnyOf(())


class HeaderSource(enum.Enum):
    """Where a header matcher reads its value."""

    HEADER = "header"
    METHOD = ":method"
    AUTHORITY = ":authority"


@dataclass(frozen=True, slots=True)
class MatchHeader:
    """Envoy's `HeaderMatcher` (route.v3): values of a repeated header are joined with ","."""

    name: bytes  # lower-case
    source: HeaderSource = HeaderSource.HEADER
    text: TextMatch | None = None
    present: bool = True  # used when `text` is None
    invert: bool = False
    missing_as_empty: bool = False

    def matches(self, request: AuthzRequest) -> bool:
        source = self.source
        value: str | None
        if source is HeaderSource.METHOD:
            value = request.method
        elif source is HeaderSource.AUTHORITY:
            value = request.authority
        else:
            value = _header_value(request.headers, self.name)
        if value is None and self.missing_as_empty:
            value = ""
        if value is None:
            # Envoy: an absent header matches only "not present" (inverted: "present").
            return self.text is None and self.present == self.invert
        if self.text is None:
            return self.present != self.invert
        return self.text.matches(value) != self.invert


def _header_value(headers: Headers, name: bytes) -> str | None:
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            found = value if found is None else found + b"," + value
    return None if found is None else found.decode("latin-1")


@dataclass(frozen=True, slots=True)
class MatchPath:
    """`url_path`: the request path without the query string."""

    text: TextMatch

    def matches(self, request: AuthzRequest) -> bool:
        return self.text.matches(request.path)


@dataclass(frozen=True, slots=True)
class MatchPrincipal:
    """`authenticated`: an mTLS peer, whose URI SAN matches `text` if given."""

    text: TextMatch | None = None

    def matches(self, request: AuthzRequest) -> bool:
        principal = request.principal
        if principal is None:
            return False
        return self.text is None or self.text.matches(principal)


class AddressSource(enum.Enum):
    """Which address an IP matcher reads."""

    DIRECT_REMOTE = "direct_remote_ip"
    REMOTE = "remote_ip"
    DESTINATION = "destination_ip"


Network = tuple[int, int, int]
"""(IP version, network as an int, mask as an int)."""


def network(prefix: str, length: int) -> Network:
    """A CIDR range as Envoy's `CidrRange` (host bits of `prefix` are ignored)."""
    net = ipaddress.ip_network(f"{prefix}/{length}", strict=False)
    return (net.version, int(net.network_address), int(net.netmask))


@dataclass(frozen=True, slots=True)
class MatchAddress:
    """`direct_remote_ip`, `remote_ip` or `destination_ip`: the address is in one range."""

    source: AddressSource
    networks: tuple[Network, ...]

    def matches(self, request: AuthzRequest) -> bool:
        source = self.source
        if source is AddressSource.DIRECT_REMOTE:
            address = request.source_ip
        elif source is AddressSource.DESTINATION:
            address = request.destination_ip
        else:
            address = request.remote_ip if request.remote_ip is not None else request.source_ip
        if address is None:
            return False
        version = address.version
        value = int(address)
        for net_version, net, mask in self.networks:
            if net_version == version and value & mask == net:
                return True
        return False


@dataclass(frozen=True, slots=True)
class MatchPort:
    """`destination_port` (several merged) and `destination_port_range` [start, end)."""

    ports: frozenset[int] = frozenset()
    ranges: tuple[tuple[int, int], ...] = ()

    def matches(self, request: AuthzRequest) -> bool:
        port = request.destination_port
        if port in self.ports:
            return True
        for start, end in self.ranges:  # noqa: SIM110 - no generator per request
            if start <= port < end:
                return True
        return False


def negate(item: Matcher) -> Matcher:
    """`not item`, without double negations."""
    if isinstance(item, MatchNot):
        return item.inner
    return MatchNot(item)


def all_of(items: Iterable[Matcher]) -> Matcher:
    """AND of `items`, flattened; `any` items dropped; empty -> `any`."""
    flat: list[Matcher] = []
    for item in items:
        if isinstance(item, MatchAll):
            flat.extend(item.items)
        elif not isinstance(item, MatchAny):
            flat.append(item)
    if not flat:
        return MATCH_ANY
    return flat[0] if len(flat) == 1 else MatchAll(tuple(flat))


def any_of(items: Iterable[Matcher]) -> Matcher:
    """OR of `items`, flattened, with ports and exact principals merged; empty -> nothing."""
    flat: list[Matcher] = []
    for item in items:
        if isinstance(item, MatchAny):
            return MATCH_ANY
        flat.extend(item.items if isinstance(item, MatchAnyOf) else (item,))
    merged = _merge_ports(_merge_principals(flat))
    if len(merged) == 1:
        return merged[0]
    return MatchAnyOf(tuple(merged))


def _merge_ports(items: list[Matcher]) -> list[Matcher]:
    ports = [item for item in items if isinstance(item, MatchPort)]
    if len(ports) < 2:
        return items
    merged = MatchPort(
        frozenset().union(*(item.ports for item in ports)),
        tuple(span for item in ports for span in item.ranges),
    )
    rest = [item for item in items if not isinstance(item, MatchPort)]
    return [merged, *rest]


def _exact_principal(item: Matcher) -> frozenset[str] | None:
    if not isinstance(item, MatchPrincipal) or item.text is None or item.text.ignore_case:
        return None
    if item.text.kind is TextKind.EXACT:
        return frozenset((item.text.value,))
    return item.text.values if item.text.kind is TextKind.ONE_OF else None


def _merge_principals(items: list[Matcher]) -> list[Matcher]:
    exact = [(item, _exact_principal(item)) for item in items]
    names = [values for _, values in exact if values is not None]
    if len(names) < 2:
        return items
    merged = MatchPrincipal(TextMatch(TextKind.ONE_OF, values=frozenset().union(*names)))
    return [merged, *(item for item, values in exact if values is None)]
