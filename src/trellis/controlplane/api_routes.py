"""Kubernetes-style resource paths and the watch stream of the REST API.

`/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]` lists, gets and
deletes; `/apis/{group}/{version}/{plural}` lists every namespace;
`/api/v1/watch` streams changes as newline-delimited JSON events
(`{"type": "ADDED"|"MODIFIED"|"DELETED"|"ERROR", "object": ...}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from trellis.controlplane.api_kinds import KindInfo, UnknownKindError, find_collection, kind_info
from trellis.controlplane.api_status import StatusError, not_found, status_body
from trellis.controlplane.store import (
    ConfigStore,
    ConflictError,
    StoredResource,
    StoreError,
    WatchEvent,
    WatchExpiredError,
    WatchStream,
)
from trellis.errors import ConfigError

DISCONNECT_CHECK_SECONDS = 5.0
"""How often an idle watch checks whether its client has gone."""


def _collection(group: str, version: str, plural: str) -> KindInfo:
    info = find_collection(group, version, plural)
    if info is None:
        raise StatusError(
            404, f"the server could not find the requested resource ({plural}.{group}/{version})"
        )
    return info


def _document(stored: StoredResource, api_version: str | None = None) -> dict[str, Any]:
    document = stored.to_document()
    if api_version is not None:
        document["apiVersion"] = api_version  # same schema in every served version
    return document


def _list_body(
    info: KindInfo, version: str, items: list[dict[str, Any]], rv: str
) -> dict[str, Any]:
    return {
        "apiVersion": f"{info.group}/{version}",
        "kind": f"{info.kind}List",
        "metadata": {"resourceVersion": rv},
        "items": items,
    }


def resource_router(store: ConfigStore) -> APIRouter:
    """Routes for get, list and delete of stored resources."""
    router = APIRouter(tags=["resources"])

    @router.get("/apis/{group}/{version}/{plural}", summary="List in all namespaces")
    async def list_all(group: str, version: str, plural: str) -> dict[str, Any]:
        info = _collection(group, version, plural)
        listing = await store.list_with_version(info.kind)
        api_version = f"{group}/{version}"
        items = [_document(item, api_version) for item in listing.items]
        return _list_body(info, version, items, listing.resource_version)

    @router.get("/apis/{group}/{version}/namespaces/{namespace}/{plural}", summary="List")
    async def list_namespaced(
        group: str, version: str, namespace: str, plural: str
    ) -> dict[str, Any]:
        info = _collection(group, version, plural)
        listing = await store.list_with_version(info.kind, namespace)
        api_version = f"{group}/{version}"
        items = [_document(item, api_version) for item in listing.items]
        return _list_body(info, version, items, listing.resource_version)

    @router.get("/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}", summary="Get")
    async def get_one(
        group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        info = _collection(group, version, plural)
        stored = await store.get(info.kind, namespace, name)
        if stored is None:
            raise not_found(info.resource, [name])
        return _document(stored, f"{group}/{version}")

    @router.delete(
        "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}", summary="Delete"
    )
    async def delete_one(
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        resource_version: Annotated[
            str | None,
            Query(alias="resourceVersion", description="Delete only if this is the stored version"),
        ] = None,
    ) -> dict[str, Any]:
        info = _collection(group, version, plural)
        try:
            deleted = await store.delete(info.kind, namespace, name, resource_version)
        except ConflictError as exc:
            raise StatusError(409, str(exc)) from None
        except ConfigError as exc:
            raise StatusError(400, str(exc)) from None
        if deleted is None:
            raise not_found(info.resource, [name])
        return _document(deleted, f"{group}/{version}")

    return router


def _event_line(event: WatchEvent) -> bytes:
    return (
        json.dumps({"type": event.type.value, "object": event.resource.to_document()}).encode()
        + b"\n"
    )


def _error_line(code: int, message: str) -> bytes:
    return json.dumps({"type": "ERROR", "object": status_body(code, message)}).encode() + b"\n"


async def _watch_lines(
    request: Request,
    stream: WatchStream,
    kind: str | None,
    namespace: str | None,
    lifetime: float | None,
) -> AsyncIterator[bytes]:
    """Encoded events until the timeout, the client leaving, or the store closing."""
    deadline = None if lifetime is None else time.monotonic() + lifetime
    iterator = aiter(stream)
    pending: asyncio.Future[WatchEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            wait = DISCONNECT_CHECK_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if not done:
                if await request.is_disconnected():
                    return
                continue
            task, pending = pending, None
            try:
                event = task.result()
            except StopAsyncIteration:
                return
            except WatchExpiredError as exc:
                yield _error_line(410, str(exc))
                return
            resource = event.resource
            if (kind is None or resource.kind == kind) and (
                namespace is None or resource.namespace == namespace
            ):
                yield _event_line(event)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, WatchExpiredError):
                await pending
        await stream.aclose()


def watch_router(store: ConfigStore) -> APIRouter:
    router = APIRouter(tags=["watch"])

    @router.get(
        "/api/v1/watch",
        summary="Stream changes as newline-delimited JSON",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    async def watch(
        request: Request,
        since: Annotated[
            str | None,
            Query(description="Changes after this resourceVersion (default: from now)"),
        ] = None,
        kind: Annotated[
            str | None, Query(description="Only this kind, e.g. VirtualService")
        ] = None,
        namespace: Annotated[str | None, Query(description="Only this namespace")] = None,
        timeout_seconds: Annotated[
            float | None, Query(alias="timeoutSeconds", gt=0, description="End the stream after")
        ] = None,
    ) -> StreamingResponse:
        if kind is not None:
            try:
                kind_info(kind)
            except UnknownKindError as exc:
                raise StatusError(400, str(exc)) from None
        try:
            stream = store.watch(since)
        except ConfigError as exc:
            raise StatusError(400, f"since: {exc}") from None
        except StoreError as exc:
            raise StatusError(503, str(exc)) from None
        lines = _watch_lines(request, stream, kind, namespace, timeout_seconds)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    return router
