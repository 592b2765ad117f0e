"""What translation takes: the mesh config, the proxy asking, and how it captures traffic."""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from trellis.api.networking import (
    DestinationRule,
    Resource,
    ServiceEntry,
    VirtualService,
    WorkloadEntry,
)
from trellis.api.security import AuthorizationPolicy, PeerAuthentication
from trellis.api.telemetry import Telemetry
from trellis.core.sidecar_ports import INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT
from trellis.errors import ConfigError
from trellis.xds.mesh.access_log import MeshAccessLog
from trellis.xds.mesh.tracing import MeshTracing


def _key(resource: Resource) -> tuple[str, str]:
    return (resource.metadata.namespace, resource.metadata.name)


DEFAULT_TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class MeshTls:
    """The mesh's certificate authority as translation needs it; mTLS is on when given.

    `root_ca_pem` is the trust anchor proxies verify peers against (public,
    delivered as the `ROOTCA` secret); `trust_domain` forms the peers'
    SPIFFE IDs, `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    """

    root_ca_pem: bytes = field(repr=False)
    trust_domain: str = DEFAULT_TRUST_DOMAIN


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The validated resources one translation reads; sorted by namespace and name.

    `tls`: the mesh CA; None (no CA) leaves every proxy's traffic plaintext.
    """

    service_entries: tuple[ServiceEntry, ...] = ()
    workload_entries: tuple[WorkloadEntry, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    telemetries: tuple[Telemetry, ...] = ()
    tls: MeshTls | None = None
    access_log: MeshAccessLog | None = None  # meshConfig.accessLogFile; None: no access log
    tracing: MeshTracing | None = None  # every sidecar's spans to this collector; None: off
    # Service host -> the virtual IP the control plane gave it (`trellis.xds.mesh.vips`):
    # transparent capture's outbound listener matches TCP services by it.
    service_vips: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        resources: Iterable[Resource],
        tls: MeshTls | None = None,
        access_log: MeshAccessLog | None = None,
    ) -> MeshConfig:
        """Sort resources of the kinds Trellis implements into a bundle; any other kind
        is an error."""
        entries: list[ServiceEntry] = []
        workloads: list[WorkloadEntry] = []
        routes: list[VirtualService] = []
        rules: list[DestinationRule] = []
        peer_authentications: list[PeerAuthentication] = []
        authorization_policies: list[AuthorizationPolicy] = []
        telemetries: list[Telemetry] = []
        for resource in resources:
            if isinstance(resource, ServiceEntry):
                entries.append(resource)
            elif isinstance(resource, WorkloadEntry):
                workloads.append(resource)
            elif isinstance(resource, VirtualService):
                routes.append(resource)
            elif isinstance(resource, DestinationRule):
                rules.append(resource)
            elif isinstance(resource, PeerAuthentication):
                peer_authentications.append(resource)
            elif isinstance(resource, AuthorizationPolicy):
                authorization_policies.append(resource)
            elif isinstance(resource, Telemetry):
                telemetries.append(resource)
            else:
                raise ConfigError(
                    f"{resource.kind} is not a kind the translator reads",
                    source=f"{resource.kind} {resource.display_name}",
                )
        return cls(
            service_entries=tuple(sorted(entries, key=_key)),
            workload_entries=tuple(sorted(workloads, key=_key)),
            virtual_services=tuple(sorted(routes, key=_key)),
            destination_rules=tuple(sorted(rules, key=_key)),
            peer_authentications=tuple(sorted(peer_authentications, key=_key)),
            authorization_policies=tuple(sorted(authorization_policies, key=_key)),
            telemetries=tuple(sorted(telemetries, key=_key)),
            tls=tls,
            access_log=access_log,
        )


@dataclass(frozen=True, slots=True)
class ProxyIdentity:
    """The proxy asking for config: its node and the workload it stands beside.

    `labels`, `address` and `ports` are the workload's, as its WorkloadEntry
    says (`ports`: service port name -> port on the workload address). The
    proxy's inbound side serves those ports and the ports of every service
    whose `workloadSelector` selects these labels in this namespace.
    """

    node_id: str
    workload_name: str
    namespace: str
    service_account: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    address: str = "127.0.0.1"
    ports: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_workload_entry(cls, node_id: str, entry: WorkloadEntry) -> ProxyIdentity:
        """The identity of the proxy beside the workload `entry` registers."""
        spec = entry.spec
        return cls(
            node_id=node_id,
            workload_name=entry.metadata.name,
            namespace=entry.metadata.namespace,
            service_account=spec.service_account or "default",
            labels=MappingProxyType(dict(spec.labels)),
            address=spec.address,
            ports=MappingProxyType(dict(spec.ports)),
        )


class CaptureMode(enum.StrEnum):
    """How application traffic reaches the proxy (DESIGN.md §3)."""

    EXPLICIT = "explicit"
    """The application uses HTTP_PROXY=http://<outbound address>:<outbound port>;
    peers reach the workload on its registered address and ports, where the
    proxy listens and forwards to the application on `app_address`."""
    TRANSPARENT = "transparent"
    """iptables sends everything to 0.0.0.0:15001 (outbound) and 0.0.0.0:15006
    (inbound) and the listeners recover the destination (`use_original_dst`):
    `trellis proxy` reads it with SO_ORIGINAL_DST and picks the inbound filter
    chain of the original port; Envoy does the same."""


@dataclass(frozen=True, slots=True)
class TranslateOptions:
    """Where the proxy listens and where the application is.

    `app_ports` maps a workload port to the port the application really
    listens on (explicit mode: the proxy owns the workload port); a port not
    listed is the same on both sides.
    """

    capture_mode: CaptureMode = CaptureMode.EXPLICIT
    outbound_address: str = "127.0.0.1"
    outbound_port: int = OUTBOUND_CAPTURE_PORT
    inbound_address: str | None = None
    """Explicit mode: the address the inbound listeners bind (default: the
    workload's address). Transparent mode: default 0.0.0.0."""
    inbound_port: int = INBOUND_CAPTURE_PORT
    """Transparent mode only: the one inbound capture port."""
    app_address: str = "127.0.0.1"
    app_ports: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("outbound_address", "inbound_address", "app_address"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ConfigError(f"{value!r} is not an IP address", path=name) from None
        ports = [("outbound_port", self.outbound_port), ("inbound_port", self.inbound_port)]
        ports += [(f"app_ports[{k}]", v) for k, v in self.app_ports.items()]
        for name, port in ports:
            if not 0 < port <= 65535:
                raise ConfigError(f"port must be 1-65535, got {port}", path=name)

    def app_port(self, port: int) -> int:
        """Where the application serves the workload's `port`."""
        return self.app_ports.get(port, port)
