"""The leader-election state machine, driven with plain records and times (no I/O)."""

from __future__ import annotations

import datetime

import pytest

from trellis.kube.leader import (
    CreateLease,
    ElectionTiming,
    LeaderElection,
    LeaseFormatError,
    LeaseRecord,
    UpdateLease,
    Wait,
    lease_object,
    micro_time,
    read_lease,
)

TIMING = ElectionTiming(lease_duration=15, renew_deadline=10, retry_period=2)
WALL = datetime.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)


def held_by(holder: str, version: str = "7", transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, 15, "t0", "t1", transitions, version)


def test_timing_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        ElectionTiming(lease_duration=5, renew_deadline=10, retry_period=2)


def test_no_lease_is_created_naming_us_and_then_we_lead() -> None:
    election = LeaderElection("pod-a", TIMING)
    election.observe(None, now=0)
    action = election.decide(0, WALL)
    assert action == CreateLease(LeaseRecord("pod-a", 15, micro_time(WALL), micro_time(WALL), 0))
    assert micro_time(WALL) == "2025-01-02T03:04:05.678901Z"
    assert not election.is_leader(0)
    election.written(held_by("pod-a", "8"), now=0.1)
    assert election.is_leader(0.2)


def test_a_fresh_lease_of_another_means_wait_and_a_stale_one_take_over() -> None:
    election = LeaderElection("pod-b", TIMING)
    election.observe(held_by("pod-a"), now=100)
    assert election.decide(100, WALL) == Wait()
    election.observe(held_by("pod-a", "8"), now=110)  # only the version moved: not renewed
    assert election.decide(114.9, WALL) == Wait()
    action = election.decide(115.1, WALL)
    assert isinstance(action, UpdateLease)
    assert action.record.holder == "pod-b"
    assert action.record.resource_version == "8"  # the precondition
    assert action.record.transitions == 1
    assert action.record.acquire_time == micro_time(WALL)


def test_a_renewal_by_the_holder_restarts_the_clock() -> None:
    election = LeaderElection("pod-b", TIMING)
    election.observe(held_by("pod-a"), now=100)
    renewed = LeaseRecord("pod-a", 15, "t0", "t2", 0, "9")
    election.observe(renewed, now=110)
    assert election.decide(120, WALL) == Wait()
    assert isinstance(election.decide(125.1, WALL), UpdateLease)


def test_a_released_lease_is_taken_at_once() -> None:
    election = LeaderElection("pod-b", TIMING)
    election.observe(LeaseRecord("", 1, "t0", "t1", 3, "9"), now=100)
    action = election.decide(100, WALL)
    assert isinstance(action, UpdateLease) and action.record.holder == "pod-b"


def test_the_leader_renews_and_steps_down_after_the_renew_deadline() -> None:
    election = LeaderElection("pod-a", TIMING)
    election.observe(held_by("pod-a"), now=0)
    action = election.decide(0, WALL)
    assert isinstance(action, UpdateLease)
    assert action.record.holder == "pod-a" and action.record.renew_time == micro_time(WALL)
    assert action.record.transitions == 0
    election.written(held_by("pod-a", "8"), now=1)
    assert election.is_leader(10.9)
    assert not election.is_leader(11.0)  # renewals failed for 10 s: no longer acting as leader
    assert election.delay(11.0, 0.5) == pytest.approx(2.2)
    assert election.delay(5, 0.5) == 2


def test_seeing_another_holder_ends_leadership_at_once() -> None:
    election = LeaderElection("pod-a", TIMING)
    election.written(held_by("pod-a", "8"), now=0)
    election.observe(held_by("pod-b", "9"), now=1)
    assert not election.is_leader(1)


def test_release_only_when_holding() -> None:
    election = LeaderElection("pod-a", TIMING)
    assert election.release(WALL) is None
    election.written(held_by("pod-a", "8"), now=0)
    action = election.release(WALL)
    assert action is not None
    assert action.record.holder == "" and action.record.duration_seconds == 1
    assert action.record.resource_version == "8"


def test_lease_objects_round_trip_and_bad_ones_are_refused() -> None:
    record = LeaseRecord("pod-a", 15, "a", "b", 2, "41")
    lease = lease_object("trellis-leader", "trellis-system", record)
    assert lease["metadata"] == {
        "name": "trellis-leader",
        "namespace": "trellis-system",
        "resourceVersion": "41",
    }
    assert read_lease(lease) == record
    created = lease_object("l", "ns", LeaseRecord("pod-a", 15, None, None, 0))
    assert "resourceVersion" not in created["metadata"] and "renewTime" not in created["spec"]
    with pytest.raises(LeaseFormatError, match="resourceVersion"):
        read_lease({"metadata": {}, "spec": {}})
    with pytest.raises(LeaseFormatError, match="holderIdentity"):
        read_lease({"metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": 3}})


def test_an_identity_is_required() -> None:
    with pytest.raises(ValueError, match="identity"):
        LeaderElection("", TIMING)


def test_after_release_we_are_not_the_leader() -> None:
    election = LeaderElection("pod-a", TIMING)
    election.written(held_by("pod-a", "8"), now=0)
    assert election.release(WALL) is not None
    assert not election.is_leader(0.1)
