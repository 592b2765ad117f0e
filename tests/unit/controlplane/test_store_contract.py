"""The ConfigStore contract, run against the memory and the SQLite store alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from trellis.controlplane.store import (
    ApplyOutcome,
    ConfigStore,
    ConflictError,
    ResourceWrite,
    StoreError,
)
from trellis.errors import ConfigError

from .store_helpers import FakeClock, StoreFactory, run, store_factory, write


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return store_factory(request.param, tmp_path)


def test_create_get_list(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store(clock=FakeClock()) as store:
            assert await store.current_version() == "0"
            results = await store.apply(
                [
                    write("reviews", labels={"team": "books", "app": "reviews"}),
                    write("reviews", kind="DestinationRule", spec={"host": "reviews"}),
                    write("ratings", namespace="shop"),
                ]
            )
            assert [r.outcome for r in results] == [ApplyOutcome.CREATED] * 3
            assert [r.resource.resource_version for r in results] == ["1", "2", "3"]
            assert await store.current_version() == "3"

            got = await store.get("VirtualService", "default", "reviews")
            assert got == results[0].resource
            assert got is not None
            assert got.spec == {"hosts": ["reviews"]}
            assert dict(got.labels) == {"app": "reviews", "team": "books"}
            assert got.generation == 1
            assert got.uid and got.uid != results[1].resource.uid
            assert got.created_at == got.updated_at == "2024-01-01T00:00:00Z"
            assert got.to_document() == {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {
                    "name": "reviews",
                    "namespace": "default",
                    "uid": got.uid,
                    "resourceVersion": "1",
                    "generation": 1,
                    "creationTimestamp": "2024-01-01T00:00:00Z",
                    "labels": {"app": "reviews", "team": "books"},
                },
                "spec": {"hosts": ["reviews"]},
            }

            assert await store.get("VirtualService", "default", "nope") is None
            assert await store.get("VirtualService", "shop", "reviews") is None
            everything = await store.list()
            assert [r.key for r in everything] == [
                ("DestinationRule", "default", "reviews"),
                ("VirtualService", "default", "reviews"),
                ("VirtualService", "shop", "ratings"),
            ]
            vs = await store.list("VirtualService")
            assert [r.name for r in vs] == ["reviews", "ratings"]
            in_shop = await store.list(namespace="shop")
            assert [r.key for r in in_shop] == [("VirtualService", "shop", "ratings")]
            assert await store.list("VirtualService", "default") == [results[0].resource]
            listing = await store.list_with_version("DestinationRule")
            assert listing.resource_version == "3"
            assert listing.items == (results[1].resource,)

    run(main)


def test_update_bumps_version_and_generation_only_on_spec_change(
    open_store: StoreFactory,
) -> None:
    async def main() -> None:
        async with await open_store(clock=FakeClock()) as store:
            (created,) = await store.apply([write("reviews")])
            await store.apply([write("other")])
            (updated,) = await store.apply([write("reviews", spec={"hosts": ["reviews", "r2"]})])
            assert updated.outcome is ApplyOutcome.CONFIGURED
            after = updated.resource
            before = created.resource
            assert after.resource_version == "3"
            assert after.generation == 2
            assert (after.uid, after.created_at) == (before.uid, before.created_at)
            assert after.updated_at > before.updated_at
            assert after.spec == {"hosts": ["reviews", "r2"]}

            (relabelled,) = await store.apply(
                [write("reviews", spec={"hosts": ["reviews", "r2"]}, labels={"v": "2"})]
            )
            assert relabelled.outcome is ApplyOutcome.CONFIGURED
            assert relabelled.resource.resource_version == "4"
            assert relabelled.resource.generation == 2
            assert await store.get("VirtualService", "default", "reviews") == relabelled.resource

    run(main)


def test_unchanged_content_keeps_the_version(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            route = [{"route": [{"destination": {"host": "a"}}]}]
            spec = {"hosts": ["reviews"], "http": route}
            (first,) = await store.apply([write("reviews", spec=spec, labels={"a": "1", "b": "2"})])
            reordered = {
                "http": [{"route": [{"destination": {"host": "a"}}]}],
                "hosts": ["reviews"],
            }
            (again,) = await store.apply(
                [write("reviews", spec=reordered, labels={"b": "2", "a": "1"})]
            )
            assert again.outcome is ApplyOutcome.UNCHANGED
            assert again.resource == first.resource
            assert await store.current_version() == "1"
            # an unchanged item in a batch does not consume a version
            results = await store.apply(
                [write("reviews", spec=spec, labels={"a": "1", "b": "2"}), write("new")]
            )
            assert [r.outcome for r in results] == [ApplyOutcome.UNCHANGED, ApplyOutcome.CREATED]
            assert results[1].resource.resource_version == "2"

    run(main)


def test_delete(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            (created,) = await store.apply([write("reviews")])
            deleted = await store.delete("VirtualService", "default", "reviews")
            assert deleted is not None
            assert deleted.resource_version == "2"
            assert (deleted.uid, deleted.spec) == (created.resource.uid, {"hosts": ["reviews"]})
            assert await store.get("VirtualService", "default", "reviews") is None
            assert await store.list() == []
            assert await store.current_version() == "2"
            assert await store.delete("VirtualService", "default", "reviews") is None
            assert await store.current_version() == "2"

            (again,) = await store.apply([write("reviews")])
            assert again.outcome is ApplyOutcome.CREATED
            assert again.resource.generation == 1
            assert again.resource.uid != created.resource.uid

    run(main)


def test_stale_expected_version_conflicts_and_stores_nothing(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            (v1,) = await store.apply([write("reviews")])
            (v2,) = await store.apply([write("reviews", spec={"hosts": ["x"]}, expected="1")])
            assert v2.resource.resource_version == "2"
            with pytest.raises(ConflictError) as caught:
                await store.apply([write("reviews", spec={"hosts": ["y"]}, expected="1")])
            error = caught.value
            assert (error.kind, error.namespace, error.name) == (
                "VirtualService",
                "default",
                "reviews",
            )
            assert (error.expected, error.actual) == ("1", "2")
            assert "VirtualService default/reviews" in str(error)
            assert "1" in str(error) and "2" in str(error)
            stored = await store.get("VirtualService", "default", "reviews")
            assert stored == v2.resource
            assert v1.resource != stored

            # an unchanged write with a stale version is still a conflict
            with pytest.raises(ConflictError):
                await store.apply([write("reviews", spec={"hosts": ["x"]}, expected="1")])
            # "" means unconditional
            (forced,) = await store.apply([write("reviews", spec={"hosts": ["z"]}, expected="")])
            assert forced.resource.resource_version == "3"

    run(main)


def test_expected_version_zero_means_create_only(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            (created,) = await store.apply([write("reviews", expected="0")])
            assert created.outcome is ApplyOutcome.CREATED
            with pytest.raises(ConflictError, match="not to exist") as caught:
                await store.apply([write("reviews", spec={"hosts": ["b"]}, expected="0")])
            assert caught.value.actual == "1"
            with pytest.raises(ConflictError, match="does not exist") as missing:
                await store.apply([write("ghost", expected="7")])
            assert missing.value.actual is None
            assert await store.current_version() == "1"

    run(main)


def test_batch_with_one_conflict_stores_none(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            await store.apply([write("existing")])
            batch = [
                write("new-a"),
                write("existing", spec={"hosts": ["changed"]}, expected="99"),
                write("new-b"),
            ]
            with pytest.raises(ConflictError, match="existing"):
                await store.apply(batch)
            assert [r.name for r in await store.list()] == ["existing"]
            assert (await store.list())[0].spec == {"hosts": ["existing"]}
            assert await store.current_version() == "1"
            (next_one,) = await store.apply([write("new-a")])
            assert next_one.resource.resource_version == "2"

    run(main)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (write(""), "metadata.name"),
        (write("x", namespace=""), "metadata.namespace"),
        (write("x", spec={"when": {1, 2}}), "spec"),
        (write("x", spec={"ratio": float("nan")}), "spec"),
        (write("x", labels={"app": 3}), "metadata.labels"),  # type: ignore[dict-item]
        (write("x", expected="v7"), "resourceVersion"),
    ],
)
def test_invalid_write_is_rejected_with_a_path_and_stores_nothing(
    open_store: StoreFactory, bad: ResourceWrite, message: str
) -> None:
    async def main() -> None:
        async with await open_store() as store:
            with pytest.raises(ConfigError, match=message) as caught:
                await store.apply([write("good"), bad])
            assert "item 1" in str(caught.value)
            assert await store.list() == []
            assert await store.current_version() == "0"

    run(main)


def test_the_same_resource_twice_in_one_batch_is_rejected(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            with pytest.raises(ConfigError, match="twice") as caught:
                await store.apply([write("a"), write("b"), write("a", spec={"hosts": ["2"]})])
            assert "item 2 (VirtualService default/a)" in str(caught.value)
            assert "item 0" in str(caught.value)
            assert await store.list() == []

    run(main)


def test_delete_with_stale_expected_version_conflicts(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            await store.apply([write("reviews")])
            await store.apply([write("reviews", spec={"hosts": ["2"]})])
            with pytest.raises(ConflictError) as caught:
                await store.delete("VirtualService", "default", "reviews", expected_version="1")
            assert (caught.value.expected, caught.value.actual) == ("1", "2")
            assert await store.get("VirtualService", "default", "reviews") is not None
            deleted = await store.delete("VirtualService", "default", "reviews", "2")
            assert deleted is not None and deleted.resource_version == "3"

    run(main)


def test_returned_records_do_not_share_state_with_the_store(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            spec = {"hosts": ["reviews"]}
            (result,) = await store.apply([write("reviews", spec=spec)])
            spec["hosts"].append("mutated-input")
            result.resource.spec["hosts"].append("mutated-output")
            with pytest.raises(TypeError):
                result.resource.labels["x"] = "y"  # type: ignore[index]
            stored = await store.get("VirtualService", "default", "reviews")
            assert stored is not None and stored.spec == {"hosts": ["reviews"]}

    run(main)


def test_concurrent_read_modify_write_serializes(open_store: StoreFactory) -> None:
    tasks, increments = 6, 8

    async def bump(store: ConfigStore) -> int:
        conflicts = 0
        for _ in range(increments):
            for _attempt in range(500):
                current = await store.get("Counter", "default", "hits")
                assert current is not None
                value = current.spec["value"]
                await asyncio.sleep(0)  # let the other tasks read the same version
                try:
                    await store.apply(
                        [
                            write(
                                "hits",
                                kind="Counter",
                                spec={"value": value + 1},
                                expected=current.resource_version,
                            )
                        ]
                    )
                    break
                except ConflictError:
                    conflicts += 1
                    await asyncio.sleep(0)
            else:
                raise AssertionError("no progress after 500 attempts")
        return conflicts

    async def main() -> None:
        async with await open_store() as store:
            await store.apply([write("hits", kind="Counter", spec={"value": 0})])
            conflicts = await asyncio.gather(*(bump(store) for _ in range(tasks)))
            assert sum(conflicts) > 0  # the tasks really did race
            final = await store.get("Counter", "default", "hits")
            assert final is not None
            assert final.spec == {"value": tasks * increments}
            assert final.resource_version == str(1 + tasks * increments)
            assert final.generation == 1 + tasks * increments

    run(main)


def test_concurrent_batches_get_unique_consecutive_versions(open_store: StoreFactory) -> None:
    async def main() -> None:
        async with await open_store() as store:
            batches = [[write(f"r{task}-{i}") for i in range(3)] for task in range(10)]
            results = await asyncio.gather(*(store.apply(batch) for batch in batches))
            for batch_results in results:
                batch_versions = [int(r.resource.resource_version) for r in batch_results]
                # a batch is one transaction: its versions are consecutive
                assert batch_versions == list(range(batch_versions[0], batch_versions[0] + 3))
            every = sorted(int(r.resource.resource_version) for rs in results for r in rs)
            assert every == list(range(1, 31))
            assert len(await store.list()) == 30

    run(main)


def test_closed_store_refuses_work(open_store: StoreFactory) -> None:
    async def main() -> None:
        store = await open_store()
        await store.apply([write("a")])
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StoreError, match="closed"):
            await store.get("VirtualService", "default", "a")
        with pytest.raises(StoreError, match="closed"):
            await store.apply([write("b")])
        with pytest.raises(StoreError, match="closed"):
            store.watch()

    run(main)
