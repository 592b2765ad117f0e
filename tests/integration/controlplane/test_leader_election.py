"""Leader election between two control-plane candidates over a stand-in API server's Lease.

Each candidate is a `LeaderElector` with a real lightkube client (`KubeCalls`)
talking HTTP to `kube_auth_standin` (a test double that keeps resourceVersions
and answers 409 to stale writes). Durations are short (lease 1.5 s, renew
deadline 1 s, retry 0.2 s); the candidates run as tasks of one event loop and
a sampler checks, every 20 ms, that two never lead at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from trellis.controlplane.kube_calls import KubeCalls, KubeUnavailableError, api_client
from trellis.controlplane.kube_leader import LeaderElector
from trellis.kube.leader import ElectionTiming

from ..kube_auth_standin import KubeAuthStandin, kube_auth_standin
from .ads_helpers import run

NAMESPACE, LEASE = "trellis-system", "trellis-leader"
TIMING = ElectionTiming(lease_duration=1.5, renew_deadline=1.0, retry_period=0.2)


class Partitionable:
    """A candidate's Lease API that can be cut off (its renewals fail) or made to race."""

    def __init__(self, calls: KubeCalls) -> None:
        self.calls = calls
        self.cut_off = False
        self.before_write: asyncio.Barrier | None = None

    async def get_lease(self, name: str, namespace: str) -> dict[str, Any] | None:
        self._check()
        return await self.calls.get_lease(name, namespace)

    async def create_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        await self._race()
        return await self.calls.create_lease(lease)

    async def replace_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        await self._race()
        return await self.calls.replace_lease(lease)

    def _check(self) -> None:
        if self.cut_off:
            raise KubeUnavailableError("Lease: cannot reach the API server: ConnectError")

    async def _race(self) -> None:
        self._check()
        barrier, self.before_write = self.before_write, None
        if barrier is not None:
            async with asyncio.timeout(5):
                await barrier.wait()


class Candidates:
    def __init__(self, standin: KubeAuthStandin) -> None:
        self.standin = standin
        self.apis: dict[str, Partitionable] = {}
        self.electors: dict[str, LeaderElector] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.overlaps = 0

    def add(self, name: str) -> LeaderElector:
        api = Partitionable(KubeCalls(api_client(self.standin.kube_config(), timeout=2)))
        self.apis[name] = api
        elector = LeaderElector(api, name=LEASE, namespace=NAMESPACE, identity=name, timing=TIMING)
        self.electors[name] = elector
        return elector

    def start(self, name: str) -> None:
        self.tasks[name] = asyncio.create_task(self.electors[name].run(), name=f"elect {name}")

    async def stop(self, name: str) -> None:
        task = self.tasks.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def leaders(self) -> list[str]:
        return [name for name, elector in self.electors.items() if elector.is_leader()]

    async def sample(self) -> None:
        while True:
            if len(self.leaders()) > 1:
                self.overlaps += 1
            await asyncio.sleep(0.02)

    async def wait_for_leader(self, within: float, besides: str = "") -> str:
        async with asyncio.timeout(within):
            while True:
                leaders = [name for name in self.leaders() if name != besides]
                if leaders:
                    return leaders[0]
                await asyncio.sleep(0.02)


@pytest.fixture
def standin() -> Iterator[KubeAuthStandin]:
    with kube_auth_standin() as server:
        yield server


@contextlib.asynccontextmanager
async def candidates(standin: KubeAuthStandin, *names: str) -> AsyncIterator[Candidates]:
    group = Candidates(standin)
    for name in names:
        group.add(name)
    sampler = asyncio.create_task(group.sample())
    try:
        yield group
    finally:
        for name in list(group.tasks):
            await group.stop(name)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        for api in group.apis.values():
            await api.calls.close()


def test_two_candidates_elect_exactly_one_leader(standin: KubeAuthStandin) -> None:
    async def main() -> None:
        async with candidates(standin, "cp-a", "cp-b") as group:
            group.start("cp-a")
            group.start("cp-b")
            leader = await group.wait_for_leader(5)
            await asyncio.sleep(1.5)  # several renewals
            assert group.leaders() == [leader]
            assert group.overlaps == 0
            lease = standin.lease()
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == leader
            assert lease["spec"]["leaseDurationSeconds"] == 2  # 1.5 s, rounded
            assert lease["spec"]["renewTime"].endswith("Z")
            follower = "cp-b" if leader == "cp-a" else "cp-a"
            assert not group.electors[follower].leading.is_set()
            assert group.electors[leader].leading.is_set()

    run(main, timeout=30)


def test_when_the_leader_stops_renewing_the_other_takes_over(standin: KubeAuthStandin) -> None:
    async def main() -> None:
        async with candidates(standin, "cp-a", "cp-b") as group:
            group.start("cp-a")
            assert await group.wait_for_leader(5) == "cp-a"
            group.start("cp-b")
            await asyncio.sleep(0.5)
            assert group.leaders() == ["cp-a"]
            before = standin.lease()
            assert before is not None
            group.apis["cp-a"].cut_off = True  # cp-a can no longer reach the API server
            loop = asyncio.get_running_loop()
            cut = loop.time()
            assert await group.wait_for_leader(6, besides="cp-a") == "cp-b"
            took = loop.time() - cut
            assert took >= TIMING.lease_duration - TIMING.retry_period  # not before it expired
            assert not group.electors["cp-a"].is_leader()
            assert group.overlaps == 0  # cp-a stepped down before cp-b took over
            after = standin.lease()
            assert after is not None
            assert after["spec"]["holderIdentity"] == "cp-b"
            assert after["spec"]["leaseTransitions"] == before["spec"]["leaseTransitions"] + 1
            group.apis["cp-a"].cut_off = False  # cp-a is back: it follows
            await asyncio.sleep(0.6)
            assert group.leaders() == ["cp-b"]

    run(main, timeout=30)


def test_a_leader_that_stops_hands_over_at_once(standin: KubeAuthStandin) -> None:
    async def main() -> None:
        async with candidates(standin, "cp-a", "cp-b") as group:
            group.start("cp-a")
            assert await group.wait_for_leader(5) == "cp-a"
            group.start("cp-b")
            await asyncio.sleep(0.3)
            loop = asyncio.get_running_loop()
            stopped = loop.time()
            await group.stop("cp-a")
            released = standin.lease()
            assert released is not None and released["spec"]["holderIdentity"] == ""
            assert await group.wait_for_leader(3) == "cp-b"
            assert loop.time() - stopped < TIMING.lease_duration  # no wait for expiry
            assert group.overlaps == 0

    run(main, timeout=30)


@pytest.mark.parametrize("existing", [False, True], ids=["create race", "take-over race"])
def test_a_409_race_has_one_winner(standin: KubeAuthStandin, existing: bool) -> None:
    async def main() -> None:
        async with candidates(standin, "cp-a", "cp-b") as group:
            if existing:  # a released Lease both will try to take with the same resourceVersion
                first = group.add("cp-old")
                await first.attempt()
                await first._release()
                del group.electors["cp-old"]
            barrier = asyncio.Barrier(2)
            for api in group.apis.values():
                api.before_write = barrier
            conflicts = standin.state.conflicts
            await asyncio.gather(group.electors["cp-a"].attempt(), group.electors["cp-b"].attempt())
            assert standin.state.conflicts == conflicts + 1
            assert len(group.leaders()) == 1
            (winner,) = group.leaders()
            lease = standin.lease()
            assert lease is not None and lease["spec"]["holderIdentity"] == winner
            group.start("cp-a")
            group.start("cp-b")
            await asyncio.sleep(1.0)
            assert group.leaders() == [winner]  # the loser follows; the winner renews
            assert group.overlaps == 0

    run(main, timeout=30)
