"""Virtual IP allocation: stable, unique, held after removal, and a clear error when full."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.xds.mesh.vips import (
    DEFAULT_VIP_RANGE,
    VipPolicy,
    VipRange,
    VipRangeExhaustedError,
    VipTable,
)

POLICY = VipPolicy(VipRange.parse(DEFAULT_VIP_RANGE), hold=60.0)


def _ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def test_hosts_get_the_lowest_addresses_of_the_class_e_range() -> None:
    table = VipTable().reconcile(["b.example", "a.example"], POLICY, now=0.0)
    assert table.assigned == {"a.example": _ip("240.240.0.1"), "b.example": _ip("240.240.0.2")}


def test_an_address_stays_with_its_host_when_others_come_and_go() -> None:
    first = VipTable().reconcile(["m", "z"], POLICY, now=0.0)
    later = first.reconcile(["a", "m", "z", "b"], POLICY, now=1.0)
    assert later.address("m") == first.address("m")
    assert later.address("z") == first.address("z")
    assert len(set(later.assigned.values())) == 4
    assert later.reconcile(["a", "m", "z", "b"], POLICY, now=2.0) == later


def test_no_address_ending_in_0_or_255_is_given() -> None:
    small = VipPolicy(VipRange.parse("240.240.0.0/23"), hold=60.0)
    hosts = [f"h{i:03}" for i in range(small.range.capacity)]
    table = VipTable().reconcile(hosts, small, now=0.0)
    octets = {int(address) & 0xFF for address in table.assigned.values()}
    assert small.range.capacity == 2 * 254
    assert 0 not in octets and 255 not in octets
    assert len(set(table.assigned.values())) == len(hosts)


def test_a_removed_host_gets_its_address_back_within_the_hold() -> None:
    table = VipTable().reconcile(["payment", "orders"], POLICY, now=0.0)
    address = table.address("payment")
    gone = table.reconcile(["orders"], POLICY, now=10.0)
    assert gone.address("payment") is None
    assert gone.held["payment"].address == address
    # Held: a newcomer does not get it ...
    newcomer = gone.reconcile(["orders", "fresh"], POLICY, now=20.0)
    assert newcomer.address("fresh") != address
    # ... and the host coming back does.
    back = newcomer.reconcile(["orders", "fresh", "payment"], POLICY, now=30.0)
    assert back.address("payment") == address
    assert "payment" not in back.held


def test_a_held_address_is_freed_after_the_hold() -> None:
    table = VipTable().reconcile(["payment"], POLICY, now=0.0)
    gone = table.reconcile([], POLICY, now=100.0)
    later = gone.reconcile(["other"], POLICY, now=100.0 + POLICY.hold)
    assert later.held == {}
    assert later.address("other") == _ip("240.240.0.1")


def test_a_full_range_reuses_held_addresses_oldest_first() -> None:
    tiny = VipPolicy(VipRange.parse("240.240.0.0/30"), hold=3600.0)  # .1 and .2
    table = VipTable().reconcile(["a", "b"], tiny, now=0.0)
    table = table.reconcile(["b"], tiny, now=1.0)  # a's .1 held since 1
    table = table.reconcile([], tiny, now=2.0)  # b's .2 held since 2
    table = table.reconcile(["c"], tiny, now=3.0)
    assert table.address("c") == _ip("240.240.0.1")
    assert set(table.held) == {"b"}


def test_exhaustion_is_an_error_naming_the_range_and_keeps_what_fitted() -> None:
    tiny = VipPolicy(VipRange.parse("240.240.0.0/30"), hold=3600.0)
    with pytest.raises(VipRangeExhaustedError) as caught:
        VipTable().reconcile(["a", "b", "c"], tiny, now=0.0)
    message = str(caught.value)
    assert "240.240.0.0/30" in message and "2 addresses" in message and "c" in message
    assert caught.value.unallocated == ("c",)
    assert set(caught.value.partial.assigned) == {"a", "b"}


def test_assignments_outside_a_changed_range_are_given_new_addresses() -> None:
    table = VipTable().reconcile(["a"], POLICY, now=0.0)
    other = VipPolicy(VipRange.parse("10.99.0.0/24"), hold=60.0)
    moved = table.reconcile(["a"], other, now=1.0)
    assert moved.address("a") == _ip("10.99.0.1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("240.240.0.0", "no usable address"),
        ("240.240.0.1/16", "host bits set"),
        ("fd00::/64", "must be an IPv4 block"),
        ("nonsense", "is not an IPv4 CIDR block"),
        ("240.240.0.0/32", "no usable address"),
    ],
)
def test_a_bad_range_names_the_setting(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        VipRange.parse(text, "--service-vip-range")
    assert "--service-vip-range" in str(caught.value)


def test_capacity_counts_what_addresses_yields() -> None:
    for text in ("240.240.0.0/16", "10.0.0.0/22", "10.0.0.0/30", "10.0.0.0/31", "10.0.1.0/25"):
        vip_range = VipRange.parse(text)
        assert vip_range.capacity == sum(1 for _ in vip_range.addresses()), text
    assert VipRange.parse("240.240.0.0/16").capacity == 256 * 254


def test_check_refuses_a_shared_address() -> None:
    shared = VipTable({"a": _ip("240.240.0.1"), "b": _ip("240.240.0.1")})
    with pytest.raises(ValueError, match="given to both 'a' and 'b'"):
        shared.check()


hosts = st.lists(st.sampled_from([f"s{i}" for i in range(12)]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(hosts, min_size=1, max_size=8))
def test_any_sequence_of_changes_keeps_addresses_unique_and_stable(steps: list[list[str]]) -> None:
    policy = VipPolicy(VipRange.parse("240.240.0.0/28"), hold=5.0)  # 14 addresses, 12 hosts
    table = VipTable()
    for now, wanted in enumerate(steps):
        before = table
        table = table.reconcile(wanted, policy, now=float(now))
        table.check()
        assert set(table.assigned) == set(wanted)
        for host in wanted:
            if host in before.assigned:
                assert table.assigned[host] == before.assigned[host]
