"""Which filter chain of a listener takes a connection, in Envoy's match order.

Envoy narrows the chains one criterion at a time and never backtracks: first
the destination port (chains naming the connection's port, else the chains
naming no port), then the transport protocol the TLS inspector detected
(chains naming it, else the chains naming none). Trellis implements those two
criteria. When nothing is left, the connection is closed (Envoy's "no
matching filter chain").

`ChainTable` precomputes the answer per destination port when a config is
applied, so a connection costs one dict lookup, and a look at its first bytes
only when the chains of its port differ by transport protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from trellis.core.config import FilterChain
from trellis.core.tls import TransportProtocol

ChainMatch = tuple[int | None, TransportProtocol]
"""What a chain matches on: its destination port (None: any) and transport protocol."""


def chain_match(chain: FilterChain) -> ChainMatch:
    return chain.destination_port, chain.transport_protocol


@dataclass(frozen=True, slots=True)
class PortChains:
    """The chains one destination port leads to: an index into the listener's chains
    for TLS and for plaintext connections (None: refused)."""

    tls: int | None
    plaintext: int | None

    @property
    def needs_inspection(self) -> bool:
        """Whether the choice depends on the first bytes (a TLS handshake or not)."""
        return self.tls != self.plaintext

    def pick(self, is_tls: bool) -> int | None:
        return self.tls if is_tls else self.plaintext


class ChainTable:
    """A listener's chains, arranged for choosing one per connection."""

    __slots__ = ("_any_port", "_by_port")

    def __init__(self, chains: tuple[FilterChain, ...]) -> None:
        ports: dict[int | None, list[int]] = {}
        for index, chain in enumerate(chains):
            ports.setdefault(chain.destination_port, []).append(index)
        self._by_port = {
            port: _by_protocol(chains, indices)
            for port, indices in ports.items()
            if port is not None
        }
        any_port = ports.get(None)
        self._any_port = _by_protocol(chains, any_port) if any_port else None

    def for_port(self, port: int) -> PortChains | None:
        """The chains for connections to `port`; None when none can take them."""
        found = self._by_port.get(port)
        return found if found is not None else self._any_port

    def select(self, port: int, is_tls: bool) -> int | None:
        """The index of the chain for a connection to `port`, or None."""
        found = self.for_port(port)
        return None if found is None else found.pick(is_tls)


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
    chains: tuple[FilterChain, ...], destination_port: int, is_tls: bool
) -> FilterChain | None:
    """The chain a connection to `destination_port` takes, or None (refused).

    For questions asked once (tests, tools); the runtime keeps a `ChainTable`.
    """
    index = ChainTable(chains).select(destination_port, is_tls)
    return None if index is None else chains[index]
