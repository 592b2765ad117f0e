"""Which service hosts get a virtual IP, and the names that resolve to it from a namespace.

A host of a ServiceEntry gets an address (`trellis.xds.mesh.vips`) unless:
- it is a wildcard (`*.example.com`): no single name to resolve;
- its ServiceEntry lists `addresses` itself;
- its ServiceEntry has `resolution: NONE` and no `workloadSelector`: such a
  service is reached at whatever address its name really has (Istio forwards
  it to the original destination), so a virtual IP would hide that address.
  Istio does not allocate for NONE either.

The names are those the sidecar's virtual hosts answer to
(`trellis.xds.mesh.routes.service_names`): the FQDN, `<name>.<namespace>` and
`<name>.<namespace>.svc` from any namespace the service is exported to, and
the bare `<name>` only from the service's own namespace (DESIGN.md §2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trellis.api.hosts import qualify
from trellis.api.networking import Resolution, ServiceEntry, ServicePort
from trellis.api.services import visible_from
from trellis.xds.mesh.routes import service_names
from trellis.xds.mesh.vips import VipTable


def wants_address(entry: ServiceEntry) -> bool:
    """Whether the hosts of `entry` get virtual IPs (see the module's rules)."""
    spec = entry.spec
    if spec.addresses:
        return False
    return spec.resolution is not Resolution.NONE or spec.workload_selector is not None


def address_hosts(entry: ServiceEntry) -> tuple[str, ...]:
    """The hosts of `entry` that get a virtual IP, qualified in its namespace."""
    if not wants_address(entry):
        return ()
    namespace = entry.metadata.namespace
    qualified = (qualify(host, namespace) for host in entry.spec.hosts)
    return tuple(dict.fromkeys(host for host in qualified if not host.startswith("*")))


def hosts_wanting_addresses(entries: Iterable[ServiceEntry]) -> set[str]:
    """Every host of `entries` that gets a virtual IP."""
    return {host for entry in entries for host in address_hosts(entry)}


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """One service host and its virtual IP.

    `names` resolve to `address` from every namespace the service is exported
    to (as seen by the list's namespace, when it has one); `short_names` only
    from `namespace`, the ServiceEntry's.
    """

    namespace: str
    service_entry: str
    host: str
    address: str
    ports: tuple[ServicePort, ...]
    names: tuple[str, ...]
    short_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceAddressList:
    """The virtual IPs of every service, or of those visible from `namespace`."""

    vip_range: str
    namespace: str | None
    items: tuple[ServiceAddress, ...]


def service_addresses(
    entries: Iterable[ServiceEntry], table: VipTable, namespace: str | None, vip_range: str
) -> ServiceAddressList:
    """The services with a virtual IP in `table`, sorted by host.

    With `namespace`: only services visible from it; of two ServiceEntries
    defining one host, the one in `namespace` (else the first by namespace and
    name) is listed, as the sidecar's registry chooses; and a name is given
    to one address only: every host's own FQDN first, then the other names in
    host order. Without: every (ServiceEntry, host) pair.
    """
    ordered = sorted(entries, key=lambda e: (e.metadata.namespace, e.metadata.name))
    if namespace is not None:
        ordered = [entry for entry in ordered if visible_from(entry, namespace)]
    chosen: dict[tuple[str, str], ServiceEntry] = {}
    for entry in ordered:
        for host in address_hosts(entry):
            key = (host, "" if namespace is not None else entry.metadata.namespace)
            current = chosen.get(key)
            mine = namespace is not None and entry.metadata.namespace == namespace
            if current is None or (mine and current.metadata.namespace != namespace):
                chosen[key] = entry
    taken = {host for host, _ in chosen}
    items: list[ServiceAddress] = []
    for (host, _), entry in sorted(chosen.items()):
        address = table.address(host)
        if address is None:
            continue
        own = entry.metadata.namespace
        viewer = namespace if namespace is not None else own
        names: list[str] = []
        short: list[str] = []
        for name in service_names(host, viewer):
            if name != host and namespace is not None and name in taken:
                continue
            (short if "." not in name and name != host else names).append(name)
            if namespace is not None:
                taken.add(name)
        items.append(
            ServiceAddress(
                namespace=own,
                service_entry=entry.metadata.name,
                host=host,
                address=str(address),
                ports=tuple(sorted(entry.spec.ports, key=lambda port: port.number)),
                names=tuple(names),
                short_names=tuple(short),
            )
        )
    return ServiceAddressList(vip_range, namespace, tuple(items))
