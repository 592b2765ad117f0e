"""Load balancing over a cluster's endpoints, by index, with Envoy's policies.

- Round robin: equal weights cycle through the hosts in order from a random start;
  unequal weights use an earliest-deadline-first schedule (as Envoy does) with
  exact integer deadlines, so every run of sum(weights) picks holds each host
  exactly `weight` times.
- Least request: equal weights use power-of-N choices (N = `choice_count`) on
  `active_requests`; unequal weights use an EDF schedule whose weight is
  recomputed for the picked host as `weight / (active_requests + 1) ** bias`.
- Random: weighted random (Envoy's RANDOM ignores weights; equal weights agree).

`choose(exclude)` never returns an excluded index; `choose_with_predicate` is
Envoy's retry host predicate instead: re-pick a few times, then accept.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol, TypeVar

from trellis.core.config import Cluster, LbPolicy


@dataclass(slots=True, eq=False)
class HostStats:
    """Live counters of one endpoint; the runtime updates them. Compared by identity."""

    active_requests: int = 0
    total_requests: int = 0
    connect_failures: int = 0
    successes: int = 0
    failures: int = 0
    active_connections: int = 0


class LoadBalancer(Protocol):
    def choose(self, exclude: Collection[int] = ()) -> int | None:
        """An endpoint index not in `exclude`; None if there is none."""
        ...


_Deadline = TypeVar("_Deadline", int, float)


def _edf_pick_excluding(
    heap: list[tuple[_Deadline, int]],
    exclude: Collection[int],
    step: Callable[[int], _Deadline],
) -> int | None:
    """Pick the earliest entry not in `exclude`. Skipped entries are rescheduled as if
    picked now, so an excluded host does not bank turns; None leaves the heap as it was."""
    skipped: list[tuple[_Deadline, int]] = []
    while heap:
        now, index = heapq.heappop(heap)
        if index in exclude:
            skipped.append((now, index))
            continue
        heapq.heappush(heap, (now + step(index), index))
        for _, other in skipped:
            heapq.heappush(heap, (now + step(other), other))
        return index
    for entry in skipped:
        heapq.heappush(heap, entry)
    return None


class RoundRobinBalancer:
    __slots__ = ("_heap", "_next", "_size", "_steps", "_weighted")

    def __init__(self, weights: Sequence[int], rng: random.Random) -> None:
        weights = [max(1, w) for w in weights]
        self._size = len(weights)
        self._weighted = len(set(weights)) > 1
        self._next = rng.randrange(self._size) if self._size else 0
        # Deadlines are multiples of lcm/weight: integers, so ties are exact.
        scale = math.lcm(*weights) if weights else 1
        self._steps = tuple(scale // w for w in weights)
        self._heap: list[tuple[int, int]] = [(step, i) for i, step in enumerate(self._steps)]
        heapq.heapify(self._heap)
        if self._weighted:
            for _ in range(self._next):  # a random phase, like the unweighted start
                self.choose()

    def choose(self, exclude: Collection[int] = ()) -> int | None:
        size = self._size
        if not size:
            return None
        if not self._weighted:
            if not exclude:  # the usual case, without the loop below
                index = self._next
                self._next = index + 1 if index + 1 < size else 0
                return index
            for _ in range(size):
                index = self._next
                self._next = index + 1 if index + 1 < size else 0
                if index not in exclude:
                    return index
            return None
        heap = self._heap
        if exclude:
            return _edf_pick_excluding(heap, exclude, self._steps.__getitem__)
        deadline, index = heap[0]
        heapq.heapreplace(heap, (deadline + self._steps[index], index))
        return index


class LeastRequestBalancer:
    __slots__ = ("_bias", "_choices", "_heap", "_hosts", "_rng", "_weighted", "_weights")

    def __init__(
        self,
        weights: Sequence[int],
        hosts: Sequence[HostStats],
        rng: random.Random,
        *,
        choice_count: int = 2,
        active_request_bias: float = 1.0,
    ) -> None:
        if len(weights) != len(hosts):
            raise ValueError("one HostStats per endpoint is required")
        self._weights = tuple(max(1, w) for w in weights)
        self._hosts = hosts
        self._rng = rng
        self._choices = max(1, choice_count)
        self._bias = active_request_bias
        self._weighted = len(set(self._weights)) > 1
        self._heap: list[tuple[float, int]] = [(1.0 / w, i) for i, w in enumerate(self._weights)]
        heapq.heapify(self._heap)

    def _effective_weight(self, index: int) -> float:
        active = self._hosts[index].active_requests
        bias = self._bias
        if bias == 1.0:
            return self._weights[index] / (active + 1)
        return self._weights[index] / math.pow(active + 1, bias)

    def _interval(self, index: int) -> float:
        return 1.0 / self._effective_weight(index)

    def choose(self, exclude: Collection[int] = ()) -> int | None:
        if self._weighted:
            return self._choose_edf(exclude)
        size = len(self._hosts)
        candidates: Sequence[int] = range(size)
        if exclude:
            candidates = [i for i in candidates if i not in exclude]
            size = len(candidates)
        if size == 0:
            return None
        if size == 1:
            return candidates[0]
        hosts = self._hosts
        rand = self._rng.random  # int(random() * n) < n for every n below 2**53
        best = candidates[int(rand() * size)]
        best_active = hosts[best].active_requests
        for _ in range(self._choices - 1):
            index = candidates[int(rand() * size)]
            active = hosts[index].active_requests
            if active < best_active:
                best, best_active = index, active
        return best

    def _choose_edf(self, exclude: Collection[int]) -> int | None:
        heap = self._heap
        if not heap:
            return None
        if exclude:
            return _edf_pick_excluding(heap, exclude, self._interval)
        deadline, index = heap[0]
        heapq.heapreplace(heap, (deadline + self._interval(index), index))
        return index


class RandomBalancer:
    __slots__ = ("_cumulative", "_rng", "_size", "_total", "_weighted", "_weights")

    def __init__(self, weights: Sequence[int], rng: random.Random) -> None:
        self._weights = tuple(max(1, w) for w in weights)
        self._size = len(self._weights)
        self._rng = rng
        self._weighted = len(set(self._weights)) > 1
        self._cumulative = tuple(accumulate(self._weights))
        self._total = self._cumulative[-1] if self._cumulative else 0

    def choose(self, exclude: Collection[int] = ()) -> int | None:
        if not self._size:
            return None
        rand = self._rng.random
        if not exclude:
            if not self._weighted:
                return int(rand() * self._size)
            return bisect_right(self._cumulative, int(rand() * self._total))
        allowed = [i for i in range(self._size) if i not in exclude]
        if not allowed:
            return None
        if not self._weighted:
            return allowed[int(rand() * len(allowed))]
        cumulative = tuple(accumulate(self._weights[i] for i in allowed))
        return allowed[bisect_right(cumulative, int(rand() * cumulative[-1]))]


def make_balancer(cluster: Cluster, hosts: Sequence[HostStats], rng: random.Random) -> LoadBalancer:
    """The balancer for `cluster.lb_policy`; `hosts[i]` belongs to `cluster.endpoints[i]`."""
    weights = [endpoint.weight for endpoint in cluster.endpoints]
    policy = cluster.lb_policy
    if policy is LbPolicy.ROUND_ROBIN:
        return RoundRobinBalancer(weights, rng)
    if policy is LbPolicy.LEAST_REQUEST:
        return LeastRequestBalancer(
            weights, hosts, rng, choice_count=cluster.least_request_choice_count
        )
    return RandomBalancer(weights, rng)


def choose_with_predicate(
    balancer: LoadBalancer, exclude: Collection[int], max_attempts: int
) -> int | None:
    """Envoy's previous-hosts predicate: pick, and while the pick is in `exclude` pick
    again, up to `max_attempts` more times; then use the last pick anyway."""
    index = balancer.choose()
    attempts = 0
    while index is not None and index in exclude and attempts < max_attempts:
        index = balancer.choose()
        attempts += 1
    return index
