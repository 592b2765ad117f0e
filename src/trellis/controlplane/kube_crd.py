"""Trellis config as CRD objects of the Kubernetes API: records, and writes with preconditions.

`stored_resource` turns an object the API server returned into a store
record; `CrdWriter` makes the requests of `KubeConfigStore`'s write path: an
update carries the expected `metadata.resourceVersion`, a create-only write is
a POST, a delete carries `preconditions.resourceVersion`, and the server's 409
becomes ConflictError; the leader's status writes are merge patches of the
`status` subresource. `updated_at` is kept in the `trellis.io/updated-at`
annotation (Kubernetes has no such field).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx
from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType

from trellis.controlplane.api_kinds import KindInfo
from trellis.controlplane.kube_client import ApiResource, JsonObject, KubeApiError, api_error
from trellis.controlplane.store import (
    ConflictError,
    StoredResource,
    StoreError,
    canonical_json,
)
from trellis.controlplane.write_plan import PreparedWrite

log = logging.getLogger("trellis.controlplane.kube")

UPDATED_AT_ANNOTATION = "trellis.io/updated-at"
_RETRIES = 5


@dataclass(frozen=True, slots=True)
class CrdKind:
    """A kind the store keeps, and the API resource it lives in."""

    kind: str
    resource: ApiResource

    @classmethod
    def of(cls, info: KindInfo) -> CrdKind:
        return cls(
            info.kind, ApiResource(info.group, info.preferred_version, info.kind, info.plural)
        )


def stored_resource(obj: Mapping[str, Any]) -> StoredResource:
    """A CRD object from the API server as a store record."""
    meta = obj.get("metadata") or {}
    annotations = dict(meta.get("annotations") or {})
    updated = annotations.pop(UPDATED_AT_ANNOTATION, None)
    created = str(meta.get("creationTimestamp") or "")
    return StoredResource(
        api_version=str(obj.get("apiVersion", "")),
        kind=str(obj.get("kind", "")),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        spec_json=canonical_json(obj.get("spec") or {}),
        resource_version=str(meta.get("resourceVersion") or "0"),
        generation=int(meta.get("generation") or 1),
        uid=str(meta.get("uid") or ""),
        created_at=created,
        updated_at=str(updated or created),
        labels=MappingProxyType(dict(sorted((meta.get("labels") or {}).items()))),
        annotations=MappingProxyType(dict(sorted(annotations.items()))),
    )


class CrdWriter:
    """Requests for single CRD objects: create, update and delete with the API server's
    preconditions, and undoing a batch that failed half-way."""

    def __init__(self, client: AsyncClient, kinds: Mapping[str, CrdKind], timeout: float) -> None:
        self._client = client
        self._kinds = kinds
        self._timeout = timeout

    def normalized(self, write: PreparedWrite) -> PreparedWrite:
        """The write in the kind's preferred version (the server stores one form)."""
        kind = self._crd(write.key[0])
        return PreparedWrite(
            key=write.key,
            api_version=kind.resource.api_version,
            spec_json=write.spec_json,
            labels=write.labels,
            annotations=write.annotations,
            expected=write.expected,
        )

    def _crd(self, kind: str) -> CrdKind:
        found = self._kinds.get(kind)
        if found is None:
            raise StoreError(f"kind {kind!r} has no CRD this store follows")
        return found

    def _document(self, write: PreparedWrite, version: str | None, now: str) -> JsonObject:
        kind, namespace, name = write.key
        metadata: JsonObject = {
            "name": name,
            "namespace": namespace,
            "annotations": {**write.annotations, UPDATED_AT_ANNOTATION: now},
        }
        if write.labels:
            metadata["labels"] = dict(write.labels)
        if version is not None:
            metadata["resourceVersion"] = version
        return {
            "apiVersion": write.api_version,
            "kind": kind,
            "metadata": metadata,
            "spec": json.loads(write.spec_json),
        }

    async def write(
        self, write: PreparedWrite, current: StoredResource | None, now: str
    ) -> StoredResource:
        """Create or update one object with the write's precondition; ConflictError on 409."""
        kind, namespace, name = write.key
        version = write.expected if write.expected not in (None, "0") else None
        exists = current is not None
        for _attempt in range(_RETRIES):
            try:
                if not exists:
                    obj = await self._send(
                        "post", kind, namespace, None, self._document(write, None, now)
                    )
                else:
                    base = version or (current.resource_version if current else None)
                    doc = self._document(write, base, now)
                    obj = await self._send("put", kind, namespace, name, doc)
                return stored_resource(obj)
            except KubeApiError as exc:
                if exc.code == 409 and write.expected is not None:
                    raise await self.conflict(kind, namespace, name, write.expected) from None
                if exc.code not in (404, 409):
                    raise StoreError(f"{kind} {namespace}/{name}: {exc}") from None
                # An unconditional write raced another writer: look again and retry.
                fresh = await self._fetch(kind, namespace, name)
                exists = fresh is not None
                current = stored_resource(fresh) if fresh is not None else None
        raise StoreError(
            f"{kind} {namespace}/{name}: still racing other writers after {_RETRIES} tries"
        )

    async def conflict(self, kind: str, namespace: str, name: str, expected: str) -> ConflictError:
        """The error for a failed precondition, naming the version the server holds now."""
        fresh = await self._fetch(kind, namespace, name)
        actual = None if fresh is None else str(fresh["metadata"].get("resourceVersion"))
        return ConflictError(kind, namespace, name, expected=expected, actual=actual)

    async def _fetch(self, kind: str, namespace: str, name: str) -> JsonObject | None:
        try:
            return await self._send("get", kind, namespace, name, None)
        except KubeApiError as exc:
            if exc.code == 404:
                return None
            raise StoreError(f"{kind} {namespace}/{name}: {exc}") from None

    async def _send(
        self, method: str, kind: str, namespace: str, name: str | None, body: JsonObject | None
    ) -> JsonObject:
        """One request for one object of a CRD; the answer's JSON, or KubeApiError."""
        resource = self._crd(kind).resource.lightkube()
        generic = self._client._client
        obj = None if body is None else resource.from_dict(body)
        request = generic.prepare_request(
            method, res=resource, obj=obj, name=name, namespace=namespace
        )
        return await self._exchange(generic, request)

    async def patch_status(
        self, kind: str, namespace: str, name: str, patch: JsonObject
    ) -> JsonObject:
        """JSON-merge-patch one object's `status` subresource; the object as patched.

        A `metadata.resourceVersion` in the patch is the server's precondition (409).
        """
        resource = self._crd(kind).resource.lightkube()
        generic = self._client._client
        request = generic.prepare_request(
            "patch",
            res=resource.Status,
            obj=patch,
            name=name,
            namespace=namespace,
            headers={"Content-Type": PatchType.MERGE.value},
        )
        return await self._exchange(generic, request)

    async def delete(
        self, kind: str, namespace: str, name: str, expected: str | None
    ) -> JsonObject:
        """Delete one object (with `expected` as precondition); the object as deleted."""
        resource = self._crd(kind).resource.lightkube()
        generic = self._client._client
        request = generic.prepare_request("delete", res=resource, name=name, namespace=namespace)
        options: JsonObject = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if expected is not None:
            options["preconditions"] = {"resourceVersion": expected}
        request.data = options
        return await self._exchange(generic, request)

    async def _exchange(self, generic: Any, request: Any) -> JsonObject:
        try:
            response = await asyncio.wait_for(
                generic.send(generic.build_adapter_request(request)), self._timeout
            )
            generic.raise_for_status(response)
        except ApiError as exc:
            raise api_error(exc) from None
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            raise StoreError(f"the Kubernetes API did not answer: {exc!r}") from None
        data: JsonObject = response.json()
        return data

    async def undo(self, done: Sequence[tuple[StoredResource | None, StoredResource]]) -> None:
        """Put back what an interrupted batch changed (best effort, newest first)."""
        for before, after in reversed(done):
            try:
                if before is None:
                    await self.delete(
                        after.kind, after.namespace, after.name, after.resource_version
                    )
                else:
                    write = PreparedWrite(
                        key=before.key,
                        api_version=before.api_version,
                        spec_json=before.spec_json,
                        labels=before.labels,
                        annotations=before.annotations,
                        expected=after.resource_version,
                    )
                    await self._send(
                        "put",
                        before.kind,
                        before.namespace,
                        before.name,
                        self._document(write, after.resource_version, before.updated_at),
                    )
            except (KubeApiError, StoreError) as exc:
                log.error(
                    "could not undo the write of %s after a failed batch: %s", after.describe(), exc
                )
