"""Outlier detection: consecutive-error ejection, its timing, limits and the panic threshold."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from trellis.core.balancer import RoundRobinBalancer
from trellis.core.config import OutlierDetection
from trellis.core.outlier import (
    Outcome,
    OutlierDetector,
    choose_available,
    in_panic,
    outcome_for_status,
)

FIVE = Outcome.SERVER_ERROR
GATEWAY = Outcome.GATEWAY_ERROR
OK = Outcome.SUCCESS


def detector(
    hosts: int = 2,
    *,
    rand: float = 0.0,
    panic: float = 50.0,
    **config: int | float | bool,
) -> OutlierDetector:
    policy = OutlierDetection(**{"max_ejection_percent": 100, **config})  # type: ignore[arg-type]
    return OutlierDetector(policy, hosts, 0.0, lambda: rand, panic_threshold=panic)


def errors(d: OutlierDetector, index: int, count: int, now: float, outcome: Outcome = FIVE) -> None:
    for _ in range(count):
        d.record(index, outcome, now)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        *[(200, OK), (101, OK), (404, OK), (499, OK)],
        *[(500, FIVE), (501, FIVE), (505, FIVE), (599, FIVE)],
        *[(502, GATEWAY), (503, GATEWAY), (504, GATEWAY)],
    ],
)
def test_outcome_for_status(status: int, outcome: Outcome) -> None:
    assert outcome_for_status(status) is outcome


def test_ejects_after_consecutive_5xx() -> None:
    d = detector(consecutive_5xx=3)
    errors(d, 0, 2, 1.0)
    assert not d.ejected(0) and d.unavailable == frozenset()
    d.record(0, FIVE, 1.0)
    assert d.ejected(0)
    assert d.unavailable == frozenset({0})
    assert d.ejections_active == 1
    assert d.stats.ejections_enforced_total == 1
    assert d.stats.ejections_detected_consecutive_5xx == 1
    assert d.stats.ejections_enforced_consecutive_5xx == 1


def test_success_resets_the_count() -> None:
    d = detector(consecutive_5xx=3)
    errors(d, 0, 2, 1.0)
    d.record(0, OK, 1.0)
    errors(d, 0, 2, 1.0)
    assert not d.ejected(0)
    d.record(0, FIVE, 1.0)
    assert d.ejected(0)


def test_hosts_are_counted_separately() -> None:
    d = detector(consecutive_5xx=3)
    for _ in range(2):
        d.record(0, FIVE, 1.0)
        d.record(1, FIVE, 1.0)
    assert d.ejected_hosts() == frozenset()
    d.record(1, FIVE, 1.0)
    assert d.ejected_hosts() == frozenset({1})


def test_gateway_failures_are_detected_but_not_enforced_by_default() -> None:
    d = detector(consecutive_5xx=100)
    errors(d, 0, 5, 1.0, GATEWAY)
    assert d.stats.ejections_detected_consecutive_gateway_failure == 1
    assert not d.ejected(0)


def test_gateway_failures_eject_when_enforced() -> None:
    d = detector(consecutive_5xx=100, enforcing_consecutive_gateway_failure=100)
    errors(d, 0, 4, 1.0, GATEWAY)
    d.record(0, FIVE, 1.0)  # a 500 breaks the run of gateway errors
    errors(d, 0, 4, 1.0, GATEWAY)
    assert not d.ejected(0)
    d.record(0, GATEWAY, 1.0)
    assert d.ejected(0)
    assert d.stats.ejections_enforced_consecutive_gateway_failure == 1


def test_local_failures_count_as_5xx_and_gateway_errors() -> None:
    five = detector(consecutive_5xx=3)
    errors(five, 0, 3, 1.0, Outcome.LOCAL_FAILURE)
    assert five.ejected(0)
    gateway = detector(consecutive_5xx=100, enforcing_consecutive_gateway_failure=100)
    errors(gateway, 0, 5, 1.0, Outcome.LOCAL_FAILURE)
    assert gateway.ejected(0)


def test_threshold_zero_never_trips() -> None:
    d = detector(consecutive_5xx=0, consecutive_gateway_failure=0)
    errors(d, 0, 50, 1.0, GATEWAY)
    assert not d.ejected(0)
    assert d.stats.ejections_detected_consecutive_5xx == 0


def test_enforcement_is_a_chance() -> None:
    kept = detector(consecutive_5xx=1, enforcing_consecutive_5xx=50, rand=0.6)
    kept.record(0, FIVE, 1.0)
    assert not kept.ejected(0)
    assert kept.stats.ejections_detected_consecutive_5xx == 1
    assert kept.stats.ejections_total == 1  # Envoy's deprecated counter counts it anyway
    assert kept.stats.ejections_enforced_total == 0
    ejected = detector(consecutive_5xx=1, enforcing_consecutive_5xx=50, rand=0.4)
    ejected.record(0, FIVE, 1.0)
    assert ejected.ejected(0)
    off = detector(consecutive_5xx=1, enforcing_consecutive_5xx=0)
    off.record(0, FIVE, 1.0)
    assert not off.ejected(0)


def test_returns_only_at_a_sweep_after_the_ejection_time() -> None:
    d = detector(consecutive_5xx=3, interval=10.0, base_ejection_time=30.0)
    errors(d, 0, 3, 1.0)
    for now in (10.0, 20.0, 30.0):  # 29 s after the ejection
        d.sweep(now)
        assert d.ejected(0), now
    d.sweep(35.0)  # before the next interval: nothing happens
    assert d.ejected(0)
    d.sweep(40.0)
    assert not d.ejected(0)
    assert d.unavailable == frozenset()
    assert d.ejections_active == 0
    # the counts were cleared: two more errors do not eject again
    errors(d, 0, 2, 41.0)
    assert not d.ejected(0)


def _ejection_length(d: OutlierDetector, start: float) -> float:
    """Eject host 0 at `start`, then sweep every second; how long it stayed out."""
    errors(d, 0, d.config.consecutive_5xx, start)
    assert d.ejected(0)
    now = start
    for _ in range(1000):
        now += 1.0
        d.sweep(now)
        if not d.ejected(0):
            return now - start
    raise AssertionError("never returned")


def test_ejection_time_grows_with_repeats_and_is_capped() -> None:
    d = detector(consecutive_5xx=1, interval=1.0, base_ejection_time=10.0, max_ejection_time=25.0)
    lengths = []
    start = 0.0
    for _ in range(4):
        lengths.append(_ejection_length(d, start))
        start += lengths[-1]  # fails again right after it returns
    assert lengths == [10.0, 20.0, 25.0, 25.0]
    assert d.num_ejections(0) == 4


def test_ejection_time_shrinks_again_while_healthy() -> None:
    d = detector(consecutive_5xx=1, interval=1.0, base_ejection_time=10.0)
    assert _ejection_length(d, 0.0) == 10.0
    assert _ejection_length(d, 10.0) == 20.0  # backoff 2
    now = 30.0
    for _ in range(5):  # healthy for a few intervals: backoff drops to 0
        now += 1.0
        d.sweep(now)
    assert _ejection_length(d, now) == 10.0


def test_max_ejection_time_defaults_to_at_least_base() -> None:
    assert OutlierDetection().max_ejection_time == 300.0


def test_jitter_lengthens_the_ejection() -> None:
    d = detector(
        consecutive_5xx=1,
        interval=0.25,
        base_ejection_time=1.0,
        max_ejection_time_jitter=1.0,
        rand=0.5,  # jitter 0.5 s (enforcement at 100% needs no chance)
    )
    d.record(0, FIVE, 0.0)
    d.sweep(1.25)
    assert d.ejected(0)
    d.sweep(1.5)
    assert not d.ejected(0)


def test_max_ejection_percent_limits_ejections() -> None:
    d = detector(10, consecutive_5xx=1, max_ejection_percent=20)
    for host in range(4):
        d.record(host, FIVE, 1.0)
    assert d.ejected_hosts() == frozenset({0, 1})
    assert d.stats.ejections_overflow == 2
    assert d.stats.ejections_enforced_total == 2


def test_small_cluster_ejects_nothing_at_ten_percent_unless_one_is_allowed() -> None:
    strict = detector(2, consecutive_5xx=1, max_ejection_percent=10)
    strict.record(0, FIVE, 1.0)
    assert not strict.ejected(0)
    assert strict.stats.ejections_overflow == 1
    one = detector(2, consecutive_5xx=1, max_ejection_percent=10, always_eject_one_host=True)
    one.record(0, FIVE, 1.0)
    one.record(1, FIVE, 1.0)
    assert one.ejected_hosts() == frozenset({0})


@pytest.mark.parametrize(
    ("healthy", "total", "threshold", "panic"),
    [
        (2, 2, 50.0, False),
        (1, 2, 50.0, False),  # 50% is not below 50%
        (0, 2, 50.0, True),
        (0, 2, 0.0, False),  # 0 disables panic
        (3, 4, 80.0, False),  # 75% * 1.4 >= 100%: the level counts as fully available
        (7, 10, 80.0, True),  # 70% * 1.4 = 98%
        (1, 3, 50.0, True),
        (4, 10, 40.0, False),
        (0, 0, 50.0, False),
    ],
)
def test_panic_rule(healthy: int, total: int, threshold: float, panic: bool) -> None:
    assert in_panic(healthy, total, threshold) is panic


def test_panic_balances_over_all_hosts() -> None:
    d = detector(3, consecutive_5xx=1, panic=50.0)
    d.record(0, FIVE, 1.0)
    assert (d.unavailable, d.panic) == (frozenset({0}), False)  # 2 of 3 healthy
    d.record(1, FIVE, 1.0)
    assert d.panic  # 1 of 3 healthy
    assert d.unavailable == frozenset()
    assert d.ejected_hosts() == frozenset({0, 1})


def test_no_panic_when_disabled_leaves_no_host() -> None:
    d = detector(2, consecutive_5xx=1, panic=0.0)
    d.record(0, FIVE, 1.0)
    d.record(1, FIVE, 1.0)
    assert d.unavailable == frozenset({0, 1})
    balancer = RoundRobinBalancer([1, 1], random.Random(1))
    assert choose_available(balancer, d.unavailable, (), 1) is None


def test_choose_available_skips_ejected_hosts() -> None:
    balancer = RoundRobinBalancer([1, 1, 1], random.Random(7))
    picks = Counter(choose_available(balancer, frozenset({1}), (), 1) for _ in range(30))
    assert picks == Counter({0: 15, 2: 15})
    # the retry predicate avoids a previous host among the available ones
    retried = {choose_available(balancer, frozenset({1}), [0], 3) for _ in range(10)}
    assert retried == {2}


def test_remap_keeps_the_state_of_hosts_that_stay() -> None:
    d = detector(3, consecutive_5xx=2)
    d.record(0, FIVE, 1.0)
    errors(d, 2, 2, 1.0)
    assert d.ejected_hosts() == frozenset({2})
    d.remap([2, None, 0])  # old host 2 is now first, old host 0 third
    assert d.ejected_hosts() == frozenset({0})
    assert d.unavailable == frozenset({0})
    d.record(2, FIVE, 1.0)  # old host 0 had one error already
    assert d.ejected_hosts() == frozenset({0, 2})
    d.remap([None, None])  # every ejected host is gone
    assert d.ejections_active == 0
    assert d.unavailable == frozenset()
