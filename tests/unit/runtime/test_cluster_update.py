"""A cluster update that removes a host fails the requests queued on it at once."""

from __future__ import annotations

import asyncio
import random

from trellis.core.addresses import SocketAddress
from trellis.core.config import CircuitBreakerThresholds, Cluster, Endpoint
from trellis.runtime.cluster import ClusterRuntime
from trellis.runtime.upstream import UpstreamConnection


class RecordingWaiter:
    """A queued request (the PoolWaiter interface): records what the pool told it."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.ready: list[UpstreamConnection] = []

    def on_pool_ready(self, conn: UpstreamConnection) -> None:
        self.ready.append(conn)

    def on_pool_failure(self, reason: str) -> None:
        self.failures.append(reason)


def _cluster(*ports: int) -> Cluster:
    return Cluster(
        name="c",
        endpoints=tuple(Endpoint(SocketAddress("127.0.0.1", p)) for p in ports),
        thresholds=CircuitBreakerThresholds(max_connections=1),
    )


def test_waiters_of_a_removed_host_fail_instead_of_hanging() -> None:
    async def main() -> None:
        runtime = ClusterRuntime(_cluster(1, 2), random.Random(1))
        host = runtime.hosts[0]
        assert runtime.limits.try_acquire_connection()  # the only slot is taken
        waiters = [RecordingWaiter(), RecordingWaiter()]
        for waiter in waiters:
            host.pool.wait(waiter)  # no slot: they queue without a connection attempt
        assert host.pool.connecting == 0 and len(host.pool.waiters) == 2
        runtime.update(_cluster(2))
        assert [w.failures for w in waiters] == [["upstream host removed"]] * 2
        assert not host.pool.waiters
        kept = runtime.hosts[0]
        assert kept.address == SocketAddress("127.0.0.1", 2) and not kept.pool.waiters

    asyncio.run(main())
