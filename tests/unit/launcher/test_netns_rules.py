"""Transparent capture's settings, names, addresses and iptables rules (pure, no I/O)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from trellis.platform.netns_rules import (
    IFNAME_MAX,
    CaptureRules,
    NetworkError,
    NetworkRecord,
    NetworkSettings,
    capture_rules,
    forward_rules,
    free_address,
    hosts_file,
)

ISTIO_LIKE_DEFAULT = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:TRELLIS_INBOUND - [0:0]
:TRELLIS_IN_REDIRECT - [0:0]
:TRELLIS_OUTPUT - [0:0]
:TRELLIS_REDIRECT - [0:0]
-A PREROUTING -p tcp -j TRELLIS_INBOUND
-A OUTPUT -p tcp -j TRELLIS_OUTPUT
-A TRELLIS_INBOUND -p tcp --dport 15000 -j RETURN
-A TRELLIS_INBOUND -p tcp --dport 15020 -j RETURN
-A TRELLIS_INBOUND -p tcp --dport 15021 -j RETURN
-A TRELLIS_INBOUND -p tcp --dport 15090 -j RETURN
-A TRELLIS_INBOUND -p tcp -j TRELLIS_IN_REDIRECT
-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A TRELLIS_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A TRELLIS_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j TRELLIS_IN_REDIRECT
-A TRELLIS_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A TRELLIS_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A TRELLIS_OUTPUT -d 127.0.0.1/32 -j RETURN
-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT
-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""


def test_default_rules_are_istios_redirect_mode_with_the_proxy_group() -> None:
    assert capture_rules(CaptureRules.from_settings(NetworkSettings())) == ISTIO_LIKE_DEFAULT


def test_rules_follow_the_settings() -> None:
    settings = NetworkSettings(
        proxy_gid=2000,
        outbound_port=16001,
        inbound_port=16006,
        exclude_inbound_ports=(22, 15000),
        exclude_outbound_ports=(5432,),
    )
    text = capture_rules(CaptureRules.from_settings(settings))
    lines = text.splitlines()
    assert "-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 16001" in lines
    assert "-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006" in lines
    assert "-A TRELLIS_OUTPUT -m owner --gid-owner 2000 -j RETURN" in lines
    assert "1337" not in text
    excluded = [
        line for line in lines if line.startswith("-A TRELLIS_INBOUND") and "RETURN" in line
    ]
    assert [line.split("--dport ")[1].split()[0] for line in excluded] == [
        "15000", "15020", "15021", "15090", "22"
    ]  # fmt: skip
    # Excluded outbound ports pass before the catch-all redirect.
    assert lines.index("-A TRELLIS_OUTPUT -p tcp --dport 5432 -j RETURN") < lines.index(
        "-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT"
    )


def test_forward_rules_accept_the_bridge_both_ways() -> None:
    assert forward_rules("trellis0", "TRELLIS-FWD-trellis0") == [
        ["-A", "TRELLIS-FWD-trellis0", "-i", "trellis0", "-j", "ACCEPT"],
        ["-A", "TRELLIS-FWD-trellis0", "-o", "trellis0", "-j", "ACCEPT"],
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bridge": "a-bridge-name-too-long"}, "bridge: 'a-bridge-name-too-long'"),
        ({"bridge": "br/0"}, "bridge:"),
        ({"subnet": "10.213.0.0/33"}, "subnet: '10.213.0.0/33' is not an IPv4 network"),
        ({"subnet": "10.213.0.1/24"}, "subnet: '10.213.0.1/24' is not an IPv4 network"),
        ({"subnet": "10.213.0.0/30"}, "subnet: 10.213.0.0/30 must be a /16 to /29"),
        ({"subnet": "10.0.0.0/8"}, "must be a /16 to /29"),
        ({"subnet": "8.8.8.0/24"}, "not a private IPv4 range"),
        ({"subnet": "127.0.0.0/24"}, "not a private IPv4 range"),
        ({"prefix": "Trellis"}, "prefix: 'Trellis'"),
        ({"prefix": "trellis12"}, "prefix:"),
        ({"outbound_port": 0}, "outbound_port: port must be 1-65535"),
        ({"inbound_port": 70000}, "inbound_port: port must be 1-65535"),
        ({"exclude_inbound_ports": (0,)}, "exclude_inbound_ports:"),
        ({"inbound_port": 15001}, "outbound_port and inbound_port must differ"),
        ({"proxy_gid": -1}, "proxy_gid:"),
    ],
)
def test_bad_settings_name_their_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(NetworkError, match=re.escape(message)):
        NetworkSettings(**fields)  # type: ignore[arg-type]


def test_settings_from_the_environment_name_the_variable(tmp_path: Path) -> None:
    settings = NetworkSettings.from_environ(
        {
            "TRELLIS_NET_BRIDGE": "mesh0",
            "TRELLIS_NET_SUBNET": "192.168.77.0/24",
            "TRELLIS_NET_STATE_DIR": str(tmp_path),
        }
    )
    assert (settings.bridge, settings.subnet, settings.state_dir) == (
        "mesh0",
        "192.168.77.0/24",
        tmp_path,
    )
    assert settings.gateway == ipaddress.IPv4Address("192.168.77.1")
    assert NetworkSettings.from_environ({}) == NetworkSettings()
    with pytest.raises(NetworkError, match=r"^TRELLIS_NET_SUBNET: subnet: 'nope'"):
        NetworkSettings.from_environ({"TRELLIS_NET_SUBNET": "nope"})
    with pytest.raises(NetworkError, match=r"^TRELLIS_NET_BRIDGE: bridge:"):
        NetworkSettings.from_environ({"TRELLIS_NET_BRIDGE": "x" * 16})


def test_names_fit_the_kernel_and_are_recognised_by_prefix() -> None:
    settings = NetworkSettings(prefix="abcdefgh")
    assert settings.namespace_name("0a1b2c") == "abcdefgh-0a1b2c"
    assert len(settings.veth_name("0a1b2c")) <= IFNAME_MAX
    assert settings.owns_namespace("abcdefgh-0a1b2c")
    assert settings.owns_veth("abcdefgh0a1b2c")
    short = NetworkSettings(prefix="abcdefg")
    # One prefix never claims another's names, even when one starts with the other.
    assert not short.owns_veth("abcdefgh0a1b2c")
    assert not short.owns_namespace("abcdefgh-0a1b2c")
    assert not settings.owns_namespace("abcdefgh-0a1b2")
    assert not settings.owns_namespace("abcdefgh-check")
    assert len(NetworkSettings(bridge="b" * 15).forward_chain) <= 28  # iptables' chain limit


def test_free_address_skips_the_gateway_and_used_ones() -> None:
    network = ipaddress.IPv4Network("10.1.2.0/29")  # hosts .1-.6, .1 the gateway
    assert free_address(network, []) == ipaddress.IPv4Address("10.1.2.2")
    assert free_address(network, ["10.1.2.2", "10.1.2.4"]) == ipaddress.IPv4Address("10.1.2.3")
    assert free_address(network, [f"10.1.2.{i}" for i in range(2, 7)]) is None


def test_records_round_trip_and_bad_ones_are_refused() -> None:
    record = NetworkRecord(
        network_id="0a1b2c",
        workload="shop/web",
        namespace="trellis-0a1b2c",
        host_veth="trellis0a1b2c",
        bridge="trellis0",
        subnet="10.213.0.0/24",
        address="10.213.0.2",
        pid=1234,
        start_time=99,
    )
    assert NetworkRecord.from_json(record.to_json()) == record
    for text in ("{", "[]", '{"network_id": "x"}', record.to_json().replace('"trellis0"', "5")):
        with pytest.raises(NetworkError, match="not a network record"):
            NetworkRecord.from_json(text)


def test_hosts_file_keeps_localhost_and_ends_lines() -> None:
    text = hosts_file("10.96.0.5 payment payment.shop.svc.cluster.local")
    lines = text.splitlines()
    assert lines[0].split() == ["127.0.0.1", "localhost"]
    assert lines[-1] == "10.96.0.5 payment payment.shop.svc.cluster.local"
    assert text.endswith("\n")
    assert hosts_file("") == hosts_file("").rstrip("\n") + "\n"
