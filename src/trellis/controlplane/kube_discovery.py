"""Service discovery from the Kubernetes API: Namespaces, Services, EndpointSlices, Pods.

One `Informer` per type keeps a cache of its objects (list, then watch; 410
Gone re-lists; errors back off). After the first listing of all four, and then
after every burst of changes (`debounce`), the caches are turned into the
registry (`trellis.kube.registry.build_registry`, pure) and handed to
`on_registry`; the control plane puts it beside the stored config.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from lightkube import AsyncClient

from trellis.controlplane.kube_client import (
    ENDPOINT_SLICES,
    NAMESPACES,
    PODS,
    SERVICES,
    ApiResource,
    Backoff,
    Informer,
    JsonObject,
    ObjectKey,
    object_key,
)
from trellis.kube.registry import DEFAULT_DOMAIN, Registry, build_registry

log = logging.getLogger("trellis.controlplane.kube")

WATCHED: tuple[ApiResource, ...] = (NAMESPACES, SERVICES, ENDPOINT_SLICES, PODS)


class ObjectCache:
    """The current objects of one type, kept by its informer (an InformerHandler)."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self.objects: dict[ObjectKey, JsonObject] = {}
        self._changed = changed

    async def replaced(self, items: list[JsonObject], version: int) -> None:
        self.objects = {object_key(item): item for item in items}
        self._changed()

    async def changed(self, event_type: str, obj: JsonObject) -> None:
        if event_type == "DELETED":
            self.objects.pop(object_key(obj), None)
        else:
            self.objects[object_key(obj)] = obj
        self._changed()

    async def progressed(self, version: int) -> None:
        return None


class KubeDiscovery:
    """Follows the cluster's services and endpoints; reports each new registry."""

    def __init__(
        self,
        client: AsyncClient,
        on_registry: Callable[[Registry], None],
        *,
        domain: str = DEFAULT_DOMAIN,
        debounce: float = 0.05,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self._on_registry = on_registry
        self._domain = domain
        self._debounce = debounce
        self._dirty = asyncio.Event()
        self.caches = {resource.plural: ObjectCache(self._dirty.set) for resource in WATCHED}
        self.informers = [
            Informer(client, resource, self.caches[resource.plural], backoff=backoff())
            for resource in WATCHED
        ]
        self.synced = asyncio.Event()  # set once the first full registry was reported
        self.registry = Registry()
        self.builds = 0
        self._problems: frozenset[str] = frozenset()

    async def run(self) -> None:
        """Watch and rebuild until cancelled."""
        async with asyncio.TaskGroup() as group:
            for informer in self.informers:
                group.create_task(informer.run(), name=f"informer {informer.resource.plural}")
            group.create_task(self._rebuild_loop(), name="registry builder")

    async def _rebuild_loop(self) -> None:
        for informer in self.informers:
            await informer.listed.wait()
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._debounce)
            self._dirty.clear()
            snapshot = {
                plural: list(cache.objects.values()) for plural, cache in self.caches.items()
            }
            registry = await asyncio.to_thread(self._build, snapshot)
            self.registry = registry
            self.builds += 1
            for problem in sorted(set(registry.problems) - self._problems):
                log.error("service registry: %s", problem)
            self._problems = frozenset(registry.problems)
            self._on_registry(registry)
            self.synced.set()

    def _build(self, snapshot: dict[str, list[Any]]) -> Registry:
        return build_registry(
            snapshot[NAMESPACES.plural],
            snapshot[SERVICES.plural],
            snapshot[ENDPOINT_SLICES.plural],
            snapshot[PODS.plural],
            self._domain,
        )
