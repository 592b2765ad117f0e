"""Filter chain selection: Envoy's order (destination port, then transport protocol)."""

from __future__ import annotations

from trellis.core.config import FilterChain, TcpProxy
from trellis.core.filter_chain import ChainTable, PortChains, select_chain
from trellis.core.tls import CommonTls, DownstreamTls, TransportProtocol

TLS = DownstreamTls(CommonTls())
ANY = TransportProtocol.ANY
RAW = TransportProtocol.RAW_BUFFER
TLS_MATCH = TransportProtocol.TLS


def _chain(name: str, port: int | None = None, protocol: TransportProtocol = ANY) -> FilterChain:
    return FilterChain(
        filter=TcpProxy(name, name),
        name=name,
        destination_port=port,
        transport_protocol=protocol,
        tls=TLS if protocol is TLS_MATCH else None,
    )


def _picked(chains: tuple[FilterChain, ...], port: int, is_tls: bool) -> str | None:
    chain = select_chain(chains, port, is_tls)
    return None if chain is None else chain.name


def test_one_chain_without_a_match_takes_everything_without_inspection() -> None:
    table = ChainTable((_chain("only"),))
    for port in (1, 80, 65535):
        assert table.for_port(port) == PortChains(tls=0, plaintext=0)
        found = table.for_port(port)
        assert found is not None and not found.needs_inspection


def test_the_exact_destination_port_wins_over_a_chain_without_one() -> None:
    chains = (_chain("fallback"), _chain("http", 8080), _chain("db", 5432))
    assert _picked(chains, 8080, is_tls=False) == "http"
    assert _picked(chains, 5432, is_tls=True) == "db"
    assert _picked(chains, 9999, is_tls=False) == "fallback"


def test_without_a_portless_chain_other_ports_are_refused() -> None:
    chains = (_chain("http", 8080), _chain("db", 5432))
    assert _picked(chains, 9999, is_tls=False) is None
    assert ChainTable(chains).for_port(9999) is None


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
    assert all(table.for_port(p).needs_inspection for p in (8080, 9090))  # type: ignore[union-attr]


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
    db, web = table.for_port(5432), table.for_port(8080)
    assert db is not None and not db.needs_inspection  # a server-first protocol never waits
    assert web is not None and web.needs_inspection
