"""Leader election over a Lease, the I/O half: read, decide (`trellis.kube.leader`), write.

`LeaderElector.run()` loops until cancelled: get the Lease, let the state
machine decide, create or replace it (the resourceVersion read is the
precondition; a 409 means another replica wrote first, and the loop reads
again), then sleep the retry period (jittered for followers). Leadership
starts when a write naming us succeeds and ends when the Lease names another,
or when renewing has failed for the renew deadline; `leading` is set while
we lead and the callbacks hear of each change. On cancellation a leader
releases the Lease so a follower takes over without waiting for it to expire.

Followers keep serving everything else (xDS, the CA, the webhook); only what
must happen once waits for `leading`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from trellis.controlplane.kube_calls import KubeConflictError, KubeUnavailableError
from trellis.kube.leader import (
    CreateLease,
    ElectionTiming,
    LeaderElection,
    LeaseFormatError,
    LeaseRecord,
    UpdateLease,
    Wait,
    lease_object,
    read_lease,
)

log = logging.getLogger("trellis.controlplane.leader")

RELEASE_TIMEOUT = 5.0


class LeaseApi(Protocol):
    """Get, create and replace one Lease (`kube_calls.KubeCalls` does)."""

    async def get_lease(self, name: str, namespace: str) -> dict[str, Any] | None: ...

    async def create_lease(self, lease: dict[str, Any]) -> dict[str, Any]: ...

    async def replace_lease(self, lease: dict[str, Any]) -> dict[str, Any]: ...


class LeaderElector:
    """Campaigns for the Lease `namespace/name` as `identity`, for as long as `run()` runs."""

    def __init__(
        self,
        api: LeaseApi,
        *,
        name: str,
        namespace: str,
        identity: str,
        timing: ElectionTiming | None = None,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self.name = name
        self.namespace = namespace
        self.election = LeaderElection(identity, timing or ElectionTiming())
        self.leading = asyncio.Event()
        self._on_change = on_change
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()

    @property
    def identity(self) -> str:
        return self.election.identity

    def is_leader(self) -> bool:
        return self.election.is_leader(self._clock())

    def holder(self) -> str:
        """Who holds the Lease as last read ("" when nobody, or not read yet)."""
        observed = self.election.observed
        return observed.holder if observed is not None else ""

    async def run(self) -> None:
        """Campaign and renew until cancelled; then release the Lease if we hold it."""
        try:
            while True:
                await self.attempt()
                await asyncio.sleep(self.election.delay(self._clock(), self._rng.random()))
        finally:
            await asyncio.shield(self._release())

    async def attempt(self) -> None:
        """One round: read, decide, write. Errors are logged; the next round tries again."""
        try:
            await self._attempt()
        except KubeConflictError:
            log.debug("lease %s/%s: another replica wrote first", self.namespace, self.name)
        except (KubeUnavailableError, LeaseFormatError) as exc:
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
        self._update_leading()

    async def _attempt(self) -> None:
        lease = await self.api.get_lease(self.name, self.namespace)
        record = read_lease(lease) if lease is not None else None
        self.election.observe(record, self._clock())
        self._update_leading()
        action = self.election.decide(self._clock(), self._wall())
        if isinstance(action, Wait):
            return
        self.election.written(await self._write(action), self._clock())

    async def _write(self, action: CreateLease | UpdateLease) -> LeaseRecord:
        body = lease_object(self.name, self.namespace, action.record)
        if isinstance(action, CreateLease):
            return read_lease(await self.api.create_lease(body))
        return read_lease(await self.api.replace_lease(body))

    def _update_leading(self) -> None:
        leading = self.is_leader()
        if leading == self.leading.is_set():
            return
        if leading:
            self.leading.set()
            log.info("leading (lease %s/%s as %s)", self.namespace, self.name, self.identity)
        else:
            self.leading.clear()
            log.warning(
                "no longer leading (lease %s/%s, holder now %r)",
                self.namespace,
                self.name,
                self.holder(),
            )
        if self._on_change is not None:
            self._on_change(leading)

    async def _release(self) -> None:
        action = self.election.release(self._wall())
        was_leading = self.leading.is_set()
        self.leading.clear()
        if was_leading and self._on_change is not None:
            self._on_change(False)
        if action is None:
            return
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                self.election.written(await self._write(action), self._clock())
            log.info("released lease %s/%s", self.namespace, self.name)
        except (KubeConflictError, KubeUnavailableError, LeaseFormatError, TimeoutError) as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
