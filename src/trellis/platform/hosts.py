"""A workload namespace's hosts file: service names -> the control plane's virtual IPs.

In transparent capture the launcher gives each workload's network namespace
an `/etc/hosts` in which `payment`, `payment.shop` and
`payment.shop.svc.cluster.local` name the service's virtual IP; the
application's connection to it is captured by the sidecar, which routes by
`Host`. The addresses come from `GET /api/v1/service-addresses?namespace=NS`
(`ControlPlaneApi.service_addresses`); this module reads that answer and
renders the file, without I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trellis.platform.spec import LaunchError

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class ServicePortInfo:
    """A port of a service: clients connect to the virtual IP on `number`."""

    number: int
    name: str
    protocol: str


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """One service host's virtual IP and the names for it (see the REST API docs).

    `names` resolve from every namespace that sees the service; `short_names`
    only from `namespace`, the service's own.
    """

    namespace: str
    service_entry: str
    host: str
    address: str
    ports: tuple[ServicePortInfo, ...]
    names: tuple[str, ...]
    short_names: tuple[str, ...]

    def names_from(self, namespace: str) -> tuple[str, ...]:
        """The names that resolve to this address for a workload in `namespace`."""
        if namespace == self.namespace:
            return (*self.names, *self.short_names)
        return self.names


@dataclass(frozen=True, slots=True)
class ServiceAddresses:
    """The answer of `GET /api/v1/service-addresses`."""

    vip_range: str
    namespace: str | None
    items: tuple[ServiceAddress, ...]

    @classmethod
    def from_json(cls, answer: Mapping[str, Any]) -> ServiceAddresses:
        """Read the API's answer; LaunchError naming the field when it is malformed."""
        raw_items = answer.get("items")
        if not isinstance(raw_items, list):
            raise LaunchError("service addresses: items: expected a list")
        items = tuple(_item(raw, f"items[{i}]") for i, raw in enumerate(raw_items))
        namespace = answer.get("namespace")
        return cls(
            vip_range=str(answer.get("range", "")),
            namespace=namespace if isinstance(namespace, str) else None,
            items=items,
        )


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise LaunchError(f"service addresses: {where}.{key}: expected a non-empty string")
    return value


def _names(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise LaunchError(f"service addresses: {where}.{key}: expected a list of names")
    for i, name in enumerate(value):
        if not isinstance(name, str) or len(name) > 253 or not _NAME.match(name):
            raise LaunchError(f"service addresses: {where}.{key}[{i}]: {name!r} is not a DNS name")
    return tuple(value)


def _ports(raw: Mapping[str, Any], where: str) -> tuple[ServicePortInfo, ...]:
    value = raw.get("ports", [])
    if not isinstance(value, list):
        raise LaunchError(f"service addresses: {where}.ports: expected a list")
    ports = []
    for i, port in enumerate(value):
        here = f"{where}.ports[{i}]"
        number = port.get("number") if isinstance(port, dict) else None
        if not isinstance(number, int) or not 1 <= number <= 65535:
            raise LaunchError(f"service addresses: {here}.number: expected a port number")
        ports.append(
            ServicePortInfo(number, _text(port, "name", here), _text(port, "protocol", here))
        )
    return tuple(ports)


def _item(raw: object, where: str) -> ServiceAddress:
    if not isinstance(raw, dict):
        raise LaunchError(f"service addresses: {where}: expected an object")
    address = _text(raw, "address", where)
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise LaunchError(
            f"service addresses: {where}.address: {address!r} is not an IPv4 address"
        ) from None
    return ServiceAddress(
        namespace=_text(raw, "namespace", where),
        service_entry=_text(raw, "serviceEntry", where),
        host=_text(raw, "host", where),
        address=address,
        ports=_ports(raw, where),
        names=_names(raw, "names", where),
        short_names=_names(raw, "shortNames", where),
    )


def render_hosts(items: Sequence[ServiceAddress], namespace: str) -> str:
    """An `/etc/hosts` text for a workload in `namespace`.

    A comment header, then one line per virtual IP with
    every name that resolves to it from `namespace`. A name is written once
    (the first address listed keeps it; `localhost` is never reassigned), so
    the resolver's answer does not depend on its reading order. The loopback
    lines come first, from `netns_rules.hosts_file`.
    """
    by_address: dict[str, list[str]] = {}
    seen = {"localhost", "ip6-localhost", "ip6-loopback"}
    for item in items:
        names = by_address.setdefault(item.address, [])
        for name in item.names_from(namespace):
            if name not in seen:
                seen.add(name)
                names.append(name)
    lines = [
        f"# Written by trellis for workloads in namespace {namespace}: service names and",
        "# the virtual IPs the control plane gave them. Changes here are overwritten.",
        *(f"{address}\t{' '.join(names)}" for address, names in by_address.items() if names),
    ]
    return "\n".join(lines) + "\n"
