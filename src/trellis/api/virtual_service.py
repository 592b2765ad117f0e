"""VirtualService (`networking.istio.io`): how requests to a host are routed.

Field names, defaults and rules follow istio/api `networking/v1alpha3/
virtual_service.proto`. Trellis implements HTTP and TCP routes for sidecars
(`gateways` empty or `mesh`); TLS routes, delegation, mirroring, CORS and fault
injection are rejected by name.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from trellis.api.duration import Duration, PositiveDuration
from trellis.api.hosts import check_host
from trellis.api.meta import ApiModel, Resource

PortNumber = Annotated[int, Field(ge=1, le=65535)]
MESH_GATEWAY = "mesh"

RETRY_ON_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
"""Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` names, as Istio accepts them."""

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name)]


class StringMatch(ApiModel):
    """One of `exact`, `prefix` or `regex` (RE2 syntax); in `headers`, none means "present"."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StringMatch:
        given = [name for name in ("exact", "prefix", "regex") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"only one of exact, prefix and regex may be set (got {given})")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} is invalid: {exc}") from None
        return self

    @property
    def is_empty(self) -> bool:
        """No matcher set: in `headers`/`queryParams`, a presence check."""
        return self.exact is None and self.prefix is None and self.regex is None


def _required_match(value: StringMatch | None) -> StringMatch | None:
    if value is not None and value.is_empty:
        raise ValueError("one of exact, prefix or regex is required")
    return value


RequiredStringMatch = Annotated[StringMatch | None, AfterValidator(_required_match)]


def _query_params(value: dict[str, StringMatch]) -> dict[str, StringMatch]:
    for name, match in value.items():
        if match.prefix is not None:
            raise ValueError(f"{name}: prefix matching is not supported for query parameters")
    return value


class HTTPMatchRequest(ApiModel):
    """Conditions a request must meet; all set fields must match (AND)."""

    unsupported = frozenset({"scheme", "gateways", "sourceNamespace", "statPrefix"})

    name: str = ""
    uri: RequiredStringMatch = None
    method: RequiredStringMatch = None
    authority: RequiredStringMatch = None
    headers: dict[HeaderName, StringMatch] = Field(default_factory=dict)
    """Header name (lowercase in HTTP/2) -> match; an empty match means "present"."""
    port: PortNumber | None = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    """Applies only to proxies of workloads carrying these labels."""
    query_params: Annotated[dict[str, StringMatch], AfterValidator(_query_params)] = Field(
        default_factory=dict
    )
    ignore_uri_case: bool = False
    without_headers: dict[HeaderName, StringMatch] = Field(default_factory=dict)
    """Matches requests that do NOT have these headers (or values)."""


class PortSelector(ApiModel):
    """A port of the destination service."""

    number: PortNumber


class Destination(ApiModel):
    """A service (by host) and optionally a DestinationRule subset and port."""

    host: Annotated[str, AfterValidator(check_host)]
    """Service host; short names are read in the VirtualService's namespace."""
    subset: str = ""
    port: PortSelector | None = None
    """Required only when the service has several ports."""


class HeaderOperations(ApiModel):
    """Header edits: `set` overwrites, `add` appends, `remove` deletes."""

    set: dict[HeaderName, str] = Field(default_factory=dict)
    add: dict[HeaderName, str] = Field(default_factory=dict)
    remove: tuple[HeaderName, ...] = ()


class Headers(ApiModel):
    """Header edits on the request (before forwarding) and on the response."""

    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


Weight = Annotated[int, Field(ge=0)]


def _check_weights(weights: list[int]) -> None:
    # Istio's rule for weighted destinations: with one destination the weight
    # may be omitted (it gets all traffic); with several they must add up to 100.
    if len(weights) > 1 and sum(weights) != 100:
        raise ValueError(
            f"weights of the destinations must add up to 100 (they add up to {sum(weights)})"
        )


class HTTPRouteDestination(ApiModel):
    """A weighted destination of an HTTP route."""

    destination: Destination
    weight: Weight = 0
    """Percentage of traffic; may be omitted only when it is the route's only destination."""
    headers: Headers | None = None


class HTTPRedirect(ApiModel):
    """Reply with a redirect instead of forwarding."""

    unsupported = frozenset({"derivePort"})

    uri: str = ""
    """Replaces the path (and query)."""
    authority: str = ""
    port: PortNumber | None = None
    scheme: str = ""
    redirect_code: Annotated[int, Field(ge=300, le=399)] = 301

    @field_validator("redirect_code")
    @classmethod
    def _code(cls, value: int) -> int:
        if value not in (301, 302, 303, 307, 308):
            raise ValueError(f"{value} is not a redirect code (301, 302, 303, 307 or 308)")
        return value

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value not in ("", "http", "https"):
            raise ValueError(f"scheme must be http or https, not {value!r}")
        return value


class HTTPBody(ApiModel):
    """A direct response body: text (`string`) or base64 `bytes`."""

    string: str | None = None
    bytes: str | None = None
    """Base64-encoded, as in protobuf JSON."""

    @model_validator(mode="after")
    def _one_of(self) -> HTTPBody:
        if self.string is not None and self.bytes is not None:
            raise ValueError("only one of string and bytes may be set")
        return self


class HTTPDirectResponse(ApiModel):
    """Reply with a fixed status and body instead of forwarding."""

    status: Annotated[int, Field(ge=200, le=599)]
    body: HTTPBody | None = None


class HTTPRewrite(ApiModel):
    """Rewrite the path prefix matched by `match.uri` and/or the authority before forwarding."""

    unsupported = frozenset({"uriRegexRewrite"})

    uri: str = ""
    authority: str = ""


class HTTPRetry(ApiModel):
    """Retry policy of a route. Without `retries`, Istio's default applies (2 attempts)."""

    attempts: Annotated[int, Field(ge=0)] = 0
    """Number of retries; 0 disables retries."""
    per_try_timeout: PositiveDuration | None = None
    """Timeout of each try (at least 1ms); default: the route's `timeout`."""
    retry_on: str = ""
    """Comma-separated Envoy conditions and HTTP status codes, e.g. `5xx,connect-failure,503`."""
    retry_remote_localities: bool | None = None

    @field_validator("retry_on")
    @classmethod
    def _retry_on(cls, value: str) -> str:
        for item in value.split(","):
            condition = item.strip()
            if not condition or condition in RETRY_ON_CONDITIONS:
                continue
            if condition.isdigit() and 100 <= int(condition) <= 599:
                continue
            raise ValueError(f"{condition!r} is not a retry condition or HTTP status code")
        return value

    @property
    def retry_on_conditions(self) -> tuple[str, ...]:
        """The named conditions of `retry_on`, in order."""
        items = (item.strip() for item in self.retry_on.split(","))
        return tuple(item for item in items if item and not item.isdigit())

    @property
    def retriable_status_codes(self) -> tuple[int, ...]:
        """The status codes listed in `retry_on`."""
        items = (item.strip() for item in self.retry_on.split(","))
        return tuple(int(item) for item in items if item.isdigit())


class HTTPRoute(ApiModel):
    """One HTTP rule: matches (OR) and what to do with a matching request."""

    unsupported = frozenset(
        {
            "delegate",
            "mirror",
            "mirrors",
            "mirrorPercent",
            "mirrorPercentage",
            "corsPolicy",
            "fault",
        }
    )

    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()
    """Any one matching is enough; empty matches everything."""
    route: tuple[HTTPRouteDestination, ...] = ()
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    rewrite: HTTPRewrite | None = None
    timeout: Duration | None = None
    """Request timeout; unset or 0 means none (Istio's default: disabled)."""
    retries: HTTPRetry | None = None
    headers: Headers | None = None

    @field_validator("route")
    @classmethod
    def _weights(cls, value: tuple[HTTPRouteDestination, ...]) -> tuple[HTTPRouteDestination, ...]:
        _check_weights([item.weight for item in value])
        return value

    @model_validator(mode="after")
    def _action(self) -> HTTPRoute:
        actions = [
            name
            for name, present in (
                ("route", bool(self.route)),
                ("redirect", self.redirect is not None),
                ("directResponse", self.direct_response is not None),
            )
            if present
        ]
        if len(actions) != 1:
            found = ", ".join(actions) if actions else "none"
            raise ValueError(
                f"exactly one of route, redirect and directResponse is required (found: {found})"
            )
        if self.rewrite is not None and self.redirect is not None:
            raise ValueError("rewrite cannot be used with redirect")
        return self


class L4MatchAttributes(ApiModel):
    """Conditions on a TCP connection; Trellis implements the destination port."""

    unsupported = frozenset(
        {"destinationSubnets", "sourceLabels", "gateways", "sourceNamespace", "sourceSubnet"}
    )

    port: PortNumber | None = None


class RouteDestination(ApiModel):
    """A weighted destination of a TCP route."""

    destination: Destination
    weight: Weight = 0


class TCPRoute(ApiModel):
    """One TCP rule: matches (OR) and weighted destinations."""

    match: tuple[L4MatchAttributes, ...] = ()
    route: tuple[RouteDestination, ...]

    @field_validator("route")
    @classmethod
    def _weights(cls, value: tuple[RouteDestination, ...]) -> tuple[RouteDestination, ...]:
        if not value:
            raise ValueError("at least one destination is required")
        _check_weights([item.weight for item in value])
        return value


def _gateways(value: tuple[str, ...]) -> tuple[str, ...]:
    for gateway in value:
        if gateway != MESH_GATEWAY:
            raise ValueError(
                f"gateway {gateway!r} is not supported by Trellis (only {MESH_GATEWAY!r}: "
                "the sidecars)"
            )
    return value


class VirtualServiceSpec(ApiModel):
    """`VirtualService` spec."""

    unsupported = frozenset({"tls", "exportTo"})

    hosts: tuple[Annotated[str, AfterValidator(check_host)], ...]
    gateways: Annotated[tuple[str, ...], AfterValidator(_gateways)] = ()
    http: tuple[HTTPRoute, ...] = ()
    """Evaluated in order; the first matching rule wins."""
    tcp: tuple[TCPRoute, ...] = ()

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one host is required")
        return value

    @model_validator(mode="after")
    def _rules(self) -> VirtualServiceSpec:
        if not self.http and not self.tcp:
            raise ValueError("at least one http or tcp route is required")
        return self


class VirtualService(Resource):
    """`networking.istio.io/v1` VirtualService."""

    kind: Literal["VirtualService"]
    spec: VirtualServiceSpec
