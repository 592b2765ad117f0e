"""ServiceEntry and WorkloadEntry (`networking.istio.io`): the service registry.

Field names, defaults and rules follow istio/api `networking/v1alpha3/
service_entry.proto` and `workload_entry.proto`. On the local platform every
service is a ServiceEntry and every running workload a WorkloadEntry.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from trellis.api.hosts import check_host, is_ip, is_ip_or_cidr
from trellis.api.meta import ApiModel, Resource, check_dns1123_label, enum_value

PortNumber = Annotated[int, Field(ge=1, le=65535)]

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
"""Protocols carried by an HTTP connection manager (routes apply)."""
TCP_PROTOCOLS = frozenset({"TCP", "TLS", "HTTPS", "MONGO", "MYSQL", "REDIS"})
"""Protocols proxied as opaque TCP (TLS/HTTPS are passed through, not terminated)."""
_UNSUPPORTED_PROTOCOLS = frozenset({"UDP", "HTTP_PROXY"})


def _protocol(value: str) -> str:
    # Istio parses protocol names case-insensitively; Trellis stores the canonical spelling.
    upper = value.upper()
    if upper in HTTP_PROTOCOLS or upper in TCP_PROTOCOLS:
        return upper
    if upper in _UNSUPPORTED_PROTOCOLS:
        raise ValueError(f"protocol {value} is not supported by Trellis")
    known = ", ".join(sorted(HTTP_PROTOCOLS | TCP_PROTOCOLS))
    raise ValueError(f"unknown protocol {value!r} (expected one of {known})")


class ServicePort(ApiModel):
    """A port of a ServiceEntry (`ServicePort`)."""

    number: PortNumber
    protocol: Annotated[str, AfterValidator(_protocol)] = "TCP"
    """HTTP|HTTP2|GRPC|GRPC-WEB|TCP|TLS|HTTPS|MONGO|MYSQL|REDIS (case-insensitive).

    When omitted it is read from the name's prefix (`http-web` -> HTTP), else TCP.
    """
    name: str
    """Label of the port; WorkloadEntry `ports` maps this name to the endpoint's port."""
    target_port: PortNumber | None = None
    """Port on the endpoints when they do not say otherwise; default `number`."""

    @property
    def is_http(self) -> bool:
        """Whether traffic on this port is HTTP (routed by `http` rules)."""
        return self.protocol in HTTP_PROTOCOLS

    @model_validator(mode="before")
    @classmethod
    def _infer_protocol(cls, data: Any) -> Any:
        # Without `protocol`, Istio reads it from a `<protocol>[-<suffix>]` port name.
        if isinstance(data, dict) and "protocol" not in data and isinstance(data.get("name"), str):
            prefix = data["name"].split("-", 1)[0].upper()
            if prefix in HTTP_PROTOCOLS or prefix in TCP_PROTOCOLS:
                return {**data, "protocol": prefix}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_dns1123_label(value, "port name")


class Location(enum.StrEnum):
    """Whether the service is part of the mesh (Istio default: MESH_EXTERNAL)."""

    MESH_EXTERNAL = "MESH_EXTERNAL"
    MESH_INTERNAL = "MESH_INTERNAL"


class Resolution(enum.StrEnum):
    """How endpoints are found (Istio default: NONE)."""

    NONE = "NONE"
    """Forward to the address the client connected to (original destination)."""
    STATIC = "STATIC"
    """The `endpoints` (or selected WorkloadEntries) with IP addresses."""
    DNS = "DNS"
    """Endpoint addresses (or, without endpoints, the hosts) are DNS names resolved by the proxy."""


class WorkloadSelector(ApiModel):
    """Selects WorkloadEntries (and, on Kubernetes, pods) by labels, in the same namespace."""

    labels: dict[str, str] = Field(default_factory=dict)


class WorkloadEntrySpec(ApiModel):
    """One workload instance (`WorkloadEntry`), also the shape of ServiceEntry `endpoints`."""

    address: str = ""
    """IP address, DNS name (DNS resolution only) or `unix://` path of the workload."""
    ports: dict[str, PortNumber] = Field(default_factory=dict)
    """Service port name -> port on this workload (overrides `targetPort` and `number`)."""
    labels: dict[str, str] = Field(default_factory=dict)
    network: str = ""
    locality: str = ""
    """`region/zone/subzone`."""
    weight: Annotated[int, Field(ge=0, le=4294967295)] = 0
    """Load-balancing weight; 0 means the default (1)."""
    service_account: str = ""
    """Identity of the workload: `spiffe://<td>/ns/<namespace>/sa/<serviceAccount>`."""

    @model_validator(mode="after")
    def _address(self) -> WorkloadEntrySpec:
        if not self.address and not self.network:
            raise ValueError("address is required (it may be empty only when network is set)")
        return self

    def port_for(self, port: ServicePort) -> int:
        """The workload's port for a service port: `ports[name]`, `targetPort` or `number`."""
        return self.ports.get(port.name, port.target_port or port.number)


_UNSUPPORTED_RESOLUTIONS = frozenset({"DNS_ROUND_ROBIN"})


class ServiceEntrySpec(ApiModel):
    """`ServiceEntry` spec: a service's hosts, ports and endpoints."""

    unsupported = frozenset({"subjectAltNames"})

    hosts: tuple[Annotated[str, AfterValidator(check_host)], ...]
    addresses: tuple[str, ...] = ()
    """Virtual IPs or CIDRs of the service."""
    ports: tuple[ServicePort, ...]
    location: Annotated[Location, BeforeValidator(enum_value(Location, frozenset()))] = (
        Location.MESH_EXTERNAL
    )
    resolution: Annotated[
        Resolution, BeforeValidator(enum_value(Resolution, _UNSUPPORTED_RESOLUTIONS))
    ] = Resolution.NONE
    endpoints: tuple[WorkloadEntrySpec, ...] = ()
    workload_selector: WorkloadSelector | None = None
    """Selects WorkloadEntries in the namespace as endpoints (instead of `endpoints`)."""
    export_to: tuple[str, ...] = ()
    """Namespaces that may see the service: `.` (own), `*` (all) or names; empty = all."""

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one host is required")
        if "*" in value:
            raise ValueError("host '*' is not allowed in a ServiceEntry")
        return value

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            if not is_ip_or_cidr(address):
                raise ValueError(f"{address!r} is not an IP address or CIDR block")
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
        if not value:
            raise ValueError("at least one port is required")
        seen_numbers: set[int] = set()
        seen_names: set[str] = set()
        for port in value:
            if port.number in seen_numbers:
                raise ValueError(f"port number {port.number} is used twice")
            if port.name in seen_names:
                raise ValueError(f"port name {port.name!r} is used twice")
            seen_numbers.add(port.number)
            seen_names.add(port.name)
        return value

    @model_validator(mode="after")
    def _endpoints(self) -> ServiceEntrySpec:
        if self.endpoints and self.workload_selector is not None:
            raise ValueError("only one of endpoints and workloadSelector may be set")
        if self.resolution is Resolution.NONE and self.endpoints:
            raise ValueError("endpoints must be empty when resolution is NONE")
        if self.resolution is not Resolution.DNS:
            for index, endpoint in enumerate(self.endpoints):
                address = endpoint.address
                if address and not is_ip(address) and not address.startswith("unix://"):
                    raise ValueError(
                        f"endpoints[{index}].address {address!r} must be an IP address "
                        f"when resolution is {self.resolution.value}"
                    )
        if self.resolution is Resolution.DNS and not self.endpoints:
            for host in self.hosts:
                if host.startswith("*"):
                    raise ValueError(
                        f"host {host!r}: wildcard hosts need endpoints when resolution is DNS"
                    )
        names = {port.name for port in self.ports}
        for index, endpoint in enumerate(self.endpoints):
            for name in endpoint.ports:
                if name not in names:
                    raise ValueError(
                        f"endpoints[{index}].ports: {name!r} is not the name of a port of "
                        "this ServiceEntry"
                    )
        return self


class ServiceEntry(Resource):
    """`networking.istio.io/v1` ServiceEntry."""

    kind: Literal["ServiceEntry"]
    spec: ServiceEntrySpec


class WorkloadEntry(Resource):
    """`networking.istio.io/v1` WorkloadEntry."""

    kind: Literal["WorkloadEntry"]
    spec: WorkloadEntrySpec
