"""Which filter chain of a listener takes a connection, in Envoy's match order.

Envoy narrows the chains one criterion at a time and never backtracks: first
the destination port (chains naming the connection's port, else the chains
naming no port), then the destination address (the chains whose
`prefix_ranges` hold it with the longest prefix, else the chains naming no
prefix), then the transport protocol the TLS inspector detected (chains
naming it, else the chains naming none). Trellis implements those three
criteria. When nothing is left, the connection is closed (Envoy's "no
matching filter chain").

`ChainTable` precomputes the answer per destination port when a config is
applied. A connection costs one dict lookup when the chains of its port name
no addresses; a second one (the exact address: Istio's `/32` service chains)
when they do, and a walk over the wider prefixes only when that misses; and
a look at its first bytes only when the remaining chains differ by transport
protocol.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from trellis.core.addresses import IpNetwork
from trellis.core.config import FilterChain
from trellis.core.tls import TransportProtocol

ChainMatch = tuple[int | None, tuple[IpNetwork, ...], TransportProtocol]
"""What a chain matches on: its destination port (None: any), destination prefixes
(empty: any) and transport protocol."""

MatchKey = tuple[int | None, IpNetwork | None, TransportProtocol]
"""One combination a chain matches; two chains of a listener may not share one."""


def chain_match(chain: FilterChain) -> ChainMatch:
    return chain.destination_port, chain.prefix_ranges, chain.transport_protocol


def match_keys(chain: FilterChain) -> Iterator[MatchKey]:
    """Every (port, prefix, protocol) combination `chain` matches (prefix None: any)."""
    prefixes: tuple[IpNetwork | None, ...] = chain.prefix_ranges or (None,)
    for prefix in prefixes:
        yield chain.destination_port, prefix, chain.transport_protocol


@dataclass(frozen=True, slots=True)
class PortChains:
    """The chains one destination (port and address) leads to: an index into the
    listener's chains for TLS and for plaintext connections (None: refused)."""

    tls: int | None
    plaintext: int | None

    @property
    def needs_inspection(self) -> bool:
        """Whether the choice depends on the first bytes (a TLS handshake or not)."""
        return self.tls != self.plaintext

    def pick(self, is_tls: bool) -> int | None:
        return self.tls if is_tls else self.plaintext


@dataclass(frozen=True, slots=True)
class AddressChains:
    """The chains of one destination port whose choice depends on the address.

    `exact` holds the single-address prefixes (/32, /128) by the address's
    text, `wider` the other prefixes, longest first; `fallback` is what the
    chains naming no prefix give (None: refused).
    """

    exact: dict[str, PortChains]
    wider: tuple[tuple[IpNetwork, PortChains], ...]
    fallback: PortChains | None

    def pick(self, address: str | None) -> PortChains | None:
        """The chains for a connection to `address` (None: unknown, only the fallback)."""
        if address is None:
            return self.fallback
        found = self.exact.get(address)
        if found is not None or not self.wider:
            return found if found is not None else self.fallback
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return self.fallback
        for network, chains in self.wider:
            if network.version == ip.version and ip in network:
                return chains
        return self.fallback


class ChainTable:
    """A listener's chains, arranged for choosing one per connection."""

    __slots__ = ("_any_port", "_by_port", "uses_addresses")

    def __init__(self, chains: tuple[FilterChain, ...]) -> None:
        ports: dict[int | None, list[int]] = {}
        for index, chain in enumerate(chains):
            ports.setdefault(chain.destination_port, []).append(index)
        self._by_port = {
            port: _by_address(chains, indices)
            for port, indices in ports.items()
            if port is not None
        }
        any_port = ports.get(None)
        self._any_port = _by_address(chains, any_port) if any_port else None
        # Whether any chain names destination addresses (the caller must know them).
        self.uses_addresses = any(chain.prefix_ranges for chain in chains)

    def lookup(self, port: int, address: str | None = None) -> PortChains | None:
        """The chains for connections to `address`:`port`; None when none can take them.

        `address` is the destination address as text (IPv4 dotted, IPv6
        compressed, as the socket module gives it); None matches only chains
        that name no prefix.
        """
        found = self._by_port.get(port)
        if found is None:
            found = self._any_port
        if isinstance(found, AddressChains):
            return found.pick(address)
        return found

    def select(self, port: int, is_tls: bool, address: str | None = None) -> int | None:
        """The index of the chain for a connection to `address`:`port`, or None."""
        found = self.lookup(port, address)
        return None if found is None else found.pick(is_tls)


def _by_address(
    chains: tuple[FilterChain, ...], indices: list[int]
) -> PortChains | AddressChains | None:
    """Among `indices` (one port's chains): the longest matching prefix wins, else a
    chain naming none; then the transport protocol (`_by_protocol`)."""
    by_prefix: dict[IpNetwork, list[int]] = {}
    unprefixed: list[int] = []
    for index in indices:
        prefixes = chains[index].prefix_ranges
        if not prefixes:
            unprefixed.append(index)
        for prefix in prefixes:
            by_prefix.setdefault(prefix, []).append(index)
    fallback = _by_protocol(chains, unprefixed) if unprefixed else None
    if not by_prefix:
        return fallback
    exact: dict[str, PortChains] = {}
    wider: list[tuple[IpNetwork, PortChains]] = []
    for prefix, members in by_prefix.items():
        found = _by_protocol(chains, members)
        if prefix.prefixlen == prefix.max_prefixlen:
            exact[str(prefix.network_address)] = found
        else:
            wider.append((prefix, found))
    wider.sort(key=lambda item: -item[0].prefixlen)
    return AddressChains(exact, tuple(wider), fallback)


def _by_protocol(chains: tuple[FilterChain, ...], indices: list[int]) -> PortChains:
    """Among `indices`: the exact transport protocol wins, else a chain naming none."""
    exact: dict[TransportProtocol, int] = {}
    for index in indices:
        exact.setdefault(chains[index].transport_protocol, index)
    fallback = exact.get(TransportProtocol.ANY)
    return PortChains(
        tls=exact.get(TransportProtocol.TLS, fallback),
        plaintext=exact.get(TransportProtocol.RAW_BUFFER, fallback),
    )


def select_chain(
    chains: tuple[FilterChain, ...],
    destination_port: int,
    is_tls: bool,
    destination_address: str | None = None,
) -> FilterChain | None:
    """The chain a connection to `destination_address`:`destination_port` takes, or
    None (refused).

    For questions asked once (tests, tools); the runtime keeps a `ChainTable`.
    """
    index = ChainTable(chains).select(destination_port, is_tls, destination_address)
    return None if index is None else chains[index]
