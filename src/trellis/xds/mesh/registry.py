"""The service registry as one proxy sees it: services, their endpoints and the rules for them.

Lookups follow Istio's sidecar rules, simplified where Trellis has no
`Sidecar` resource:
- a ServiceEntry is visible unless its `exportTo` hides it from the proxy's
  namespace; when two define the same host, the one in the proxy's namespace
  wins, then the first by namespace and name;
- the DestinationRule of a host is looked up in the proxy's namespace, then
  the service's, then the root namespace (`trellis-system`, or its alias
  `istio-system`); within a namespace an exact host beats a wildcard, and a
  longer wildcard beats a shorter one (ties: by name);
- one VirtualService applies per host (Istio does not merge them for
  sidecars): exact host first, then the most specific wildcard, then the
  proxy's namespace, the service's, and the rest by namespace and name.
Short names in hosts are read in the namespace of the resource that holds
them (`trellis.api.hosts.candidates`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from trellis.api.hosts import candidates, host_matches, is_ip, qualify
from trellis.api.meta import Resource
from trellis.api.networking import (
    HTTP_PROTOCOLS,
    DestinationRule,
    Resolution,
    ServiceEntry,
    ServicePort,
    VirtualService,
    WorkloadEntry,
    WorkloadEntrySpec,
)
from trellis.api.services import labels_match, visible_from
from trellis.xds.mesh.errors import unsupported
from trellis.xds.mesh.model import MeshConfig, ProxyIdentity

ROOT_NAMESPACES = ("trellis-system", "istio-system")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Service:
    """One host of a visible ServiceEntry, with its ports sorted by number."""

    host: str
    namespace: str
    entry: ServiceEntry
    ports: tuple[ServicePort, ...]

    def port(self, number: int) -> ServicePort | None:
        return next((port for port in self.ports if port.number == number), None)


@dataclass(frozen=True, slots=True)
class Instance:
    """One endpoint of a service port; `namespace` and `service_account` are its workload's."""

    address: str
    port: int
    weight: int
    labels: tuple[tuple[str, str], ...]
    namespace: str = ""
    service_account: str = "default"

    def has_labels(self, wanted: dict[str, str]) -> bool:
        return labels_match(wanted, dict(self.labels))


@dataclass(frozen=True, slots=True)
class InboundPort:
    """A port the proxy's own workload serves, whether it carries HTTP, and the hosts of
    the services that reach the workload on it (qualified, sorted)."""

    port: int
    http: bool
    services: tuple[str, ...] = ()


def _namespace_rank(namespace: str, proxy_ns: str, service_ns: str) -> int | None:
    """0 for the proxy's namespace, 1 for the service's, 2 for the root; None otherwise."""
    if namespace == proxy_ns:
        return 0
    if namespace == service_ns:
        return 1
    if namespace in ROOT_NAMESPACES:
        return 2
    return None


def _specificity(patterns: Iterable[str], host: str) -> int | None:
    """How closely the best of `patterns` matches `host` (higher is closer), or None."""
    best: int | None = None
    for pattern in patterns:
        if not host_matches(pattern, host):
            continue
        score = 10_000 if pattern == host else len(pattern)
        best = score if best is None else max(best, score)
    return best


class _HostIndex(Generic[T]):
    """Rules by the host patterns they name: exact ones in a dict, wildcards in a list."""

    def __init__(self, items: Iterable[tuple[Sequence[str], T]]) -> None:
        self._exact: dict[str, list[tuple[Sequence[str], T]]] = {}
        self._wildcards: list[tuple[Sequence[str], T]] = []
        for patterns, item in items:
            entry = (patterns, item)
            if any(pattern.startswith("*") for pattern in patterns):
                self._wildcards.append(entry)
            for pattern in dict.fromkeys(patterns):
                if not pattern.startswith("*"):
                    self._exact.setdefault(pattern, []).append(entry)

    def covering(self, host: str) -> list[tuple[Sequence[str], T]]:
        """The items with a pattern that may cover `host` (exact first, then wildcards)."""
        return [*self._exact.get(host, ()), *self._wildcards]


class Registry:
    """Indexes over one `MeshConfig` as proxies of one namespace (and labels) see it.

    Never changed after construction but for a memo of `instances`; shared by
    the proxies it was built for.
    """

    def __init__(self, config: MeshConfig, namespace: str, labels: Mapping[str, str]) -> None:
        self.config = config
        self.namespace = namespace
        self.labels = labels
        chosen: dict[str, Service] = {}
        for entry in config.service_entries:
            if not visible_from(entry, namespace):
                continue
            ports = tuple(sorted(entry.spec.ports, key=lambda port: port.number))
            for written in entry.spec.hosts:
                host = qualify(written, entry.metadata.namespace)
                current = chosen.get(host)
                mine = entry.metadata.namespace == namespace
                if current is None or (mine and current.namespace != namespace):
                    chosen[host] = Service(host, entry.metadata.namespace, entry, ports)
        self.services: tuple[Service, ...] = tuple(chosen[host] for host in sorted(chosen))
        self._by_host = chosen
        self._rules = _HostIndex(
            (candidates(rule.spec.host, rule.metadata.namespace), rule)
            for rule in config.destination_rules
        )
        self._routes = _HostIndex(
            (
                [c for host in vs.spec.hosts for c in candidates(host, vs.metadata.namespace)],
                vs,
            )
            for vs in config.virtual_services
            if vs.spec.http
        )
        self._instances: dict[tuple[str, int], tuple[Instance, ...]] = {}
        # (namespace, label, value) -> the WorkloadEntries carrying it; ("ns", "", "") -> all
        self._workloads: dict[tuple[str, str, str], list[WorkloadEntry]] = {}
        for workload in config.workload_entries:
            ns = workload.metadata.namespace
            self._workloads.setdefault((ns, "", ""), []).append(workload)
            for label in workload.spec.labels.items():
                self._workloads.setdefault((ns, *label), []).append(workload)

    # --- services ---------------------------------------------------------------

    def service(self, host: str) -> Service | None:
        return self._by_host.get(host)

    def resolve(self, host: str, namespace: str) -> tuple[str, Service | None]:
        """The service a host written in `namespace` refers to (FQDN, service or None)."""
        options = candidates(host, namespace)
        for option in options:
            found = self._by_host.get(option)
            if found is not None:
                return option, found
        return options[0], None

    # --- rules ------------------------------------------------------------------

    def destination_rule(self, service: Service) -> DestinationRule | None:
        best: tuple[int, int, str] | None = None
        found: DestinationRule | None = None
        for patterns, rule in self._rules.covering(service.host):
            ns = rule.metadata.namespace
            rank = _namespace_rank(ns, self.namespace, service.namespace)
            score = _specificity(patterns, service.host)
            if rank is None or score is None:
                continue
            key = (rank, -score, rule.metadata.name)
            if best is None or key < best:
                best, found = key, rule
        return found

    def virtual_service(self, service: Service) -> VirtualService | None:
        best: tuple[int, int, str, str] | None = None
        found: VirtualService | None = None
        for patterns, vs in self._routes.covering(service.host):
            ns = vs.metadata.namespace
            score = _specificity(patterns, service.host)
            if score is None:
                continue
            rank = _namespace_rank(ns, self.namespace, service.namespace)
            key = (-score, 3 if rank is None else rank, ns, vs.metadata.name)
            if best is None or key < best:
                best, found = key, vs
        return found

    # --- endpoints --------------------------------------------------------------

    def instances(self, service: Service, port: ServicePort) -> tuple[Instance, ...]:
        """The endpoints of one service port, sorted by address and port."""
        key = (service.host, port.number)
        found = self._instances.get(key)
        if found is None:
            found = self._instances[key] = self._find_instances(service, port)
        return found

    def _find_instances(self, service: Service, port: ServicePort) -> tuple[Instance, ...]:
        entry = service.entry
        index = entry.spec.ports.index(port)
        found: list[Instance] = []
        if entry.spec.workload_selector is not None:
            wanted = entry.spec.workload_selector.labels
            for workload in self._selected(entry.metadata.namespace, wanted):
                found.append(_instance(workload.spec, port, workload, "spec.address"))
        else:
            for i, spec in enumerate(entry.spec.endpoints):
                found.append(_instance(spec, port, entry, f"spec.endpoints[{i}].address"))
        dns = entry.spec.resolution is Resolution.DNS
        if dns and not entry.spec.endpoints and entry.spec.workload_selector is None:
            raise unsupported(
                entry,
                f"spec.ports[{index}]",
                "resolution DNS without endpoints (the hosts resolved by the proxy) is not "
                "supported by the Trellis proxy yet; list endpoints with IP addresses",
            )
        return tuple(sorted(found, key=lambda item: (item.address, item.port)))

    def _selected(self, namespace: str, selector: dict[str, str]) -> list[WorkloadEntry]:
        keys = [(namespace, *label) for label in selector.items()] or [(namespace, "", "")]
        smallest = min((self._workloads.get(key, []) for key in keys), key=len)
        return [item for item in smallest if labels_match(selector, item.spec.labels)]


def inbound_ports(entries: Iterable[ServiceEntry], proxy: ProxyIdentity) -> tuple[InboundPort, ...]:
    """Ports of the proxy's workload: its WorkloadEntry's and those of the `entries` selecting it.

    A port is HTTP when a service port on it is, or (a WorkloadEntry port with
    no service) when its name says so (`http`, `http-*`, `grpc-*`, ...).
    """
    http: dict[int, bool] = {
        number: name.split("-", 1)[0].upper() in HTTP_PROTOCOLS
        for name, number in proxy.ports.items()
    }
    services: dict[int, set[str]] = {}
    for entry in entries:
        selector = entry.spec.workload_selector
        namespace = entry.metadata.namespace
        if namespace != proxy.namespace or selector is None:
            continue
        if not labels_match(selector.labels, proxy.labels):
            continue
        hosts = {qualify(host, namespace) for host in entry.spec.hosts if "*" not in host}
        for port in entry.spec.ports:
            number = proxy.ports.get(port.name, port.target_port or port.number)
            http[number] = http.get(number, False) or port.is_http
            services.setdefault(number, set()).update(hosts)
    return tuple(
        InboundPort(number, http[number], tuple(sorted(services.get(number, ()))))
        for number in sorted(http)
    )


def _instance(spec: WorkloadEntrySpec, port: ServicePort, owner: Resource, path: str) -> Instance:
    if not is_ip(spec.address):
        raise unsupported(
            owner,
            path,
            f"endpoint address {spec.address!r} is not an IP address; the Trellis proxy "
            "does not resolve DNS names or use unix sockets yet",
        )
    return Instance(
        address=spec.address,
        port=spec.port_for(port),
        weight=spec.weight or 1,
        labels=tuple(sorted(spec.labels.items())),
        namespace=owner.metadata.namespace,
        service_account=spec.service_account or "default",
    )


def subset_instances(instances: Sequence[Instance], labels: dict[str, str]) -> tuple[Instance, ...]:
    """The instances carrying all of a subset's labels."""
    return tuple(item for item in instances if item.has_labels(labels))
