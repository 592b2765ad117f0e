"""Filter chain selection: Envoy's order (destination port, then destination address,
then transport protocol)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.core.config import FilterChain, TcpProxy
from trellis.core.filter_chain import ChainTable, PortChains, select_chain
from trellis.core.tls import CommonTls, DownstreamTls, TransportProtocol

TLS = DownstreamTls(CommonTls())
ANY = TransportProtocol.ANY
RAW = TransportProtocol.RAW_BUFFER
TLS_MATCH = TransportProtocol.TLS


def _chain(
    name: str,
    port: int | None = None,
    protocol: TransportProtocol = ANY,
    prefixes: tuple[str, ...] = (),
) -> FilterChain:
    return FilterChain(
        filter=TcpProxy(name, name),
        name=name,
        destination_port=port,
        prefix_ranges=tuple(ipaddress.ip_network(p) for p in prefixes),
        transport_protocol=protocol,
        tls=TLS if protocol is TLS_MATCH else None,
    )


def _picked(
    chains: tuple[FilterChain, ...], port: int, is_tls: bool, address: str | None = None
) -> str | None:
    chain = select_chain(chains, port, is_tls, address)
    return None if chain is None else chain.name


def test_one_chain_without_a_match_takes_everything_without_inspection() -> None:
    table = ChainTable((_chain("only"),))
    for port in (1, 80, 65535):
        assert table.lookup(port) == PortChains(tls=0, plaintext=0)
        found = table.lookup(port)
        assert found is not None and not found.needs_inspection


def test_the_exact_destination_port_wins_over_a_chain_without_one() -> None:
    chains = (_chain("fallback"), _chain("http", 8080), _chain("db", 5432))
    assert _picked(chains, 8080, is_tls=False) == "http"
    assert _picked(chains, 5432, is_tls=True) == "db"
    assert _picked(chains, 9999, is_tls=False) == "fallback"


def test_without_a_portless_chain_other_ports_are_refused() -> None:
    chains = (_chain("http", 8080), _chain("db", 5432))
    assert _picked(chains, 9999, is_tls=False) is None
    assert ChainTable(chains).lookup(9999) is None


def test_the_transport_protocol_is_matched_within_the_ports_chains() -> None:
    chains = (
        _chain("8080-tls", 8080, TLS_MATCH),
        _chain("8080-plain", 8080, RAW),
        _chain("9090-tls", 9090, TLS_MATCH),
    )
    assert _picked(chains, 8080, is_tls=True) == "8080-tls"
    assert _picked(chains, 8080, is_tls=False) == "8080-plain"
    assert _picked(chains, 9090, is_tls=True) == "9090-tls"
    assert _picked(chains, 9090, is_tls=False) is None  # STRICT: plaintext refused
    table = ChainTable(chains)
    assert all(table.lookup(p).needs_inspection for p in (8080, 9090))  # type: ignore[union-attr]


def test_no_backtracking_to_portless_chains_once_a_port_matched() -> None:
    # Envoy narrows by port first: a plaintext connection to 8080 does not fall back
    # to the portless plaintext chain when 8080's chains take TLS only.
    chains = (_chain("any-plain", None, RAW), _chain("8080-tls", 8080, TLS_MATCH))
    assert _picked(chains, 8080, is_tls=False) is None
    assert _picked(chains, 8080, is_tls=True) == "8080-tls"
    assert _picked(chains, 80, is_tls=False) == "any-plain"
    assert _picked(chains, 80, is_tls=True) is None


def test_an_exact_protocol_wins_over_a_chain_without_one() -> None:
    chains = (_chain("catch-all", 8080), _chain("tls", 8080, TLS_MATCH))
    assert _picked(chains, 8080, is_tls=True) == "tls"
    assert _picked(chains, 8080, is_tls=False) == "catch-all"


def test_inspection_is_needed_only_where_the_protocols_differ() -> None:
    chains = (_chain("tcp", 5432), _chain("tls", 8080, TLS_MATCH), _chain("plain", 8080, RAW))
    table = ChainTable(chains)
    db, web = table.lookup(5432), table.lookup(8080)
    assert db is not None and not db.needs_inspection  # a server-first protocol never waits
    assert web is not None and web.needs_inspection


# -- destination addresses (prefix_ranges) ------------------------------------------


def test_the_longest_prefix_holding_the_address_wins() -> None:
    chains = (
        _chain("any"),
        _chain("vip", prefixes=("240.240.0.7/32",)),
        _chain("subnet", prefixes=("240.240.0.0/16",)),
        _chain("class-e", prefixes=("240.0.0.0/4", "2001:db8::/32")),
        _chain("v6-host", prefixes=("2001:db8::1/128",)),
    )
    assert _picked(chains, 5432, False, "240.240.0.7") == "vip"
    assert _picked(chains, 5432, False, "240.240.9.9") == "subnet"
    assert _picked(chains, 5432, False, "241.1.1.1") == "class-e"
    assert _picked(chains, 5432, False, "2001:db8::1") == "v6-host"
    assert _picked(chains, 5432, False, "2001:db8::2") == "class-e"
    assert _picked(chains, 5432, False, "10.0.0.1") == "any"
    assert _picked(chains, 5432, False, None) == "any"  # unknown address: only the fallback


def test_the_port_is_narrowed_before_the_address() -> None:
    # Istio's virtualOutbound: a TCP service at VIP:5432, HTTP by port 80, the rest
    # passed through. The VIP on another port takes the port's chain, not the VIP's.
    chains = (
        _chain("db", 5432, prefixes=("240.240.0.7/32",)),
        _chain("http", 80),
        _chain("passthrough"),
    )
    assert _picked(chains, 5432, False, "240.240.0.7") == "db"
    assert _picked(chains, 80, False, "240.240.0.7") == "http"
    assert _picked(chains, 6379, False, "240.240.0.7") == "passthrough"
    # A port with only address chains refuses other addresses: no backtracking to the
    # portless chains (Envoy's order).
    assert _picked(chains, 5432, False, "10.1.2.3") is None


def test_the_transport_protocol_is_matched_within_the_addresss_chains() -> None:
    chains = (
        _chain("vip-tls", 443, TLS_MATCH, ("240.240.0.7/32",)),
        _chain("vip-plain", 443, RAW, ("240.240.0.7/32",)),
        _chain("other", 443, TLS_MATCH),
    )
    table = ChainTable(chains)
    vip = table.lookup(443, "240.240.0.7")
    assert vip is not None and vip.needs_inspection
    assert _picked(chains, 443, True, "240.240.0.7") == "vip-tls"
    assert _picked(chains, 443, False, "240.240.0.7") == "vip-plain"
    assert _picked(chains, 443, False, "10.0.0.1") is None
    assert _picked(chains, 443, True, "10.0.0.1") == "other"


def test_tables_without_prefixes_need_no_address() -> None:
    assert not ChainTable((_chain("a", 80), _chain("b"))).uses_addresses
    assert ChainTable((_chain("a", 80, prefixes=("10.0.0.0/8",)), _chain("b"))).uses_addresses


_V4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))


@given(
    address=_V4,
    prefixes=st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), min_size=1, max_size=8
    ),
)
def test_the_table_agrees_with_a_plain_longest_prefix_search(
    address: str, prefixes: list[tuple[int, int]]
) -> None:
    networks = list(
        dict.fromkeys(
            ipaddress.ip_network(f"{ipaddress.IPv4Address(n)}/{length}", strict=False)
            for n, length in prefixes
        )
    )
    named = [_chain(f"c{i}", prefixes=(str(net),)) for i, net in enumerate(networks)]
    chains = (*named, _chain("fallback"))
    holding = [net for net in networks if ipaddress.ip_address(address) in net]
    expected = (
        f"c{networks.index(max(holding, key=lambda n: n.prefixlen))}" if holding else "fallback"
    )
    assert _picked(chains, 1, False, address) == expected


@pytest.mark.parametrize("address", ["not-an-ip", ""])
def test_an_unparsable_address_takes_the_fallback(address: str) -> None:
    chains = (_chain("wide", prefixes=("10.0.0.0/8",)), _chain("fallback"))
    assert _picked(chains, 1, False, address) == "fallback"
