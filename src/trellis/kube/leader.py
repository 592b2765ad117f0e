"""Leader election over a `coordination.k8s.io/v1` Lease, the pure half: a state machine.

Every control-plane replica serves; one of them, the holder of the Lease
(`spec.holderIdentity`, its pod name), also does what must happen once: create
the CA root when there is none, write status. The algorithm is client-go's
`leaderelection`:

- a candidate reads the Lease; none: it creates one naming itself; one held
  by another whose record has not changed for `lease_duration` (as measured
  on the candidate's own monotonic clock since it last saw the record change,
  so no two machines' clocks are compared): it takes it over; held by another
  and fresh: it waits;
- the leader renews (`spec.renewTime`) every `retry_period`, and steps down
  when it has not managed to renew for `renew_deadline` (< `lease_duration`,
  so it stops acting as leader before anyone may take over);
- every write carries the `resourceVersion` it read: the API server answers
  409 Conflict to all but one of several racing writers, and the losers read
  again (optimistic concurrency);
- on shutdown the leader releases the Lease (empty holder, 1 s duration) so a
  follower takes over at once.

`LeaderElection` decides; `trellis.controlplane.kube_leader` reads and writes.
Time comes in as arguments: `now` (monotonic seconds) for every decision,
`wall` (UTC) for the timestamps written to the Lease.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from trellis.errors import TrellisError

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"
DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_DEADLINE = 10.0
DEFAULT_RETRY_PERIOD = 2.0
JITTER = 0.2
"""Followers wait `retry_period * (1 + JITTER * u)`, u uniform in [0, 1), so they spread out."""
RELEASED_DURATION = 1


class LeaseFormatError(TrellisError):
    """A Lease read from the API server is not one this code can work with."""


@dataclass(frozen=True, slots=True)
class ElectionTiming:
    """client-go's three durations, checked: retry < renew deadline < lease duration."""

    lease_duration: float = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period:g}s, {self.renew_deadline:g}s, {self.lease_duration:g}s"
            )


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The Lease's spec and the resourceVersion it was read at ("" for a Lease not yet created)."""

    holder: str
    duration_seconds: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str = ""


@dataclass(frozen=True, slots=True)
class CreateLease:
    """There is no Lease: create it naming us."""

    record: LeaseRecord


@dataclass(frozen=True, slots=True)
class UpdateLease:
    """Write `record` over the Lease read at `record.resource_version` (take over or renew)."""

    record: LeaseRecord


@dataclass(frozen=True, slots=True)
class Wait:
    """Someone else holds a fresh Lease: read it again later."""


LeaseAction = CreateLease | UpdateLease | Wait


def micro_time(wall: datetime.datetime) -> str:
    """Kubernetes' MicroTime: RFC 3339 in UTC with microseconds."""
    return wall.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_lease(lease: Mapping[str, Any]) -> LeaseRecord:
    """A Lease object (as JSON) as a record; LeaseFormatError when it is malformed."""
    metadata = lease.get("metadata")
    spec = lease.get("spec") or {}
    if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
        raise LeaseFormatError("the Lease has no metadata or a spec that is not an object")
    version = metadata.get("resourceVersion")
    if not isinstance(version, str) or not version:
        raise LeaseFormatError("the Lease has no metadata.resourceVersion")
    holder = spec.get("holderIdentity") or ""
    duration = spec.get("leaseDurationSeconds") or 0
    transitions = spec.get("leaseTransitions") or 0
    if not isinstance(holder, str):
        raise LeaseFormatError("spec.holderIdentity is not a string")
    if not isinstance(duration, int) or not isinstance(transitions, int):
        raise LeaseFormatError("spec.leaseDurationSeconds/leaseTransitions are not integers")
    acquire, renew = spec.get("acquireTime"), spec.get("renewTime")
    return LeaseRecord(
        holder,
        duration,
        acquire if isinstance(acquire, str) else None,
        renew if isinstance(renew, str) else None,
        transitions,
        version,
    )


def lease_object(name: str, namespace: str, record: LeaseRecord) -> dict[str, Any]:
    """The Lease to create or update with `record` (resourceVersion set when it has one)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if record.resource_version:
        metadata["resourceVersion"] = record.resource_version
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time is not None:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time is not None:
        spec["renewTime"] = record.renew_time
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


class LeaderElection:
    """One candidate's view of the Lease and the decisions that follow from it."""

    def __init__(self, identity: str, timing: ElectionTiming) -> None:
        if not identity:
            raise ValueError("leader election needs an identity (the pod name)")
        self.identity = identity
        self.timing = timing
        self.observed: LeaseRecord | None = None
        self._observed_at = 0.0  # monotonic time the observed record last changed
        self._renewed_at: float | None = None  # monotonic time of our last successful write

    def is_leader(self, now: float) -> bool:
        """We hold the Lease and renewed it less than `renew_deadline` ago."""
        return (
            self.observed is not None
            and self.observed.holder == self.identity
            and self._renewed_at is not None
            and now - self._renewed_at < self.timing.renew_deadline
        )

    def observe(self, record: LeaseRecord | None, now: float) -> None:
        """The Lease as just read (None: it does not exist)."""
        if record is None or self.observed is None or _changed(self.observed, record):
            self._observed_at = now
        self.observed = record

    def decide(self, now: float, wall: datetime.datetime) -> LeaseAction:
        """What to do with the Lease last observed."""
        observed = self.observed
        stamp = micro_time(wall)
        duration = max(1, round(self.timing.lease_duration))
        if observed is None:
            return CreateLease(LeaseRecord(self.identity, duration, stamp, stamp, 0))
        if observed.holder == self.identity:
            return UpdateLease(replace(observed, duration_seconds=duration, renew_time=stamp))
        held_for = observed.duration_seconds or self.timing.lease_duration
        if observed.holder and now - self._observed_at < held_for:
            return Wait()
        return UpdateLease(
            replace(
                observed,
                holder=self.identity,
                duration_seconds=duration,
                acquire_time=stamp,
                renew_time=stamp,
                transitions=observed.transitions + 1,
            )
        )

    def written(self, record: LeaseRecord, now: float) -> None:
        """Our create/update succeeded; `record` is the Lease as the API server returned it."""
        self.observed = record
        self._observed_at = now
        self._renewed_at = now if record.holder == self.identity else None

    def release(self, wall: datetime.datetime) -> UpdateLease | None:
        """The write that hands the Lease back on shutdown, or None when we do not hold it.

        From now on we are not the leader, whether or not the write succeeds.
        """
        self._renewed_at = None
        observed = self.observed
        if observed is None or observed.holder != self.identity:
            return None
        return UpdateLease(
            replace(
                observed,
                holder="",
                duration_seconds=RELEASED_DURATION,
                renew_time=micro_time(wall),
            )
        )

    def delay(self, now: float, jitter: float) -> float:
        """Seconds until the next attempt; `jitter` uniform in [0, 1) from the caller's RNG."""
        if self.is_leader(now):
            return self.timing.retry_period
        return self.timing.retry_period * (1 + JITTER * jitter)


def _changed(before: LeaseRecord, after: LeaseRecord) -> bool:
    """A different record, ignoring the resourceVersion (a renewal changes the renew time)."""
    return replace(before, resource_version="") != replace(after, resource_version="")
