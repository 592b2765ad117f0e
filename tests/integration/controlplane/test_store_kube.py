"""The ConfigStore contract, run against the CRD store over the Kubernetes stand-in.

The contract's tests are the unit suite's (`tests/unit/controlplane/test_store_contract.py`
and `test_store_watch.py`), imported here and given a store that keeps its
resources as CRD objects in a stand-in API server on 127.0.0.1 (a fresh one
per test, so versions start at 0 as with a new store). A few tests are
specific to Kubernetes: conflicts decided by the server, 410 Gone, objects
written by other clients.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trellis.controlplane.api_kinds import KINDS
from trellis.controlplane.kube_client import ApiResource, Backoff, connect
from trellis.controlplane.kube_crd import CrdKind
from trellis.controlplane.kube_store import KubeConfigStore
from trellis.controlplane.store import (
    ApplyOutcome,
    ConfigStore,
    ConflictError,
    WatchEventType,
    WatchExpiredError,
)

from ..kube_standin import KubeStandIn, ResourceType, StandInServer

_UNIT = str(Path(__file__).resolve().parents[2] / "unit")
if _UNIT not in sys.path:
    sys.path.append(_UNIT)

from controlplane import test_store_contract as contract  # noqa: E402
from controlplane import test_store_watch as watch_contract  # noqa: E402
from controlplane.store_helpers import FakeClock, StoreFactory, run, take, write  # noqa: E402

ISTIO = "networking.istio.io"

# A kind the contract uses that Istio does not have: served as a CRD like the others.
COUNTER = ResourceType(
    "networking.istio.io", ("v1",), "Counter", "counters", status_subresource=True
)
STORE_KINDS = (
    *map(CrdKind.of, KINDS),
    CrdKind("Counter", ApiResource("networking.istio.io", "v1", "Counter", "counters")),
)


@pytest.fixture
def standin() -> Iterator[StandInServer]:
    server = StandInServer(KubeStandIn((COUNTER,), clock=FakeClock())).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def open_store(standin: StandInServer, tmp_path: Path) -> StoreFactory:
    kubeconfig = standin.kubeconfig(tmp_path / "kubeconfig")

    async def factory(**options: Any) -> ConfigStore:
        store: ConfigStore = await KubeConfigStore.open(
            connect(kubeconfig), kinds=STORE_KINDS, own_client=True, **options
        )
        return store

    return factory


for _module in (contract, watch_contract):
    for _name in dir(_module):
        if _name.startswith("test_"):
            globals()[_name] = getattr(_module, _name)


# -- what only the Kubernetes store does --


def _vs(name: str, hosts: list[str], namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1beta1",  # another served version: same object
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hosts": hosts},
    }


def test_objects_written_by_other_clients_are_read_and_watched(
    standin: StandInServer, open_store: StoreFactory
) -> None:
    async def main() -> None:
        async with await open_store() as store:
            stream = store.watch()
            created = standin.call(
                lambda: standin.standin.put("virtualservices", _vs("a", ["a"]), ISTIO)
            )
            (event,) = await take(stream, 1)
            assert (event.type, event.resource.name) == (WatchEventType.ADDED, "a")
            assert event.resource_version == created["metadata"]["resourceVersion"]
            got = await store.get("VirtualService", "default", "a")
            assert got is not None and got.spec == {"hosts": ["a"]}
            assert got.api_version == "networking.istio.io/v1"  # as the store reads it
            assert got.created_at == created["metadata"]["creationTimestamp"]
            # The store's write of the same content is unchanged, whatever version it named.
            (again,) = await store.apply([write("a", spec={"hosts": ["a"]})])
            assert again.outcome is ApplyOutcome.UNCHANGED
            standin.call(lambda: standin.standin.remove("virtualservices", "default", "a", ISTIO))
            (gone,) = await take(stream, 1)
            assert gone.type is WatchEventType.DELETED
            assert await store.get("VirtualService", "default", "a") is None

    run(main)


def test_410_gone_relists_and_ends_watches_so_they_relist_too(
    standin: StandInServer, open_store: StoreFactory
) -> None:
    async def main() -> None:
        async with await open_store() as store:
            assert isinstance(store, KubeConfigStore)
            await store.apply([write("kept"), write("dropped")])
            stream = store.watch()
            lists_before = sum(informer.relists for informer in store.informers)

            def gap() -> None:
                state = standin.standin
                state.break_watches()
                state.put("virtualservices", _vs("added", ["x"]), ISTIO)
                state.remove("virtualservices", "default", "dropped", ISTIO)
                state.compact()

            standin.call(gap)
            with pytest.raises(WatchExpiredError, match="listed again"):
                await asyncio.wait_for(anext(stream), 5)
            listing = await store.list_with_version("VirtualService")
            assert [r.name for r in listing.items] == ["added", "kept"]
            assert listing.resource_version == str(standin.call(lambda: standin.standin.version))
            assert sum(informer.relists for informer in store.informers) > lists_before
            # A watch from the new listing follows on.
            follow = store.watch(listing.resource_version)
            await store.apply([write("later")])
            assert [e.resource.name for e in await take(follow, 1)] == ["later"]

    run(main)


def test_the_server_decides_conflicts_the_cache_has_not_seen(
    standin: StandInServer, open_store: StoreFactory
) -> None:
    async def main() -> None:
        # Writes wait for the (paused) watch at most this long; they are done anyway.
        async with await open_store(write_timeout=0.3) as store:
            (b,) = await store.apply([write("b")])
            standin.call(standin.standin.pause_watches)
            changed = standin.call(
                lambda: standin.standin.put("virtualservices", _vs("b", ["changed"]), ISTIO)
            )
            newer = changed["metadata"]["resourceVersion"]
            # The cache still holds b's first version: the API server refuses the write,
            # and the batch's earlier create is undone.
            stale = write("b", spec={"hosts": ["mine"]}, expected=b.resource.resource_version)
            with pytest.raises(ConflictError) as caught:
                await store.apply([write("a"), stale])
            assert (caught.value.expected, caught.value.actual) == (
                b.resource.resource_version,
                newer,
            )
            standin.call(standin.standin.resume_watches)
            objects = standin.call(
                lambda: sorted(
                    name for (_, name) in standin.standin._objects[(ISTIO, "virtualservices")]
                )
            )
            assert objects == ["b"]
            stored = standin.call(
                lambda: standin.standin.get_object("virtualservices", "default", "b", ISTIO)
            )
            assert stored["spec"] == {"hosts": ["changed"]}

    run(main)


def test_a_failing_api_server_is_retried_with_backoff(
    standin: StandInServer, tmp_path: Path
) -> None:
    kubeconfig = standin.kubeconfig(tmp_path / "kubeconfig")

    async def main() -> None:
        standin.call(lambda: setattr(standin.standin, "fail_requests", 12))
        store = await KubeConfigStore.open(
            connect(kubeconfig),
            kinds=STORE_KINDS,
            own_client=True,
            backoff=Backoff(initial=0.01, maximum=0.05),
        )
        async with store:
            assert standin.call(lambda: standin.standin.fail_requests) == 0
            (result,) = await store.apply([write("after-the-storm")])
            assert result.outcome is ApplyOutcome.CREATED

    run(main)


def test_delays_double_up_to_the_bound() -> None:
    backoff = Backoff(initial=0.5, maximum=3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
