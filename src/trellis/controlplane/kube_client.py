"""The control plane's Kubernetes API access: a lightkube client and list-then-watch loops.

`connect` makes a lightkube `AsyncClient` from a kubeconfig file or, without
one, from the pod's service account (in-cluster). Objects are handled as plain
JSON dicts (lightkube's generic resources), so the pure conversion code in
`trellis.kube` never sees a client type.

`Informer` follows one resource type the way client-go's reflector does:
list, then watch from the list's resourceVersion; every event and bookmark
moves the resume point; a watch that ends is resumed from it; 410 Gone (the
history no longer reaches back that far) means list again; any other failure
waits a bounded exponential backoff and resumes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.core.generic_client import ALL_NS
from lightkube.generic_resource import (
    GenericGlobalResource,
    GenericNamespacedResource,
    create_global_resource,
    create_namespaced_resource,
)
from lightkube.types import on_error_raise

from trellis.errors import TrellisError

log = logging.getLogger("trellis.controlplane.kube")

JsonObject = dict[str, Any]
ObjectKey = tuple[str, str]
"""(namespace, name); namespace "" for cluster-scoped objects."""

DEFAULT_WATCH_TIMEOUT = 300  # seconds a watch request may last before it is renewed


class KubeApiError(TrellisError):
    """The Kubernetes API answered with an error status."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"Kubernetes API: {code} {reason}: {message}")
        self.code = code
        self.reason = reason


def api_error(error: ApiError) -> KubeApiError:
    """A lightkube error as ours: status code, reason and message."""
    status = error.status
    return KubeApiError(int(status.code or 0), str(status.reason or ""), str(status.message or ""))


@dataclass(frozen=True, slots=True)
class ApiResource:
    """A resource type of the API: `/apis/{group}/{version}/.../{plural}`."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def lightkube(self) -> type[GenericNamespacedResource] | type[GenericGlobalResource]:
        if self.namespaced:
            return create_namespaced_resource(self.group, self.version, self.kind, self.plural)
        return create_global_resource(self.group, self.version, self.kind, self.plural)


NAMESPACES = ApiResource("", "v1", "Namespace", "namespaces", namespaced=False)
SERVICES = ApiResource("", "v1", "Service", "services")
PODS = ApiResource("", "v1", "Pod", "pods")
ENDPOINT_SLICES = ApiResource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")


def connect(kubeconfig: Path | None, *, namespace: str = "default") -> AsyncClient:
    """A client for the cluster of `kubeconfig` (its current context), else in-cluster.

    Raises TrellisError naming what is missing when neither is available.
    """
    try:
        if kubeconfig is not None:
            config = KubeConfig.from_file(kubeconfig)
        else:
            config = KubeConfig.from_service_account()
    except (OSError, KeyError, ValueError) as exc:
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account"
        raise TrellisError(f"cannot load Kubernetes credentials ({where}): {exc}") from None
    return AsyncClient(config, namespace=namespace, field_manager="trellis-controlplane")


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def object_version(obj: Mapping[str, Any]) -> int:
    """An object's resourceVersion as a number (0 when absent or not a number)."""
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "0")
    return int(text) if text.isdigit() else 0


@dataclass(slots=True)
class Backoff:
    """Bounded exponential backoff: `initial`, doubling, at most `maximum` seconds."""

    initial: float = 0.2
    maximum: float = 10.0
    _failures: int = field(default=0, init=False)

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * float(2**self._failures))
        self._failures = min(self._failures + 1, 32)
        return delay

    def reset(self) -> None:
        self._failures = 0


class InformerHandler(Protocol):
    """What an `Informer` reports to."""

    def replaced(self, items: list[JsonObject], version: int) -> Awaitable[None]:
        """A fresh listing: these are all the objects, as of `version`."""
        ...

    def changed(self, event_type: str, obj: JsonObject) -> Awaitable[None]:
        """One ADDED, MODIFIED or DELETED event, in the watch's order."""
        ...

    def progressed(self, version: int) -> Awaitable[None]:
        """Every change up to `version` has been reported (a bookmark)."""
        ...


class Informer:
    """List then watch one resource type across all namespaces; report to a handler."""

    def __init__(
        self,
        client: AsyncClient,
        resource: ApiResource,
        handler: InformerHandler,
        *,
        backoff: Backoff | None = None,
        watch_timeout: int = DEFAULT_WATCH_TIMEOUT,
    ) -> None:
        self.client = client
        self.resource = resource
        self.handler = handler
        self.backoff = backoff or Backoff()
        self.watch_timeout = watch_timeout
        self.version = 0  # where the watch resumes: the last listing, event or bookmark
        self.listed = asyncio.Event()
        self.relists = 0
        self._class = resource.lightkube()

    async def run(self) -> None:
        """Follow the resource until cancelled."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                self.backoff.reset()
            except ApiError as exc:
                error = api_error(exc)
                if error.code == 410:
                    log.info(
                        "%s: watch from %d expired (410 Gone); listing again",
                        self.resource.plural,
                        self.version,
                    )
                    need_list = True
                    continue
                await self._pause(error)
            except (httpx.HTTPError, OSError, ValueError) as exc:
                await self._pause(exc)

    async def _pause(self, error: Exception) -> None:
        delay = self.backoff.next_delay()
        log.warning("%s: %s; retrying in %.1fs", self.resource.plural, error, delay)
        await asyncio.sleep(delay)

    async def _list(self) -> None:
        namespace = ALL_NS if self.resource.namespaced else None
        listing = self.client.list(cast(Any, self._class), namespace=namespace)
        items = [_plain(item) for item in [item async for item in listing]]
        version = int(listing.resourceVersion) if listing.resourceVersion.isdigit() else 0
        self.relists += 1
        self.version = version
        await self.handler.replaced(items, version)
        self.listed.set()

    async def _watch(self) -> None:
        """One watch request, from `self.version`, until the server ends it."""
        generic = self.client._client  # lightkube's public watch cannot ask for bookmarks
        request = generic.prepare_request(
            "list",
            res=self._class,
            namespace=ALL_NS if self.resource.namespaced else None,
            watch=True,
            params={
                "resourceVersion": str(self.version),
                "allowWatchBookmarks": "true",
                "timeoutSeconds": self.watch_timeout,
            },
        )
        events = generic.watch(request, on_error=on_error_raise)
        try:
            async for event_type, obj in events:
                data = _plain(obj)
                version = object_version(data)
                if event_type == "BOOKMARK":
                    self.version = max(self.version, version)
                    await self.handler.progressed(self.version)
                    continue
                self.version = max(self.version, version)
                await self.handler.changed(event_type, data)
                self.backoff.reset()
        finally:
            await events.aclose()


def _plain(obj: Any) -> JsonObject:
    data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return dict(data)
