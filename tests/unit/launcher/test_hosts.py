"""A workload namespace's hosts file, rendered from the service-addresses answer."""

from __future__ import annotations

from typing import Any

import pytest

from trellis.platform.hosts import ServiceAddresses, render_hosts
from trellis.platform.spec import LaunchError


def _item(host: str, address: str, namespace: str, **extra: Any) -> dict[str, Any]:
    name = host.split(".", maxsplit=1)[0]
    item: dict[str, Any] = {
        "namespace": namespace,
        "serviceEntry": name,
        "host": host,
        "address": address,
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "names": [host, f"{name}.{namespace}", f"{name}.{namespace}.svc"],
        "shortNames": [name],
    }
    item.update(extra)
    return item


ANSWER = {
    "kind": "ServiceAddressList",
    "range": "240.240.0.0/16",
    "namespace": None,
    "items": [
        _item("ledger.bank.svc.cluster.local", "240.240.0.3", "bank"),
        _item("payment.shop.svc.cluster.local", "240.240.0.1", "shop"),
        _item("api.example.org", "240.240.0.2", "shop", names=["api.example.org"], shortNames=[]),
    ],
}


def test_the_hosts_file_of_a_namespace() -> None:
    addresses = ServiceAddresses.from_json(ANSWER)
    assert addresses.vip_range == "240.240.0.0/16"
    assert addresses.items[1].ports[0].number == 80
    text = render_hosts(addresses.items, "shop")
    lines = text.splitlines()
    assert lines[0].startswith("# ") and lines[1].startswith("# ")
    assert lines[2:] == [
        "240.240.0.3\tledger.bank.svc.cluster.local ledger.bank ledger.bank.svc",
        "240.240.0.1\tpayment.shop.svc.cluster.local payment.shop payment.shop.svc payment",
        "240.240.0.2\tapi.example.org",
    ]
    assert text.endswith("\n")


def test_short_names_only_in_the_services_own_namespace() -> None:
    items = ServiceAddresses.from_json(ANSWER).items
    from_bank = render_hosts(items, "bank")
    assert "\tledger.bank.svc.cluster.local ledger.bank ledger.bank.svc ledger\n" in from_bank
    assert " payment\n" not in from_bank and " payment " not in from_bank


def test_a_name_is_written_once_and_localhost_never_moves() -> None:
    answer = {
        "items": [
            _item("payment.shop.svc.cluster.local", "240.240.0.1", "shop"),
            _item("a.shop.svc.cluster.local", "240.240.0.5", "shop", shortNames=["payment"]),
            _item("b.shop.svc.cluster.local", "240.240.0.6", "shop", shortNames=["localhost"]),
            # the same host seen from two ServiceEntries: one line
            _item("payment.shop.svc.cluster.local", "240.240.0.1", "other"),
        ]
    }
    text = render_hosts(ServiceAddresses.from_json(answer).items, "shop")
    words = [
        word for line in text.splitlines() if not line.startswith("#") for word in line.split()
    ]
    assert words.count("payment") == 1 and words.count("localhost") == 0
    assert text.count("240.240.0.1\t") == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"address": "240.240.0.300"}, "items[0].address: '240.240.0.300' is not an IPv4"),
        ({"names": ["ok.example", "bad name"]}, "items[0].names[1]: 'bad name' is not a DNS name"),
        ({"shortNames": ["evil\n1.2.3.4 x"]}, "items[0].shortNames[0]"),
        ({"ports": [{"number": 0, "name": "x", "protocol": "TCP"}]}, "items[0].ports[0].number"),
        ({"host": ""}, "items[0].host: expected a non-empty string"),
    ],
)
def test_a_malformed_answer_is_refused_naming_the_field(
    change: dict[str, Any], message: str
) -> None:
    item = _item("payment.shop.svc.cluster.local", "240.240.0.1", "shop") | change
    answer = {"items": [item]}
    with pytest.raises(LaunchError) as caught:
        ServiceAddresses.from_json(answer)
    assert message in str(caught.value)


def test_an_answer_without_items_is_refused() -> None:
    with pytest.raises(LaunchError, match="items: expected a list"):
        ServiceAddresses.from_json({"kind": "Status"})
