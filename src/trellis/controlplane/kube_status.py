"""The elected leader's status writer: analysis findings onto the Trellis CRD objects.

While this replica leads (`is_leader`, checked before every write), a change
of the stored config (the store's watch) or of the service registry
(`refresh`) wakes the writer. Once changes have been quiet for `debounce`
seconds it analyses the stored objects with the registry (`analyze`, in a
thread: it is CPU work and the loop also serves xDS) and patches the `status`
of each object whose status differs from the one it should have
(`trellis.kube.status`), at most `max_writes` objects a round; the rest wait
for the next round. An object whose status is already right is not written,
so a new leader, or a change that does not alter an object's findings, costs
no writes.

A write that fails (the object changed since it was read, a permission is
missing, the API server does not answer) is logged with the object and the
reason and retried in a later round, after a backoff; nothing here stops the
control plane. A replica that loses the Lease writes nothing more: the round
in progress stops at its next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from trellis.api.analyze import Finding, analyze
from trellis.api.meta import ResourceKey
from trellis.api.networking import NetworkingResource
from trellis.controlplane.api_apply import stored_models
from trellis.controlplane.kube_client import Backoff, JsonObject
from trellis.controlplane.kube_store import same_record
from trellis.controlplane.store import (
    StoredResource,
    StoreError,
    WatchExpiredError,
    WatchStream,
)
from trellis.kube.status import ObjectState, StatusWrite, plan_status_writes

log = logging.getLogger("trellis.controlplane.status")

DEFAULT_DEBOUNCE = 1.0
DEFAULT_MAX_WRITES = 100
LEADERSHIP_POLL = 1.0  # how soon a replica that has just become leader starts writing


class StatusStore(Protocol):
    """What the writer needs of the config store (`KubeConfigStore` has it)."""

    def object_states(self) -> list[tuple[StoredResource, ObjectState]]: ...

    async def patch_status(self, key: ResourceKey, patch: JsonObject) -> None: ...

    def watch(self, since: str | None = None) -> WatchStream: ...


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did: objects written, writes that failed, writes left for later."""

    written: int = 0
    failed: int = 0
    left: int = 0


class StatusWriter:
    """Keeps the Trellis CRD objects' `status` in step with the analysis, while leading."""

    def __init__(
        self,
        store: StatusStore,
        is_leader: Callable[[], bool],
        registry: Callable[[], Sequence[NetworkingResource]] = tuple,
        *,
        debounce: float = DEFAULT_DEBOUNCE,
        max_writes: int = DEFAULT_MAX_WRITES,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        backoff: Backoff | None = None,
    ) -> None:
        if max_writes < 1:
            raise ValueError(f"max_writes must be at least 1, got {max_writes}")
        self._store = store
        self._is_leader = is_leader
        self._registry = registry
        self.debounce = debounce
        self.max_writes = max_writes
        self._wall = wall_clock
        self._backoff = backoff or Backoff(initial=1.0, maximum=30.0)
        self._wake = asyncio.Event()
        # Parsed models by key, with the record they were parsed from (None: it does not
        # validate), so a round parses only what changed.
        self._parsed: dict[ResourceKey, tuple[StoredResource, NetworkingResource | None]] = {}

    def refresh(self) -> None:
        """Something besides the stored config changed (the registry): look again."""
        self._wake.set()

    async def run(self) -> None:
        """Follow the store and write statuses while leading, until cancelled."""
        follower = asyncio.create_task(self._follow_store(), name="status writer: store watch")
        retry: asyncio.TimerHandle | None = None
        leading = False
        try:
            while True:
                await self._wait_for_wake()
                was_leading, leading = leading, self._is_leader()
                if leading and not was_leading:
                    log.info("leading: writing the status of the Trellis CRD objects")
                    self._wake.set()  # a new leader looks at every object once
                if not leading:
                    self._wake.clear()  # changes are looked at when leadership comes
                    continue
                if not self._wake.is_set():
                    continue
                await asyncio.sleep(self.debounce)
                self._wake.clear()
                result = await self._guarded_round()
                if retry is not None:
                    retry.cancel()
                    retry = None
                if result.failed:
                    delay = self._backoff.next_delay()
                    retry = asyncio.get_running_loop().call_later(delay, self._wake.set)
                else:
                    self._backoff.reset()
                    if result.left:
                        self._wake.set()
        finally:
            if retry is not None:
                retry.cancel()
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def write_round(self) -> RoundResult:
        """Analyse the stored objects and patch those whose status differs (if leading)."""
        if not self._is_leader():
            return RoundResult()
        objects = self._store.object_states()
        registry = list(self._registry())
        writes = await asyncio.to_thread(self._plan, objects, registry, self._wall())
        written = failed = 0
        for index, write in enumerate(writes):
            if written + failed >= self.max_writes or not self._is_leader():
                return RoundResult(written, failed, len(writes) - index)
            try:
                await self._store.patch_status(write.key, write.patch)
            except StoreError as exc:
                failed += 1
                log.warning("status of %s not written (retried later): %s", write.describe(), exc)
            else:
                written += 1
        if written or failed:
            log.info("status: %d object(s) written, %d failed", written, failed)
        return RoundResult(written, failed, 0)

    def _plan(
        self,
        objects: Sequence[tuple[StoredResource, ObjectState]],
        registry: Sequence[NetworkingResource],
        now: datetime.datetime,
    ) -> list[StatusWrite]:
        models = self._models([record for record, _ in objects])
        findings: list[Finding] = analyze(list(models.values()) + list(registry))
        # An object that does not validate was logged, and is not analysed: no status.
        valid = [state for _, state in objects if state.key in models]
        return plan_status_writes(valid, findings, now)

    def _models(self, records: Sequence[StoredResource]) -> dict[ResourceKey, NetworkingResource]:
        """The records as config models, by key; a record that does not validate is left out."""
        parsed = {}
        for record in records:
            cached = self._parsed.get(record.key)
            if cached is not None and same_record(cached[0], record):
                parsed[record.key] = cached
            else:
                model = next(iter(stored_models([record])), None)
                parsed[record.key] = (record, model)
        self._parsed = parsed
        return {key: model for key, (_, model) in parsed.items() if model is not None}

    async def _guarded_round(self) -> RoundResult:
        """A round whose unexpected failure is logged and retried, never raised."""
        try:
            return await self.write_round()
        except Exception:  # a bug here must not take the control plane down
            log.exception("status round failed; retrying later")
            return RoundResult(failed=1)

    async def _wait_for_wake(self) -> None:
        """Until woken, or `LEADERSHIP_POLL` seconds (leadership may have changed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LEADERSHIP_POLL):
                await self._wake.wait()

    async def _follow_store(self) -> None:
        """Wake the writer on every change of the stored config, until the store closes."""
        since: str | None = None
        while True:
            try:
                async with contextlib.aclosing(self._store.watch(since)) as events:
                    async for event in events:
                        since = event.resource_version
                        self._wake.set()
                return  # the store closed
            except WatchExpiredError:
                since = None  # every round reads the whole store: nothing is lost
                self._wake.set()
            except StoreError:
                return  # the store is closed: the control plane is stopping
