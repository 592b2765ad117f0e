"""Cross-resource checks, like `istioctl analyze`: references, conflicts, dead rules.

Each finding has Istio's code where Istio has the same check (IST0101
ReferencedResourceNotFound, IST0109, IST0112, IST0130, IST0173, IST0174) and a
Trellis code (TRL01xx) otherwise, a severity, the resource and field it is
about, and a one-line hint for the fix. `analyze` is pure: it looks only at the
resources it is given.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from trellis.api.destination_rule import DestinationRule
from trellis.api.hosts import qualify
from trellis.api.meta import Resource, ResourceKey
from trellis.api.service_entry import Resolution, ServiceEntry
from trellis.api.services import ServiceIndex, labels_match
from trellis.api.virtual_service import Destination, VirtualService


class Severity(enum.StrEnum):
    """Istio's analysis levels."""

    ERROR = "Error"
    WARNING = "Warning"
    INFO = "Info"


CODES = MappingProxyType(
    {
        "IST0101": "ReferencedResourceNotFound",
        "IST0109": "ConflictingMeshGatewayVirtualServiceHosts",
        "IST0112": "VirtualServiceDestinationPortSelectorRequired",
        "IST0130": "VirtualServiceUnreachableRule",
        "IST0173": "DestinationRuleSubsetNotSelectPods",
        "IST0174": "UnknownDestinationRuleHost",
        "TRL0101": "DestinationPortNotFound",
        "TRL0102": "ServiceHasNoEndpoints",
        "TRL0103": "ConflictingServiceEntryHosts",
        "TRL0104": "ConflictingDestinationRules",
        "TRL0201": "UnsupportedByProxy",
    }
)
"""Finding code -> name."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem `analyze` found."""

    code: str
    severity: Severity
    resource: ResourceKey
    path: str
    message: str
    hint: str

    @property
    def name(self) -> str:
        """The code's name, e.g. `ReferencedResourceNotFound`."""
        return CODES[self.code]

    def __str__(self) -> str:
        kind, namespace, name = self.resource
        where = f"{self.path}: " if self.path else ""
        return (
            f"{self.severity.value} [{self.code}] ({kind} {namespace}/{name}) "
            f"{where}{self.message} (fix: {self.hint})"
        )


def _finding(
    code: str, severity: Severity, resource: Resource, path: str, message: str, hint: str
) -> Finding:
    return Finding(code, severity, resource.key, path, message, hint)


def analyze(resources: Sequence[Resource]) -> list[Finding]:
    """Every finding for `resources`, errors first, then by resource and path."""
    index = ServiceIndex.build(resources)
    findings: list[Finding] = []
    virtual_services = [item for item in resources if isinstance(item, VirtualService)]
    for service in virtual_services:
        findings.extend(_destinations(service, index))
        findings.extend(_unreachable_rules(service))
    findings.extend(_conflicting_hosts(virtual_services, index))
    for rule in index.destination_rules:
        findings.extend(_destination_rule(rule, index))
    findings.extend(_conflicting_rules(index))
    findings.extend(_service_entries(index))
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    findings.sort(key=lambda item: (order[item.severity], item.resource, item.path, item.code))
    return findings


def _route_destinations(service: VirtualService) -> Iterator[tuple[str, Destination]]:
    for i, http in enumerate(service.spec.http):
        for j, route in enumerate(http.route):
            yield f"spec.http[{i}].route[{j}].destination", route.destination
    for i, tcp in enumerate(service.spec.tcp):
        for j, destination in enumerate(tcp.route):
            yield f"spec.tcp[{i}].route[{j}].destination", destination.destination


def _destinations(service: VirtualService, index: ServiceIndex) -> Iterator[Finding]:
    namespace = service.metadata.namespace
    for path, destination in _route_destinations(service):
        host, entries = index.lookup(destination.host, namespace)
        if not entries:
            yield _finding(
                "IST0101",
                Severity.ERROR,
                service,
                f"{path}.host",
                f'Referenced host not found: "{destination.host}"',
                f"create a ServiceEntry with host {destination.host!r} or correct the host",
            )
            continue
        yield from _destination_port(service, path, destination, entries)
        if destination.subset:
            rules = index.destination_rules_for(host, namespace)
            if not any(rule.spec.subset(destination.subset) for rule in rules):
                yield _finding(
                    "IST0101",
                    Severity.ERROR,
                    service,
                    f"{path}.subset",
                    "Referenced host+subset in destinationrule not found: "
                    f'"{destination.host}+{destination.subset}"',
                    f"define subset {destination.subset!r} in a DestinationRule for host {host}",
                )


def _destination_port(
    service: VirtualService, path: str, destination: Destination, entries: Sequence[ServiceEntry]
) -> Iterator[Finding]:
    ports = sorted({port.number for entry in entries for port in entry.spec.ports})
    if destination.port is None:
        if len(ports) > 1:
            yield _finding(
                "IST0112",
                Severity.ERROR,
                service,
                path,
                f'This VirtualService routes to a service "{destination.host}" that exposes '
                f"multiple ports {ports}; a port is required to disambiguate",
                "set destination.port.number to one of " + ", ".join(map(str, ports)),
            )
    elif destination.port.number not in ports:
        yield _finding(
            "TRL0101",
            Severity.ERROR,
            service,
            f"{path}.port.number",
            f"service {destination.host} has no port {destination.port.number} "
            f"(its ports: {', '.join(map(str, ports))})",
            "use one of the service's ports or add the port to its ServiceEntry",
        )


def _unreachable_rules(service: VirtualService) -> Iterator[Finding]:
    catch_all: int | None = None
    seen: dict[str, int] = {}
    for i, http in enumerate(service.spec.http):
        if catch_all is not None:
            yield _finding(
                "IST0130",
                Severity.WARNING,
                service,
                f"spec.http[{i}]",
                f"VirtualService rule #{i} not used (rule #{catch_all} matches all requests)",
                f"move rule #{i} before rule #{catch_all} or add a match to rule #{catch_all}",
            )
            continue
        if not http.match:
            catch_all = i
            continue
        keys = [match.model_dump_json(exclude={"name"}) for match in http.match]
        if all(key in seen for key in keys):
            earlier = max(seen[key] for key in keys)
            yield _finding(
                "IST0130",
                Severity.WARNING,
                service,
                f"spec.http[{i}]",
                f"VirtualService rule #{i} not used (its matches all come earlier, "
                f"by rule #{earlier})",
                f"remove rule #{i} or change its match",
            )
        for key in keys:
            seen.setdefault(key, i)


def _conflicting_hosts(
    services: Sequence[VirtualService], index: ServiceIndex
) -> Iterator[Finding]:
    owners: dict[str, list[VirtualService]] = {}
    for service in services:
        for host in service.spec.hosts:
            resolved, _ = index.lookup(host, service.metadata.namespace)
            key = resolved or qualify(host, service.metadata.namespace)
            owners.setdefault(key, [])
            if service not in owners[key]:
                owners[key].append(service)
    for host, owning in owners.items():
        if len(owning) < 2:
            continue
        names = ",".join(item.display_name for item in owning)
        for service in owning:
            yield _finding(
                "IST0109",
                Severity.ERROR,
                service,
                "spec.hosts",
                f"The VirtualServices {names} define the same host {host}",
                "merge the conflicting VirtualServices into a single resource",
            )


def _destination_rule(rule: DestinationRule, index: ServiceIndex) -> Iterator[Finding]:
    entries = index.lookup_pattern(rule.spec.host, rule.metadata.namespace)
    if not entries:
        yield _finding(
            "IST0174",
            Severity.WARNING,
            rule,
            "spec.host",
            f"The host {rule.spec.host} defined in the DestinationRule does not match any "
            "services in the mesh",
            "correct the host or create a ServiceEntry for it",
        )
        return
    endpoints = [endpoint for entry in entries for endpoint in index.endpoints(entry)]
    by_address = all(
        not entry.spec.endpoints
        and entry.spec.workload_selector is None
        and entry.spec.resolution is not Resolution.STATIC
        for entry in entries
    )
    if by_address:
        return  # endpoints come from DNS or the original destination: no labels to select
    for i, subset in enumerate(rule.spec.subsets):
        if not any(labels_match(subset.labels, endpoint.labels) for endpoint in endpoints):
            labels = ",".join(f"{key}={value}" for key, value in sorted(subset.labels.items()))
            yield _finding(
                "IST0173",
                Severity.WARNING,
                rule,
                f"spec.subsets[{i}]",
                f"The Subset {subset.name} defined in the DestinationRule does not select any "
                f"workloads (labels {labels or 'none'})",
                "correct the subset labels or register workloads that carry them",
            )


def _conflicting_rules(index: ServiceIndex) -> Iterator[Finding]:
    by_host: dict[tuple[str, str], list[DestinationRule]] = {}
    for rule in index.destination_rules:
        host, _ = index.lookup(rule.spec.host, rule.metadata.namespace)
        key = (rule.metadata.namespace, host or rule.spec.host)
        by_host.setdefault(key, []).append(rule)
    for (_, host), rules in by_host.items():
        if len(rules) < 2:
            continue
        names = ",".join(rule.display_name for rule in rules)
        for rule in rules:
            yield _finding(
                "TRL0104",
                Severity.WARNING,
                rule,
                "spec.host",
                f"The DestinationRules {names} apply to the same host {host}",
                "merge them into one DestinationRule",
            )


def _service_entries(index: ServiceIndex) -> Iterator[Finding]:
    owners: dict[tuple[str, str], list[ServiceEntry]] = {}
    for entry in index.service_entries:
        for host in index.service_hosts(entry):
            owners.setdefault((entry.metadata.namespace, host), []).append(entry)
        needs_endpoints = entry.spec.resolution is Resolution.STATIC
        if needs_endpoints and not index.endpoints(entry):
            selector = entry.spec.workload_selector
            detail = (
                "its workloadSelector selects no WorkloadEntry"
                if selector is not None
                else "it has no endpoints and no workloadSelector"
            )
            yield _finding(
                "TRL0102",
                Severity.INFO if selector is not None else Severity.WARNING,
                entry,
                "spec.workloadSelector" if selector is not None else "spec.endpoints",
                f"service {', '.join(entry.spec.hosts)} has no endpoints: {detail}",
                "start its workloads (trellis run) or correct the selector labels",
            )
    for (_, host), entries in owners.items():
        if len(entries) < 2:
            continue
        names = ",".join(entry.display_name for entry in entries)
        for entry in entries:
            yield _finding(
                "TRL0103",
                Severity.WARNING,
                entry,
                "spec.hosts",
                f"The ServiceEntries {names} define the same host {host}",
                "keep one ServiceEntry per host",
            )
