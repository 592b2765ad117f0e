"""Transparent capture's network, as data: settings, names, addresses and iptables rules.

`trellis run --capture transparent` puts each workload in a network namespace
of its own, on a bridge of the host (`netns.py` does that). What it creates is
decided here, without I/O, so that it can be read and tested on its own:

- `NetworkSettings`: the bridge, its private IPv4 subnet (the bridge holds
  the first address, the gateway), the proxy's group id and capture ports;
- the names: namespace `<prefix>-<id>`, host end of the veth `<prefix><id>`
  (at most 15 characters, the kernel's limit), the namespace end `eth0`;
- `capture_rules`: the namespace's nat table, modelled on Istio's init step
  (`istio-iptables` in REDIRECT mode), for one `iptables-restore`;
- `forward_rules`: what lets the bridge's traffic through the host's FORWARD
  chain when `br_netfilter` sends bridged frames there and its policy drops;
- `hosts_file`: the namespace's `/etc/hosts`, where service names get their
  virtual IPs.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trellis.core.sidecar_ports import (
    INBOUND_CAPTURE_PORT,
    OUTBOUND_CAPTURE_PORT,
    PROXY_GID,
    SIDECAR_PORTS,
)
from trellis.platform.spec import LaunchError

DEFAULT_BRIDGE = "trellis0"
DEFAULT_SUBNET = "10.213.0.0/24"
"""A /24 unlikely to clash: Docker takes 172.17+, libvirt 192.168.122, Kubernetes 10.96/10.244."""
DEFAULT_STATE_DIR = Path("/run/trellis/net")
DEFAULT_PREFIX = "trellis"
OUTBOUND_PORT = OUTBOUND_CAPTURE_PORT
INBOUND_PORT = INBOUND_CAPTURE_PORT
ID_LENGTH = 6
IFNAME_MAX = 15
"""The kernel's limit on interface names (IFNAMSIZ - 1)."""
INNER_IFNAME = "eth0"
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"
"""The source Envoy binds when it passes inbound traffic on to the application (Istio)."""
MIN_PREFIX_LENGTH = 16
MAX_PREFIX_LENGTH = 29

ENV_BRIDGE = "TRELLIS_NET_BRIDGE"
ENV_SUBNET = "TRELLIS_NET_SUBNET"
ENV_STATE_DIR = "TRELLIS_NET_STATE_DIR"
ENV_PREFIX = "TRELLIS_NET_PREFIX"

_ENVIRONMENT = {
    "bridge": ENV_BRIDGE,
    "subnet": ENV_SUBNET,
    "state_dir": ENV_STATE_DIR,
    "prefix": ENV_PREFIX,
}

CHAIN_INBOUND = "TRELLIS_INBOUND"
CHAIN_IN_REDIRECT = "TRELLIS_IN_REDIRECT"
CHAIN_OUTPUT = "TRELLIS_OUTPUT"
CHAIN_REDIRECT = "TRELLIS_REDIRECT"
FORWARD_CHAIN_PREFIX = "TRELLIS-FWD-"

_BRIDGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class NetworkError(LaunchError):
    """Transparent capture's network cannot be set up, used or removed; the message says why."""


def _check_port(port: int, name: str) -> None:
    if not 0 < port <= 65535:
        raise NetworkError(f"{name}: port must be 1-65535, got {port}")


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """Where workload namespaces go and how their traffic is captured."""

    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    """The bridge's IPv4 network: the gateway is its first address, workloads get the rest."""
    proxy_gid: int = PROXY_GID
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT
    exclude_inbound_ports: tuple[int, ...] = ()
    """Ports reached directly, besides the sidecar's own (`SIDECAR_PORTS`)."""
    exclude_outbound_ports: tuple[int, ...] = ()
    """Destination ports the application reaches without its sidecar."""
    state_dir: Path = DEFAULT_STATE_DIR
    """Records of the live workload networks and the lock that serialises changes."""
    prefix: str = DEFAULT_PREFIX
    """Names of namespaces (`<prefix>-<id>`) and host veths (`<prefix><id>`) this owns."""

    def __post_init__(self) -> None:
        if not _BRIDGE_NAME.match(self.bridge):
            raise NetworkError(
                f"bridge: {self.bridge!r} is not an interface name (1-15 letters, digits, "
                "'-' or '_')"
            )
        if not _PREFIX.match(self.prefix):
            raise NetworkError(
                f"prefix: {self.prefix!r} must be 1-8 lower-case letters or digits, "
                "starting with a letter"
            )
        network = self.network  # validates
        if not MIN_PREFIX_LENGTH <= network.prefixlen <= MAX_PREFIX_LENGTH:
            raise NetworkError(
                f"subnet: {self.subnet} must be a /{MIN_PREFIX_LENGTH} to /{MAX_PREFIX_LENGTH}"
            )
        if not network.is_private or network.is_loopback:
            raise NetworkError(f"subnet: {self.subnet} is not a private IPv4 range")
        if not 0 <= self.proxy_gid < 2**32 - 1:
            raise NetworkError(f"proxy_gid: {self.proxy_gid} is not a group id")
        _check_port(self.outbound_port, "outbound_port")
        _check_port(self.inbound_port, "inbound_port")
        for port in self.exclude_inbound_ports:
            _check_port(port, "exclude_inbound_ports")
        for port in self.exclude_outbound_ports:
            _check_port(port, "exclude_outbound_ports")
        if self.outbound_port == self.inbound_port:
            raise NetworkError("outbound_port and inbound_port must differ")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **overrides: Any) -> NetworkSettings:
        """Settings from `TRELLIS_NET_BRIDGE`, `TRELLIS_NET_SUBNET`, `TRELLIS_NET_STATE_DIR`,
        `TRELLIS_NET_PREFIX` (then `overrides`); an error names the variable that was wrong.
        A state directory of its own needs a prefix of its own (see `netns.remove_stale`)."""
        values: dict[str, Any] = {
            name: environ[variable]
            for name, variable in _ENVIRONMENT.items()
            if environ.get(variable)
        }
        if "state_dir" in values:
            values["state_dir"] = Path(values["state_dir"])
        values.update(overrides)
        try:
            return cls(**values)
        except NetworkError as error:
            field_name = str(error).partition(":")[0]
            if field_name in _ENVIRONMENT and field_name in values and field_name not in overrides:
                raise NetworkError(f"{_ENVIRONMENT[field_name]}: {error}") from None
            raise

    @property
    def network(self) -> ipaddress.IPv4Network:
        try:
            return ipaddress.IPv4Network(self.subnet, strict=True)
        except ValueError as error:
            raise NetworkError(
                f"subnet: {self.subnet!r} is not an IPv4 network ({error})"
            ) from None

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's own address, the namespaces' default route."""
        return self.network.network_address + 1

    @property
    def forward_chain(self) -> str:
        return FORWARD_CHAIN_PREFIX + self.bridge

    def namespace_name(self, network_id: str) -> str:
        return f"{self.prefix}-{network_id}"

    def veth_name(self, network_id: str) -> str:
        name = f"{self.prefix}{network_id}"
        assert len(name) <= IFNAME_MAX
        return name

    def owns_namespace(self, name: str) -> bool:
        """Whether `name` has the form of this prefix's namespaces."""
        return re.fullmatch(rf"{self.prefix}-[0-9a-f]{{{ID_LENGTH}}}", name) is not None

    def owns_veth(self, name: str) -> bool:
        return re.fullmatch(rf"{self.prefix}[0-9a-f]{{{ID_LENGTH}}}", name) is not None


def free_address(
    network: ipaddress.IPv4Network, used: Iterable[str]
) -> ipaddress.IPv4Address | None:
    """The lowest host address after the gateway that nobody uses, or None when full."""
    taken = {ipaddress.IPv4Address(address) for address in used}
    gateway = network.network_address + 1
    for address in network.hosts():  # bounded by the subnet's size (at most a /16)
        if address != gateway and address not in taken:
            return address
    return None


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    """What the state directory keeps about one workload network, to remove it later."""

    network_id: str
    workload: str
    namespace: str
    host_veth: str
    bridge: str
    subnet: str
    address: str
    pid: int
    """The launcher that made it (for messages: liveness is its lock, held while it lives)."""
    start_time: int
    """The launcher's start (clock ticks after boot, `/proc/PID/stat`): tells reused pids apart."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> NetworkRecord:
        """Parse a record; NetworkError when it is not one."""
        try:
            data = json.loads(text)
            record = cls(**data)
        except (ValueError, TypeError) as error:
            raise NetworkError(f"not a network record: {error}") from None
        for name in ("network_id", "workload", "namespace", "host_veth", "bridge", "subnet"):
            if not isinstance(getattr(record, name), str):
                raise NetworkError(f"not a network record: {name} is not a string")
        return record


@dataclass(frozen=True, slots=True)
class CaptureRules:
    """The inputs of one namespace's nat rules."""

    proxy_gid: int = PROXY_GID
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT
    exclude_inbound_ports: Sequence[int] = field(default=SIDECAR_PORTS)
    exclude_outbound_ports: Sequence[int] = ()
    exclude_outbound_ip_ranges: Sequence[str] = ()
    """IPv4 CIDRs the application reaches without its sidecar (Istio's excludeOutboundIPRanges)."""

    @classmethod
    def from_settings(cls, settings: NetworkSettings) -> CaptureRules:
        excluded = dict.fromkeys((*SIDECAR_PORTS, *settings.exclude_inbound_ports))
        return cls(
            proxy_gid=settings.proxy_gid,
            outbound_port=settings.outbound_port,
            inbound_port=settings.inbound_port,
            exclude_inbound_ports=tuple(excluded),
            exclude_outbound_ports=tuple(dict.fromkeys(settings.exclude_outbound_ports)),
        )


def capture_rules(rules: CaptureRules) -> str:
    """The namespace's nat table for `iptables-restore`, after Istio's REDIRECT mode.

    Inbound (PREROUTING): TCP to any port but the excluded ones goes to the
    inbound capture port. Outbound (OUTPUT), in order:
    - traffic the proxy passes to the application from 127.0.0.6 stays put;
    - the proxy calling its own workload's address (over `lo`, not 127.0.0.1)
      goes through inbound capture, so inbound policy applies to it too;
    - the application calling itself over `lo` stays put;
    - the proxy's own traffic (its group) stays put;
    - anything to 127.0.0.1, to excluded ports and excluded ranges, stays put;
    - everything else goes to the outbound capture port.
    """
    gid = str(rules.proxy_gid)
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        *(f":{chain} - [0:0]" for chain in _CHAINS),
        f"-A PREROUTING -p tcp -j {CHAIN_INBOUND}",
        f"-A OUTPUT -p tcp -j {CHAIN_OUTPUT}",
        *(f"-A {CHAIN_INBOUND} -p tcp --dport {p} -j RETURN" for p in rules.exclude_inbound_ports),
        f"-A {CHAIN_INBOUND} -p tcp -j {CHAIN_IN_REDIRECT}",
        f"-A {CHAIN_IN_REDIRECT} -p tcp -j REDIRECT --to-ports {rules.inbound_port}",
        f"-A {CHAIN_OUTPUT} -s {INBOUND_PASSTHROUGH_SOURCE}/32 -o lo -j RETURN",
        f"-A {CHAIN_OUTPUT} ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner {gid} "
        f"-j {CHAIN_IN_REDIRECT}",
        f"-A {CHAIN_OUTPUT} -o lo -m owner ! --gid-owner {gid} -j RETURN",
        f"-A {CHAIN_OUTPUT} -m owner --gid-owner {gid} -j RETURN",
        f"-A {CHAIN_OUTPUT} -d 127.0.0.1/32 -j RETURN",
        *(f"-A {CHAIN_OUTPUT} -p tcp --dport {p} -j RETURN" for p in rules.exclude_outbound_ports),
        *(f"-A {CHAIN_OUTPUT} -d {cidr} -j RETURN" for cidr in rules.exclude_outbound_ip_ranges),
        f"-A {CHAIN_OUTPUT} -j {CHAIN_REDIRECT}",
        f"-A {CHAIN_REDIRECT} -p tcp -j REDIRECT --to-ports {rules.outbound_port}",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


_CHAINS = (CHAIN_INBOUND, CHAIN_IN_REDIRECT, CHAIN_OUTPUT, CHAIN_REDIRECT)


def forward_rules(bridge: str, chain: str) -> list[list[str]]:
    """The rules of our FORWARD chain: the bridge's traffic, in and out, is accepted."""
    return [
        ["-A", chain, "-i", bridge, "-j", "ACCEPT"],
        ["-A", chain, "-o", bridge, "-j", "ACCEPT"],
    ]


BASE_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

RESOLV_CONF = (
    "# trellis: names come from this namespace's /etc/hosts. With no nameserver the\n"
    "# resolver asks 127.0.0.1:53, where nothing listens: unknown names fail at once.\n"
    "options timeout:1 attempts:1\n"
)


def hosts_file(text: str) -> str:
    """The namespace's /etc/hosts: localhost, then the caller's lines (service VIPs)."""
    body = text if not text or text.endswith("\n") else text + "\n"
    return BASE_HOSTS + body
