"""Which ServiceEntry a host names, and which workloads back a service.

A read-only index over a set of resources, shared by `analyze` and by anyone
who needs Istio's host-resolution rules (DESIGN.md §2, `trellis.api.hosts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from trellis.api.destination_rule import DestinationRule
from trellis.api.hosts import candidates, host_matches, qualify
from trellis.api.service_entry import ServiceEntry, WorkloadEntry, WorkloadEntrySpec


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether `labels` carry every key/value of `selector` (an empty selector matches all)."""
    return all(labels.get(key) == value for key, value in selector.items())


def visible_from(entry: ServiceEntry, namespace: str) -> bool:
    """Whether `entry` is exported to `namespace` (`exportTo`: empty or `*` = everywhere)."""
    export_to = entry.spec.export_to
    if not export_to or "*" in export_to or namespace in export_to:
        return True
    return "." in export_to and entry.metadata.namespace == namespace


@dataclass(frozen=True, slots=True)
class ServiceIndex:
    """ServiceEntries by host, WorkloadEntries by namespace, DestinationRules by host."""

    service_entries: tuple[ServiceEntry, ...]
    workload_entries: tuple[WorkloadEntry, ...]
    destination_rules: tuple[DestinationRule, ...]
    # Lookups stay linear in what they find, not in the size of the mesh:
    # ServiceEntries by exact host (wildcard hosts apart), WorkloadEntries by
    # (namespace, label key, label value) and by (namespace, "", "").
    _by_host: Mapping[str, tuple[ServiceEntry, ...]] = field(init=False, repr=False)
    _wildcards: tuple[ServiceEntry, ...] = field(init=False, repr=False)
    _position: Mapping[int, int] = field(init=False, repr=False)  # id -> index in service_entries
    _by_label: Mapping[tuple[str, str, str], tuple[WorkloadEntry, ...]] = field(
        init=False, repr=False
    )

    def __post_init__(self) -> None:
        by_host: dict[str, list[ServiceEntry]] = {}
        wildcards: list[ServiceEntry] = []
        for entry in self.service_entries:
            hosts = self.service_hosts(entry)
            if any(host.startswith("*") for host in hosts):
                wildcards.append(entry)
            for host in dict.fromkeys(hosts):
                by_host.setdefault(host, []).append(entry)
        by_label: dict[tuple[str, str, str], list[WorkloadEntry]] = {}
        for workload in self.workload_entries:
            namespace = workload.metadata.namespace
            by_label.setdefault((namespace, "", ""), []).append(workload)
            for key, value in workload.spec.labels.items():
                by_label.setdefault((namespace, key, value), []).append(workload)
        object.__setattr__(self, "_by_host", {k: tuple(v) for k, v in by_host.items()})
        object.__setattr__(self, "_wildcards", tuple(wildcards))
        position = {id(entry): i for i, entry in enumerate(self.service_entries)}
        object.__setattr__(self, "_position", position)
        object.__setattr__(self, "_by_label", {k: tuple(v) for k, v in by_label.items()})

    @classmethod
    def build(cls, resources: Iterable[object]) -> ServiceIndex:
        """Index the ServiceEntries, WorkloadEntries and DestinationRules among `resources`."""
        items = list(resources)
        return cls(
            service_entries=tuple(item for item in items if isinstance(item, ServiceEntry)),
            workload_entries=tuple(item for item in items if isinstance(item, WorkloadEntry)),
            destination_rules=tuple(item for item in items if isinstance(item, DestinationRule)),
        )

    def service_hosts(self, entry: ServiceEntry) -> tuple[str, ...]:
        """The hosts of `entry`, short ones qualified in its namespace."""
        return tuple(qualify(host, entry.metadata.namespace) for host in entry.spec.hosts)

    def lookup(self, host: str, namespace: str) -> tuple[str, tuple[ServiceEntry, ...]]:
        """The service host that `host`, written in `namespace`, means, and its ServiceEntries.

        Tries `hosts.candidates` in order; a ServiceEntry matches a candidate
        exactly or through one of its wildcard hosts. Returns ("", ()) if none.
        """
        for candidate in candidates(host, namespace):
            pool = {id(e): e for e in (*self._by_host.get(candidate, ()), *self._wildcards)}
            found = tuple(
                entry
                for entry in sorted(pool.values(), key=lambda e: self._position[id(e)])
                if visible_from(entry, namespace)
                and any(host_matches(own, candidate) for own in self.service_hosts(entry))
            )
            if found:
                return candidate, found
        return "", ()

    def lookup_pattern(self, pattern: str, namespace: str) -> tuple[ServiceEntry, ...]:
        """ServiceEntries with a host covered by `pattern` (a DestinationRule host, maybe `*.x`)."""
        if not pattern.startswith("*"):
            return self.lookup(pattern, namespace)[1]
        return tuple(
            entry
            for entry in self.service_entries
            if visible_from(entry, namespace)
            and any(host_matches(pattern, own) for own in self.service_hosts(entry))
        )

    def endpoints(self, entry: ServiceEntry) -> tuple[WorkloadEntrySpec, ...]:
        """Inline `endpoints`, else the WorkloadEntries its `workloadSelector` selects."""
        if entry.spec.endpoints:
            return entry.spec.endpoints
        selector = entry.spec.workload_selector
        if selector is None:
            return ()
        key, value = min(selector.labels.items(), default=("", ""))
        return tuple(
            workload.spec
            for workload in self._by_label.get((entry.metadata.namespace, key, value), ())
            if labels_match(selector.labels, workload.spec.labels)
        )

    def destination_rules_for(self, host: str, namespace: str) -> tuple[DestinationRule, ...]:
        """DestinationRules whose host (read in their own namespace) covers service `host`.

        A rule in `namespace` comes first, as Istio prefers the client's namespace.
        """
        found = [
            rule
            for rule in self.destination_rules
            if any(
                host_matches(candidate, host)
                for candidate in candidates(rule.spec.host, rule.metadata.namespace)
            )
        ]
        found.sort(key=lambda rule: rule.metadata.namespace != namespace)
        return tuple(found)
