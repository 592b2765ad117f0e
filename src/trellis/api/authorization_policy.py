"""AuthorizationPolicy (`security.istio.io`): who may call a workload, and how.

Field names and rules follow istio/api `security/v1beta1/authorization.proto`
and Istio's validation: a `source` or `operation` must set at least one field,
values must not be empty, IP blocks must be IPs or CIDRs, ports 1-65535. An
empty rule `{}` is valid and matches every request, as in Istio. Values of
principals, namespaces, hosts, methods and paths may start or end with `*`
(suffix / prefix match) or be `*` (any non-empty value).

Trellis implements the ALLOW, DENY and AUDIT actions on the sidecars'
inbound traffic: HTTP requests, and TCP connections (where the HTTP-only
fields cannot apply, as in Istio). CUSTOM (external authorization), `provider`,
`targetRef(s)`, request principals (JWT, RequestAuthentication) and the
`istio.io/dry-run` annotation are rejected by name rather than ignored.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trellis.api.meta import ApiModel, Resource, enum_value
from trellis.api.policy_selector import SECURITY_VERSIONS, PolicySelector

DRY_RUN_ANNOTATION = "istio.io/dry-run"
SUPPORTED_WHEN_KEYS = (
    "request.headers[NAME]",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
)
_HEADER_KEY = re.compile(r"^request\.headers\[([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\]$")
_UNSUPPORTED_KEY_PREFIXES = (
    "request.auth.",
    "connection.",
    "experimental.",
    "source.serviceAccount",
)
_SPIFFE = "spiffe://"


class AuthorizationAction(enum.StrEnum):
    """Istio `AuthorizationPolicy.Action` values Trellis implements."""

    ALLOW = "ALLOW"
    """Allow a request only if it matches a rule (of some ALLOW policy)."""
    DENY = "DENY"
    """Deny a request if it matches any rule."""
    AUDIT = "AUDIT"
    """Mark a request that matches a rule as audited; never changes the decision."""


def _as_text(value: Any) -> Any:
    # Istio's ports and values are strings; YAML writers often leave ports bare.
    if isinstance(value, list | tuple):
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def _not_empty(values: tuple[str, ...]) -> tuple[str, ...]:
    if any(value == "" for value in values):
        raise ValueError("empty values are not allowed")
    return values


def check_ip_blocks(values: tuple[str, ...]) -> tuple[str, ...]:
    """IP addresses or CIDR ranges (host bits may be set, as Istio accepts)."""
    for value in values:
        try:
            if "/" in value:
                ipaddress.ip_network(value, strict=False)
            else:
                ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR range") from None
    return values


def check_ports(values: tuple[str, ...]) -> tuple[str, ...]:
    """Port numbers 1-65535, written as strings (or bare integers)."""
    for value in values:
        if not value.isascii() or not value.isdigit() or not 0 < int(value) <= 65535:
            raise ValueError(f"{value!r} is not a port number (1-65535)")
    return values


def _principals(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if value.startswith(_SPIFFE):
            raise ValueError(
                f"{value!r}: write principals without {_SPIFFE} "
                "(e.g. cluster.local/ns/default/sa/sleep); Istio adds the prefix"
            )
    return values


def _paths(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if "{" in value or "}" in value:
            raise ValueError(
                f"{value!r}: path templates ({{*}}, {{**}}) are not supported by Trellis"
            )
    return values


Values = Annotated[tuple[str, ...], BeforeValidator(_as_text), AfterValidator(_not_empty)]
IpBlocks = Annotated[Values, AfterValidator(check_ip_blocks)]
Ports = Annotated[Values, AfterValidator(check_ports)]
Principals = Annotated[Values, AfterValidator(_principals)]
Paths = Annotated[Values, AfterValidator(_paths)]


class Source(ApiModel):
    """`from[].source`: who sends the request. Set fields must all match (AND)."""

    unsupported = frozenset(
        {"requestPrincipals", "notRequestPrincipals", "serviceAccounts", "notServiceAccounts"}
    )

    principals: Principals = ()
    """Peer identities (`<trust-domain>/ns/<ns>/sa/<sa>`) from the mTLS certificate."""
    not_principals: Principals = ()
    namespaces: Values = ()
    """Namespaces of the peer identity."""
    not_namespaces: Values = ()
    ip_blocks: IpBlocks = ()
    """The peer address of the connection."""
    not_ip_blocks: IpBlocks = ()
    remote_ip_blocks: IpBlocks = ()
    """The original client address (X-Forwarded-For); the peer address when unknown."""
    not_remote_ip_blocks: IpBlocks = ()

    @model_validator(mode="after")
    def _some(self) -> Source:
        if not any(getattr(self, name) for name in type(self).model_fields):
            raise ValueError("source must set at least one field")
        return self


class Operation(ApiModel):
    """`to[].operation`: what the request asks for. Set fields must all match (AND)."""

    hosts: Values = ()
    """Host/`:authority` values, case-insensitive."""
    not_hosts: Values = ()
    ports: Ports = ()
    """Destination (workload) ports."""
    not_ports: Ports = ()
    methods: Values = ()
    not_methods: Values = ()
    paths: Paths = ()
    """URL paths without the query string."""
    not_paths: Paths = ()

    @model_validator(mode="after")
    def _some(self) -> Operation:
        if not any(getattr(self, name) for name in type(self).model_fields):
            raise ValueError("operation must set at least one field")
        return self


class RuleFrom(ApiModel):
    """One `from` entry."""

    source: Source


class RuleTo(ApiModel):
    """One `to` entry."""

    operation: Operation


def header_of_key(key: str) -> str | None:
    """The header name of a `request.headers[NAME]` key, else None."""
    found = _HEADER_KEY.match(key)
    return found.group(1) if found else None


def _check_key(key: str) -> str:
    if key in SUPPORTED_WHEN_KEYS[1:] or header_of_key(key) is not None:
        return key
    supported = ", ".join(SUPPORTED_WHEN_KEYS)
    if key.startswith("request.headers"):
        raise ValueError(f"key {key!r} must be request.headers[NAME] with a valid header name")
    if key.startswith(_UNSUPPORTED_KEY_PREFIXES):
        raise ValueError(f"key {key!r} is not supported by Trellis (supported: {supported})")
    raise ValueError(f"unknown key {key!r} (supported: {supported})")


class Condition(ApiModel):
    """One `when` entry: an attribute and the values it must (not) have."""

    key: Annotated[str, AfterValidator(_check_key)]
    values: Values = ()
    not_values: Values = ()

    @field_validator("values", "not_values")
    @classmethod
    def _typed(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        key = info.data.get("key")
        if key in ("source.ip", "remote.ip", "destination.ip"):
            return check_ip_blocks(value)
        if key == "destination.port":
            return check_ports(value)
        if key == "source.principal":
            return _principals(value)
        return value

    @model_validator(mode="after")
    def _some(self) -> Condition:
        if not self.values and not self.not_values:
            raise ValueError(f"at least one of values or notValues is required for {self.key}")
        return self


class Rule(ApiModel):
    """One rule: it matches when a `from`, a `to` and every `when` match.

    A missing `from` or `to` matches any source or operation; present, it
    must not be empty.
    """

    from_: tuple[RuleFrom, ...] | None = None
    to: tuple[RuleTo, ...] | None = None
    when: tuple[Condition, ...] = ()

    @field_validator("from_", "to")
    @classmethod
    def _present_not_empty(cls, value: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if value is not None and not value:
            raise ValueError("must not be empty when present (leave it out to match any)")
        return value


class AuthorizationPolicySpec(ApiModel):
    """`AuthorizationPolicy` spec."""

    unsupported = frozenset({"targetRef", "targetRefs", "provider"})

    selector: PolicySelector | None = None
    """Workloads it applies to; none: every workload of the namespace (the root
    namespace: of the mesh). In the root namespace a selector picks workloads
    in every namespace."""
    rules: tuple[Rule, ...] = ()
    """ALLOW without rules allows nothing; DENY requires rules."""
    action: Annotated[
        AuthorizationAction,
        BeforeValidator(enum_value(AuthorizationAction, frozenset({"CUSTOM"}))),
    ] = AuthorizationAction.ALLOW

    @model_validator(mode="after")
    def _deny_needs_rules(self) -> AuthorizationPolicySpec:
        if self.action is AuthorizationAction.DENY and not self.rules:
            raise ValueError(
                "a DENY policy without rules never denies anything; "
                "add an empty rule {} to deny every request"
            )
        return self


class AuthorizationPolicy(Resource):
    """`security.istio.io/v1` AuthorizationPolicy."""

    api_versions = SECURITY_VERSIONS

    kind: Literal["AuthorizationPolicy"]
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)

    @field_validator("metadata")
    @classmethod
    def _no_dry_run(cls, value: Any) -> Any:
        annotations = getattr(value, "annotations", {}) or {}
        if str(annotations.get(DRY_RUN_ANNOTATION, "")).lower() == "true":
            raise ValueError(
                f"annotation {DRY_RUN_ANNOTATION}: dry-run policies are not supported by "
                "Trellis (the policy would be enforced); remove the annotation or the policy"
            )
        return value
