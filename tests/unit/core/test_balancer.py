"""Load balancers: exact round robin cycles, least-request preference, weighted random."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.core.addresses import SocketAddress
from trellis.core.balancer import (
    HostStats,
    LeastRequestBalancer,
    LoadBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    choose_with_predicate,
    make_balancer,
)
from trellis.core.config import Cluster, Endpoint, LbPolicy


def picks(balancer: LoadBalancer, count: int) -> list[int]:
    out = []
    for _ in range(count):
        index = balancer.choose()
        assert index is not None
        out.append(index)
    return out


def cluster(policy: LbPolicy, *weights: int, choice_count: int = 2) -> Cluster:
    endpoints = tuple(
        Endpoint(SocketAddress("10.0.0.1", 8000 + i), w) for i, w in enumerate(weights)
    )
    return Cluster("c", endpoints, lb_policy=policy, least_request_choice_count=choice_count)


def test_host_stats_are_mutable_counters() -> None:
    stats = HostStats()
    assert (stats.active_requests, stats.total_requests, stats.failures) == (0, 0, 0)
    stats.active_requests += 2
    assert stats.active_requests == 2
    with pytest.raises(AttributeError):
        stats.other = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [RoundRobinBalancer, RandomBalancer])
def test_no_endpoints(cls: type[RoundRobinBalancer] | type[RandomBalancer]) -> None:
    assert cls([], random.Random(1)).choose() is None


def test_least_request_with_no_endpoints() -> None:
    assert LeastRequestBalancer([], [], random.Random(1)).choose() is None
    assert (
        LeastRequestBalancer([1, 2], [HostStats(), HostStats()], random.Random(1)).choose({0, 1})
        is None
    )


# --- round robin ---------------------------------------------------------------------------


@given(st.integers(1, 12), st.integers(0, 2**32))
def test_round_robin_equal_weights_cycles_in_order(size: int, seed: int) -> None:
    rr = RoundRobinBalancer([3] * size, random.Random(seed))
    seq = picks(rr, size * 3)
    start = seq[0]
    assert seq == [(start + i) % size for i in range(size * 3)]


@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(0, 2**32), st.integers(0, 40)
)
def test_weighted_round_robin_is_exact_over_any_full_cycle(
    weights: list[int], seed: int, skip: int
) -> None:
    rr = RoundRobinBalancer(weights, random.Random(seed))
    picks(rr, skip)
    total = sum(weights)
    for _ in range(2):
        counts = Counter(picks(rr, total))
        assert [counts[i] for i in range(len(weights))] == weights


def test_weighted_round_robin_spreads_heavy_host() -> None:
    rr = RoundRobinBalancer([1, 1, 4], random.Random(0))
    seq = picks(rr, 60)
    # The heavy host is never absent for a whole half-cycle.
    assert all(2 in seq[i : i + 3] for i in range(len(seq) - 3))


@pytest.mark.parametrize("weights", [[1, 1, 1, 1], [1, 2, 3, 4]])
def test_round_robin_exclude(weights: list[int]) -> None:
    rr = RoundRobinBalancer(weights, random.Random(7))
    for _ in range(50):
        assert rr.choose({0, 2}) in (1, 3)
    assert rr.choose({0, 1, 2, 3}) is None
    # Exclusion does not break the schedule for later plain picks.
    assert sorted(set(picks(rr, 20))) == [0, 1, 2, 3]


def test_weighted_round_robin_exclude_keeps_proportions_of_the_rest() -> None:
    rr = RoundRobinBalancer([1, 2, 3], random.Random(3))
    counts = Counter(rr.choose({0}) for _ in range(500))
    assert set(counts) == {1, 2}
    assert 0.55 < counts[2] / 500 < 0.65


@pytest.mark.parametrize("weights", [[1, 2, 3], [100, 1, 1]])
def test_excluded_host_does_not_bank_turns(weights: list[int]) -> None:
    rr = RoundRobinBalancer(weights, random.Random(6))
    hosts = [HostStats(), HostStats(), HostStats()]
    lr = LeastRequestBalancer(weights, hosts, random.Random(6))
    total = sum(weights)
    for balancer in (rr, lr):
        for _ in range(10 * total):
            balancer.choose({0})
        counts = Counter(picks(balancer, total))
        assert counts[0] <= weights[0] + 1
        assert counts[1] >= weights[1] - 1


# --- least request -----------------------------------------------------------------------


def test_least_request_prefers_the_idle_host() -> None:
    hosts = [HostStats(active_requests=10), HostStats(active_requests=0)]
    lr = LeastRequestBalancer([1, 1], hosts, random.Random(5))
    counts = Counter(picks(lr, 2000))
    # P2C with replacement: the busy host wins only when drawn twice (1/4).
    assert 0.70 < counts[1] / 2000 < 0.80
    many = LeastRequestBalancer([1, 1], hosts, random.Random(5), choice_count=20)
    assert Counter(picks(many, 500))[1] >= 499


@given(st.lists(st.integers(0, 5), min_size=2, max_size=8), st.integers(0, 2**32))
def test_least_request_never_picks_the_busiest_when_choices_cover_everything(
    active: list[int], seed: int
) -> None:
    hosts = [HostStats(active_requests=a) for a in active]
    lr = LeastRequestBalancer([1] * len(active), hosts, random.Random(seed), choice_count=200)
    for _ in range(5):
        chosen = lr.choose()
        assert chosen is not None
        assert active[chosen] == min(active)


def test_least_request_single_host_and_exclude() -> None:
    hosts = [HostStats(), HostStats(active_requests=9), HostStats()]
    lr = LeastRequestBalancer([1, 1, 1], hosts, random.Random(2))
    for _ in range(50):
        assert lr.choose({0, 2}) == 1
    assert LeastRequestBalancer([1], hosts[:1], random.Random(2)).choose() == 0


def test_weighted_least_request_without_load_follows_weights() -> None:
    hosts = [HostStats(), HostStats(), HostStats()]
    lr = LeastRequestBalancer([1, 2, 4], hosts, random.Random(1))
    counts = Counter(picks(lr, 7 * 20))
    assert [counts[i] for i in range(3)] == [20, 40, 80]


def test_weighted_least_request_penalises_active_requests() -> None:
    # Effective weights: 2 / (4 + 1) = 0.4 against 1 / 1 = 1.
    hosts = [HostStats(active_requests=4), HostStats(active_requests=0)]
    lr = LeastRequestBalancer([2, 1], hosts, random.Random(1))
    counts = Counter(picks(lr, 700))
    assert 0.26 < counts[0] / 700 < 0.32
    unbiased = LeastRequestBalancer([2, 1], hosts, random.Random(1), active_request_bias=0.0)
    counts = Counter(picks(unbiased, 300))
    assert counts[0] == 200


def test_weighted_least_request_exclude() -> None:
    hosts = [HostStats(), HostStats(), HostStats()]
    lr = LeastRequestBalancer([1, 2, 3], hosts, random.Random(1))
    assert {lr.choose({1}) for _ in range(30)} == {0, 2}
    assert lr.choose({0, 1, 2}) is None


def test_least_request_requires_stats_per_endpoint() -> None:
    with pytest.raises(ValueError):
        LeastRequestBalancer([1, 1], [HostStats()], random.Random(1))


# --- random ------------------------------------------------------------------------------


def test_random_is_weighted() -> None:
    rb = RandomBalancer([1, 3], random.Random(11))
    counts = Counter(picks(rb, 20000))
    assert 0.73 < counts[1] / 20000 < 0.77


def test_random_equal_weights_is_uniform_and_excludes() -> None:
    rb = RandomBalancer([1, 1, 1, 1], random.Random(4))
    counts = Counter(picks(rb, 8000))
    assert all(1850 < counts[i] < 2150 for i in range(4))
    assert {rb.choose({1, 3}) for _ in range(100)} == {0, 2}
    assert rb.choose({0, 1, 2, 3}) is None


def test_weighted_random_exclude_reweights_the_rest() -> None:
    rb = RandomBalancer([5, 1, 3], random.Random(9))
    counts = Counter(rb.choose({0}) for _ in range(8000))
    assert set(counts) == {1, 2}
    assert 0.72 < counts[2] / 8000 < 0.78


# --- factory and retry predicate -----------------------------------------------------------


def test_make_balancer_by_policy() -> None:
    rng = random.Random(1)
    stats = [HostStats(), HostStats()]
    assert isinstance(
        make_balancer(cluster(LbPolicy.ROUND_ROBIN, 1, 1), stats, rng), RoundRobinBalancer
    )
    assert isinstance(make_balancer(cluster(LbPolicy.RANDOM, 1, 1), stats, rng), RandomBalancer)
    lr = make_balancer(cluster(LbPolicy.LEAST_REQUEST, 1, 1, choice_count=50), stats, rng)
    assert isinstance(lr, LeastRequestBalancer)
    stats[0].active_requests = 3
    assert Counter(picks(lr, 200))[1] == 200  # 50 choices always see the idle host


def test_make_balancer_uses_endpoint_weights() -> None:
    rr = make_balancer(
        cluster(LbPolicy.ROUND_ROBIN, 1, 3), [HostStats(), HostStats()], random.Random(2)
    )
    counts = Counter(picks(rr, 8))
    assert (counts[0], counts[1]) == (2, 6)


def test_choose_with_predicate_repicks_then_gives_up() -> None:
    rr = RoundRobinBalancer([1] * 5, random.Random(8))
    start = rr.choose()
    assert start is not None
    # The next pick is excluded, so the one after it is used.
    assert choose_with_predicate(rr, {(start + 1) % 5}, 1) == (start + 2) % 5
    # Everything excluded: 1 + 2 picks, then the last one is used anyway.
    assert choose_with_predicate(rr, set(range(5)), 2) == (start + 5) % 5
    assert rr.choose() == (start + 6) % 5
    # No re-selection allowed: the first pick stands even if excluded.
    assert choose_with_predicate(rr, set(range(5)), 0) == (start + 7) % 5
    assert choose_with_predicate(RoundRobinBalancer([], random.Random(1)), set(), 3) is None
