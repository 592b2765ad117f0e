"""Outlier detection: eject hosts after consecutive errors, with Envoy's rules.

One `OutlierDetector` per cluster, hosts by index. The runtime reports each
outcome (`record`) and calls `sweep` often (it acts every `interval`); the
time is always passed in. `unavailable` is what host selection must skip:
the ejected hosts, or nothing while the cluster is in panic.

Envoy's semantics (`source/common/upstream/outlier_detection_impl.cc`):

- A 5xx bumps the consecutive-5xx count; a 502/503/504 also bumps the
  consecutive-gateway count (another 5xx resets that one); any other status
  resets both. A local origin failure counts as a gateway error.
- A count trips when it reaches its threshold. The host is ejected if, with
  it, at most `max_ejection_percent` of all hosts are ejected (or none is and
  `always_eject_one_host`), and then only with the `enforcing_*` chance. The
  count that tripped starts again from zero either way.
- Ejection lasts `min(base_ejection_time * backoff, max_ejection_time)` plus
  jitter; each ejection raises `backoff` by one (while it can still grow the
  time); every `interval` a host that stayed in service lowers it by one.
  Hosts come back only at a sweep, with their counts cleared.
- Panic (`healthy_panic_threshold`, one priority level): with overprovisioning
  factor 1.4, while `min(100, 140 * healthy // hosts) < 100` and the healthy
  percentage is below the threshold, balance over all hosts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from trellis.core.balancer import LoadBalancer
from trellis.core.config import OutlierDetection

_OVERPROVISIONING = 140  # Envoy's default factor, 1.4, in percent


class Outcome(enum.Enum):
    """What one request to a host came to, as outlier detection sees it."""

    SUCCESS = "success"  # any status below 500
    SERVER_ERROR = "5xx"  # 500, 501, 505..599
    GATEWAY_ERROR = "gateway_error"  # 502, 503, 504
    LOCAL_FAILURE = "local_failure"  # connect failure, reset, timeout


def outcome_for_status(status: int) -> Outcome:
    """The outcome of an upstream response status."""
    if status < 500:
        return Outcome.SUCCESS
    if 502 <= status <= 504:
        return Outcome.GATEWAY_ERROR
    return Outcome.SERVER_ERROR


@dataclass(slots=True)
class OutlierStats:
    """Envoy's `cluster.<name>.outlier_detection.*` counters (the gauge is computed)."""

    ejections_total: int = 0  # deprecated in Envoy: 5xx ejections passing the percent check
    ejections_consecutive_5xx: int = 0  # deprecated in Envoy: consecutive-5xx detections
    ejections_overflow: int = 0
    ejections_enforced_total: int = 0
    ejections_detected_consecutive_5xx: int = 0
    ejections_enforced_consecutive_5xx: int = 0
    ejections_detected_consecutive_gateway_failure: int = 0
    ejections_enforced_consecutive_gateway_failure: int = 0


class _HostState:
    __slots__ = (
        "backoff",
        "consecutive_5xx",
        "consecutive_gateway",
        "ejected",
        "ejected_at",
        "jitter",
        "num_ejections",
        "unejected_at",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejected = False
        self.ejected_at = 0.0
        self.unejected_at: float | None = None
        self.backoff = 0
        self.num_ejections = 0
        self.jitter = 0.0


class OutlierDetector:
    """The outlier state of one cluster's hosts (mutable; one event loop owns it)."""

    __slots__ = (
        "_active",
        "_hosts",
        "_next_sweep",
        "_rand",
        "config",
        "panic",
        "panic_threshold",
        "stats",
        "unavailable",
    )

    def __init__(
        self,
        config: OutlierDetection,
        hosts: int,
        now: float,
        rand: Callable[[], float],
        *,
        panic_threshold: float = 50.0,
    ) -> None:
        """`rand()` is uniform in [0, 1): it decides enforcement chances and jitter."""
        self.config = config
        self.panic_threshold = panic_threshold
        self.stats = OutlierStats()
        self._rand = rand
        self._hosts = [_HostState() for _ in range(hosts)]
        self._active = 0
        self._next_sweep = now + config.interval
        self.panic = False
        self.unavailable: frozenset[int] = frozenset()

    # -- queries --------------------------------------------------------------------

    @property
    def ejections_active(self) -> int:
        return self._active

    def ejected(self, index: int) -> bool:
        return self._hosts[index].ejected

    def ejected_hosts(self) -> frozenset[int]:
        return frozenset(i for i, host in enumerate(self._hosts) if host.ejected)

    def num_ejections(self, index: int) -> int:
        return self._hosts[index].num_ejections

    # -- events ---------------------------------------------------------------------

    def record(self, index: int, outcome: Outcome, now: float) -> None:
        """One outcome of a request to host `index`; may eject it."""
        host = self._hosts[index]
        if outcome is Outcome.SUCCESS:
            host.consecutive_5xx = 0
            host.consecutive_gateway = 0
            return
        config = self.config
        if outcome is Outcome.SERVER_ERROR:
            host.consecutive_gateway = 0
        else:
            host.consecutive_gateway += 1
            if host.consecutive_gateway == config.consecutive_gateway_failure:
                self._tripped_gateway(host, now)
        host.consecutive_5xx += 1
        if host.consecutive_5xx == config.consecutive_5xx:
            self._tripped_5xx(host, now)

    def sweep(self, now: float) -> None:
        """Call often; every `interval` it returns hosts whose ejection time is over."""
        if now < self._next_sweep:
            return
        config = self.config
        self._next_sweep = now + config.interval
        base, longest = config.base_ejection_time, config.max_ejection_time
        changed = False
        for host in self._hosts:
            if host.ejected:
                ejected_for = min(base * host.backoff, longest)
                if now - host.ejected_at >= ejected_for + host.jitter:
                    host.ejected = False
                    host.unejected_at = now
                    host.consecutive_5xx = host.consecutive_gateway = 0
                    self._active -= 1
                    changed = True
            elif (
                host.backoff
                and host.unejected_at is not None
                and now - host.unejected_at >= config.interval
            ):
                host.backoff -= 1
        if changed:
            self._update_unavailable()

    def remap(self, keep: Sequence[int | None]) -> None:
        """The hosts changed: new host `i` is old host `keep[i]`, or new when None."""
        old = self._hosts
        self._hosts = [old[k] if k is not None else _HostState() for k in keep]
        self._active = sum(1 for host in self._hosts if host.ejected)
        self._update_unavailable()

    # -- ejection -------------------------------------------------------------------

    def _tripped_5xx(self, host: _HostState, now: float) -> None:
        if host.ejected:
            return
        stats = self.stats
        stats.ejections_detected_consecutive_5xx += 1
        if self._may_eject():
            stats.ejections_total += 1
            if self._enforced(self.config.enforcing_consecutive_5xx):
                stats.ejections_enforced_consecutive_5xx += 1
                self._eject(host, now)
        stats.ejections_consecutive_5xx += 1
        host.consecutive_5xx = 0

    def _tripped_gateway(self, host: _HostState, now: float) -> None:
        if host.ejected:
            return
        stats = self.stats
        stats.ejections_detected_consecutive_gateway_failure += 1
        if self._may_eject() and self._enforced(self.config.enforcing_consecutive_gateway_failure):
            stats.ejections_enforced_consecutive_gateway_failure += 1
            self._eject(host, now)
        host.consecutive_gateway = 0

    def _may_eject(self) -> bool:
        """The max-ejection-percent rule; a refusal counts as an overflow."""
        config = self.config
        active = self._active
        allowed = 100 * (active + 1) <= config.max_ejection_percent * len(self._hosts)
        if config.always_eject_one_host and active == 0:
            allowed = True
        if not allowed:
            self.stats.ejections_overflow += 1
        return allowed

    def _enforced(self, percent: int) -> bool:
        return percent >= 100 or (percent > 0 and self._rand() * 100 < percent)

    def _eject(self, host: _HostState, now: float) -> None:
        config = self.config
        self.stats.ejections_enforced_total += 1
        self._active += 1
        host.ejected = True
        host.ejected_at = now
        host.num_ejections += 1
        host.jitter = (
            int(self._rand() * (int(config.max_ejection_time_jitter * 1000) + 1)) / 1000
            if config.max_ejection_time_jitter
            else 0.0
        )
        base = config.base_ejection_time
        if host.backoff * base < config.max_ejection_time + base:
            host.backoff += 1
        self._update_unavailable()

    def _update_unavailable(self) -> None:
        total = len(self._hosts)
        healthy = total - self._active
        self.panic = in_panic(healthy, total, self.panic_threshold)
        if self.panic or not self._active:
            self.unavailable = frozenset()
        else:
            self.unavailable = frozenset(i for i, host in enumerate(self._hosts) if host.ejected)


def in_panic(healthy: int, total: int, threshold: float) -> bool:
    """Envoy's panic rule for a single priority level (threshold in percent)."""
    if total == 0 or threshold <= 0:
        return False
    if min(100, _OVERPROVISIONING * healthy // total) >= 100:
        return False
    return 100.0 * healthy / total < threshold


def choose_available(
    balancer: LoadBalancer, unavailable: Collection[int], exclude: Collection[int], attempts: int
) -> int | None:
    """A host not in `unavailable`; while it is in `exclude` (the retry host predicate),
    pick again up to `attempts` more times, then take the last pick."""
    index = balancer.choose(unavailable)
    tries = 0
    while index is not None and index in exclude and tries < attempts:
        index = balancer.choose(unavailable)
        tries += 1
    return index
