"""Listeners with several filter chains: each its own match, TLS and network filters,
and `use_original_dst` (transparent capture)."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from trellis.core.config import HttpConnectionManager, ProxyConfig, TcpProxy
from trellis.core.filter_chain import select_chain
from trellis.core.tls import TransportProtocol
from trellis.errors import ConfigError

Compile = Callable[[dict[str, Any]], ProxyConfig]
L0 = "static_resources.listeners[0]"


def _virtual_inbound(d: dict[str, Any]) -> dict[str, Any]:
    """`minimal.yaml` with listener 0 made a transparent inbound listener: HTTP on
    destination port 8080 (listener 0's filters), TCP on 5432 (listener 1's)."""
    http, tcp = d["static_resources"]["listeners"]
    d["static_resources"]["listeners"] = [
        {
            "name": "virtualInbound",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
            "use_original_dst": True,
            "filter_chains": [
                {
                    "name": "inbound|8080||",
                    "filter_chain_match": {"destination_port": 8080},
                    "filters": copy.deepcopy(http["filter_chains"][0]["filters"]),
                },
                {
                    "name": "inbound|5432||",
                    "filter_chain_match": {"destination_port": 5432},
                    "filters": copy.deepcopy(tcp["filter_chains"][0]["filters"]),
                },
            ],
        }
    ]
    return d


def test_each_chain_keeps_its_own_network_filter(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    (listener,) = compile_dict(_virtual_inbound(minimal_dict)).listeners
    assert listener.use_original_dst
    http, tcp = listener.chains
    assert (http.name, http.destination_port) == ("inbound|8080||", 8080)
    assert isinstance(http.filter, HttpConnectionManager)
    assert http.filter.stat_prefix == "ingress_http"
    assert (tcp.name, tcp.destination_port) == ("inbound|5432||", 5432)
    assert tcp.filter == TcpProxy("tcp", "app", 3600.0)
    assert select_chain(listener.chains, 5432, is_tls=False) is tcp
    assert select_chain(listener.chains, 8080, is_tls=False) is http
    assert select_chain(listener.chains, 15006, is_tls=False) is None


def test_use_original_dst_is_off_unless_set(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    config = compile_dict(minimal_dict)
    assert [listener.use_original_dst for listener in config.listeners] == [False, False]
    (chain,) = config.listeners[0].chains
    assert (chain.destination_port, chain.transport_protocol) == (None, TransportProtocol.ANY)


def test_a_port_and_a_transport_protocol_combine(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    d = _virtual_inbound(minimal_dict)
    chains = d["static_resources"]["listeners"][0]["filter_chains"]
    chains[0]["filter_chain_match"]["transport_protocol"] = "raw_buffer"
    chains.append({**copy.deepcopy(chains[1]), "filter_chain_match": {}})
    (listener,) = compile_dict(d).listeners
    assert listener.chains[0].transport_protocol is TransportProtocol.RAW_BUFFER
    assert select_chain(listener.chains, 8080, is_tls=True) is None  # no fallback to chain 2
    assert select_chain(listener.chains, 9999, is_tls=True) is listener.chains[2]


def test_a_chain_error_names_that_chains_filters(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    d = _virtual_inbound(minimal_dict)
    tcp = d["static_resources"]["listeners"][0]["filter_chains"][1]["filters"][0]
    tcp["typed_config"]["cluster"] = "nowhere"
    with pytest.raises(ConfigError) as info:
        compile_dict(d)
    assert info.value.path == f"{L0}.filter_chains[1].filters[0].typed_config.cluster"
    assert "unknown cluster 'nowhere'" in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        (
            "server_names",
            ["example.com"],
            f"{L0}.filter_chains[0].filter_chain_match.server_names",
        ),
        (
            "source_ports",
            [1234],
            f"{L0}.filter_chains[0].filter_chain_match.source_ports",
        ),
        (
            "application_protocols",
            ["http/1.1"],
            f"{L0}.filter_chains[0].filter_chain_match.application_protocols",
        ),
    ],
)
def test_match_fields_still_unsupported_are_refused_by_path(
    minimal_dict: dict[str, Any], compile_dict: Compile, field: str, value: Any, path: str
) -> None:
    d = _virtual_inbound(minimal_dict)
    d["static_resources"]["listeners"][0]["filter_chains"][0]["filter_chain_match"][field] = value
    with pytest.raises(ConfigError) as info:
        compile_dict(d)
    assert info.value.path == path
    assert "not supported" in str(info.value)


def test_a_default_filter_chain_is_refused_by_path(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    d = _virtual_inbound(minimal_dict)
    listener = d["static_resources"]["listeners"][0]
    listener["default_filter_chain"] = copy.deepcopy(listener["filter_chains"][1])
    with pytest.raises(ConfigError) as info:
        compile_dict(d)
    assert info.value.path == f"{L0}.default_filter_chain"


def test_prefix_ranges_match_the_destination_address_after_the_port(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    d = _virtual_inbound(minimal_dict)
    d["static_resources"]["listeners"][0]["name"] = "virtualOutbound"
    chains = d["static_resources"]["listeners"][0]["filter_chains"]
    chains[1]["filter_chain_match"]["prefix_ranges"] = [
        {"address_prefix": "240.240.0.7", "prefix_len": 32},
        {"address_prefix": "2001:db8::1:2", "prefix_len": 64},  # host bits dropped
        {"address_prefix": "240.240.0.7", "prefix_len": 32},  # listed twice: once
    ]
    chains.append({**copy.deepcopy(chains[1]), "name": "wide", "filter_chain_match": {}})
    (listener,) = compile_dict(d).listeners
    assert listener.chains[1].prefix_ranges == (
        ipaddress.ip_network("240.240.0.7/32"),
        ipaddress.ip_network("2001:db8::/64"),
    )
    pick = listener.chains
    assert select_chain(pick, 5432, False, "240.240.0.7") is pick[1]
    assert select_chain(pick, 5432, False, "2001:db8::9") is pick[1]
    assert select_chain(pick, 5432, False, "240.240.0.8") is None  # the port's chains only
    assert select_chain(pick, 6379, False, "240.240.0.7") is pick[2]


@pytest.mark.parametrize(
    ("cidr", "field", "message"),
    [
        ({"address_prefix": "nowhere", "prefix_len": 8}, "address_prefix", "not an IPv4"),
        ({"address_prefix": "10.0.0.0", "prefix_len": 33}, "prefix_len", "must be 0-32"),
        ({"address_prefix": "::1", "prefix_len": 129}, "prefix_len", "must be 0-128"),
    ],
)
def test_a_bad_prefix_range_is_refused_by_path(
    minimal_dict: dict[str, Any],
    compile_dict: Compile,
    cidr: dict[str, Any],
    field: str,
    message: str,
) -> None:
    d = _virtual_inbound(minimal_dict)
    match = d["static_resources"]["listeners"][0]["filter_chains"][1]["filter_chain_match"]
    match["prefix_ranges"] = [{"address_prefix": "10.1.0.0", "prefix_len": 16}, cidr]
    with pytest.raises(ConfigError) as info:
        compile_dict(d)
    assert info.value.path == f"{L0}.filter_chains[1].filter_chain_match.prefix_ranges[1].{field}"
    assert message in str(info.value)


def test_two_chains_sharing_a_prefix_port_and_protocol_are_refused(
    minimal_dict: dict[str, Any], compile_dict: Compile
) -> None:
    d = _virtual_inbound(minimal_dict)
    chains = d["static_resources"]["listeners"][0]["filter_chains"]
    chains[1]["filter_chain_match"]["prefix_ranges"] = [
        {"address_prefix": "10.0.0.1", "prefix_len": 32}
    ]
    twin = copy.deepcopy(chains[1])
    twin["filter_chain_match"]["prefix_ranges"].insert(
        0, {"address_prefix": "10.0.0.2", "prefix_len": 32}
    )
    chains.append(twin)
    with pytest.raises(ConfigError) as info:
        compile_dict(d)
    assert info.value.path == f"{L0}.filter_chains[2].filter_chain_match"
    assert "filter chains 1 and 2 have the same match" in str(info.value)
