"""Virtual IPs for service hosts: which address each host gets, as pure decisions.

In transparent capture a workload reaches `http://payment/` through a virtual
IP: the name resolves to it inside the workload's network namespace, iptables
sends the connection to the sidecar, and the sidecar routes by `Host`. The
control plane hands these addresses out, like Istio's ServiceEntry address
auto-allocation (class E `240.240.0.0/16` by default).

The rules:
- one address per host, never two hosts on one address;
- addresses whose last octet is 0 or 255 are never given (Istio skips them too:
  some resolvers and stacks treat them as network or broadcast addresses), nor
  the range's own network and broadcast addresses;
- a new host takes the lowest address that is neither assigned nor held;
- a host that goes away keeps its address *held* for `VipPolicy.hold` seconds:
  if it comes back meanwhile (a delete and re-apply, a ServiceEntry replaced by
  another naming the same host) it gets the same address back, and until then
  nobody else gets it, so a stale hosts file never sends a name to a different
  service. When the range has no free address left, held addresses are reused,
  the one released longest ago first; only when every address belongs to a
  live host is the range exhausted (`VipRangeExhaustedError`);
- assignments outside the configured range (the range was changed) are dropped
  and their hosts get new addresses.

Time is an argument (`now`, wall-clock seconds), so the table can be saved and
reloaded across restarts and tested without a clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from trellis.errors import TrellisError

DEFAULT_VIP_RANGE = "240.240.0.0/16"
DEFAULT_VIP_HOLD = 24 * 3600.0
"""How long a removed host's address stays reserved for it (seconds)."""


class VipRangeExhaustedError(TrellisError):
    """More live hosts want an address than the range has; `partial` holds what fitted."""

    def __init__(self, message: str, partial: VipTable, unallocated: tuple[str, ...]) -> None:
        super().__init__(message)
        self.partial = partial
        self.unallocated = unallocated


def _skipped(address: int) -> bool:
    return address & 0xFF in (0, 0xFF)


@dataclass(frozen=True, slots=True)
class VipRange:
    """An IPv4 block virtual IPs are taken from."""

    network: ipaddress.IPv4Network

    @classmethod
    def parse(cls, text: str, what: str = "virtual IP range") -> VipRange:
        """Read `A.B.C.D/N`; ValueError naming `what` when it is not a usable IPv4 block."""
        try:
            network = ipaddress.ip_network(text.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"{what} {text!r} is not an IPv4 CIDR block: {exc}") from None
        if not isinstance(network, ipaddress.IPv4Network):
            raise ValueError(f"{what} {text!r} must be an IPv4 block (hosts files get IPv4 only)")
        found = cls(network)
        if found.capacity == 0:
            raise ValueError(f"{what} {text!r} has no usable address; use a prefix of /30 or less")
        return found

    def __str__(self) -> str:
        return str(self.network)

    @property
    def _bounds(self) -> tuple[int, int]:
        """The first and last candidate as integers (without network and broadcast, up to /30)."""
        first = int(self.network.network_address)
        last = int(self.network.broadcast_address)
        if self.network.prefixlen <= 30:
            first, last = first + 1, last - 1
        return first, last

    @property
    def capacity(self) -> int:
        """How many addresses the range can give out."""
        first, last = self._bounds
        # Subtract the values ending in .0 (multiples of 256) and in .255 between first and last.
        zeros = (last >> 8) - ((first - 1) >> 8)
        nines = ((last + 1) >> 8) - (first >> 8)
        return max(0, last - first + 1 - zeros - nines)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address):
            return False
        first, last = self._bounds
        value = int(address)
        return first <= value <= last and not _skipped(value)

    def addresses(self) -> Iterator[ipaddress.IPv4Address]:
        """Every address the range can give out, lowest first."""
        first, last = self._bounds
        for value in range(first, last + 1):
            if not _skipped(value):
                yield ipaddress.IPv4Address(value)


@dataclass(frozen=True, slots=True)
class VipPolicy:
    """Where addresses come from and how long a removed host's address stays held."""

    range: VipRange = field(default_factory=lambda: VipRange.parse(DEFAULT_VIP_RANGE))
    hold: float = DEFAULT_VIP_HOLD


@dataclass(frozen=True, slots=True)
class Held:
    """The address of a host that went away, and when it went (wall-clock seconds)."""

    address: ipaddress.IPv4Address
    since: float


def _frozen(mapping: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(sorted(mapping.items())))


@dataclass(frozen=True, slots=True)
class VipTable:
    """Which host has which address (`assigned`) and which addresses are held for absent hosts.

    Construct through `check` (or `reconcile`) to be sure no address appears twice.
    """

    assigned: Mapping[str, ipaddress.IPv4Address] = field(default_factory=dict)
    held: Mapping[str, Held] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "assigned", _frozen(self.assigned))
        object.__setattr__(self, "held", _frozen(self.held))

    def check(self) -> VipTable:
        """This table, or ValueError naming the first host listed twice or sharing an address."""
        both = sorted(set(self.assigned) & set(self.held))
        if both:
            raise ValueError(f"host {both[0]!r} is both assigned and held")
        owners: dict[ipaddress.IPv4Address, str] = {}
        items = [*self.assigned.items(), *((h, item.address) for h, item in self.held.items())]
        for host, address in items:
            other = owners.setdefault(address, host)
            if other != host:
                raise ValueError(f"address {address} is given to both {other!r} and {host!r}")
        return self

    def address(self, host: str) -> ipaddress.IPv4Address | None:
        return self.assigned.get(host)

    def reconcile(self, hosts: Iterable[str], policy: VipPolicy, now: float) -> VipTable:
        """The table once exactly `hosts` have addresses, at time `now`.

        Raises VipRangeExhaustedError (with the table of everything that fitted)
        when there are more hosts than addresses.
        """
        wanted = sorted(set(hosts))
        vip_range = policy.range
        assigned = {h: a for h, a in self.assigned.items() if a in vip_range}
        held = {
            h: item
            for h, item in self.held.items()
            if item.address in vip_range and now - item.since < policy.hold
        }
        keep = set(wanted)
        for host in [h for h in assigned if h not in keep]:
            held[host] = Held(assigned.pop(host), now)
        new: list[str] = []
        for host in wanted:
            if host in assigned:
                continue
            back = held.pop(host, None)
            if back is not None:
                assigned[host] = back.address
            else:
                new.append(host)
        left = _allocate(new, assigned, held, vip_range)
        table = VipTable(assigned, held)
        if left:
            raise VipRangeExhaustedError(
                f"the virtual IP range {vip_range} has {vip_range.capacity} addresses and all "
                f"are in use; {len(left)} host(s) got none: {', '.join(left[:5])}"
                f"{', ...' if len(left) > 5 else ''} (choose a larger range)",
                table,
                tuple(left),
            )
        return table


def _allocate(
    hosts: list[str],
    assigned: dict[str, ipaddress.IPv4Address],
    held: dict[str, Held],
    vip_range: VipRange,
) -> list[str]:
    """Give each of `hosts` the lowest free address, else a held one (released longest ago).

    Changes `assigned` and `held` in place; returns the hosts left without an address.
    """
    if not hosts:
        return []
    taken = set(assigned.values()) | {item.address for item in held.values()}
    free = (address for address in vip_range.addresses() if address not in taken)
    oldest: list[str] | None = None
    left: list[str] = []
    for host in hosts:
        address = next(free, None)
        if address is None:
            if oldest is None:
                oldest = sorted(held, key=lambda h: (held[h].since, held[h].address), reverse=True)
            if not oldest:
                left.append(host)
                continue
            address = held.pop(oldest.pop()).address
        assigned[host] = address
    return left
