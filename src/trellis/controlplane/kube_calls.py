"""The API server calls the CA and leader election make, with lightkube, in one place.

TokenReview create, Lease get/create/replace, Namespace list and the root
certificate's ConfigMaps (list by name, create, replace): JSON in, JSON out, so the
callers (`kube_token_auth`, `kube_leader`) and their pure halves
(`trellis.kube.token_review`, `trellis.kube.leader`) never see the client
library, and another client could replace this module alone. The client's
errors are translated here: 409 Conflict (a stale resourceVersion, or a
create that lost to another) is `KubeConflictError`, every other failure
(an error status, a refused connection, a timeout) `KubeUnavailableError`.
"""

from __future__ import annotations

from typing import Any, cast

import httpx
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.resources.authentication_v1 import TokenReview
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Namespace

from trellis.errors import TrellisError

DEFAULT_TIMEOUT = 10.0
CONFLICT = 409
NOT_FOUND = 404


class KubeUnavailableError(TrellisError):
    """The API server did not answer the call, or answered with an error."""


class KubeConflictError(TrellisError):
    """409: the object changed since it was read, or already exists."""


def api_client(config: KubeConfig | SingleConfig, timeout: float = DEFAULT_TIMEOUT) -> AsyncClient:
    """An async client whose every call gives up after `timeout` seconds."""
    return AsyncClient(config, timeout=httpx.Timeout(timeout), trust_env=False)


class KubeCalls:
    """The few calls, over one client. `close()` when done."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def close(self) -> None:
        await self._client.close()

    async def create_token_review(self, review: dict[str, Any]) -> dict[str, Any]:
        """POST authentication.k8s.io/v1 tokenreviews; the created object (with its status)."""
        try:
            created = await self._client.create(cast(TokenReview, TokenReview.from_dict(review)))
        except Exception as exc:
            raise _translate(exc, "TokenReview") from None
        return _as_dict(created.to_dict())

    async def get_lease(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The Lease, or None when it does not exist."""
        try:
            lease = await self._client.get(Lease, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == NOT_FOUND:
                return None
            raise _translate(exc, f"Lease {namespace}/{name}") from None
        except Exception as exc:
            raise _translate(exc, f"Lease {namespace}/{name}") from None
        return _as_dict(lease.to_dict())

    async def create_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        try:
            created = await self._client.create(cast(Lease, Lease.from_dict(lease)))
        except Exception as exc:
            raise _translate(exc, "Lease") from None
        return _as_dict(created.to_dict())

    async def replace_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """PUT the Lease; its metadata.resourceVersion is the precondition."""
        try:
            replaced = await self._client.replace(cast(Lease, Lease.from_dict(lease)))
        except Exception as exc:
            raise _translate(exc, "Lease") from None
        return _as_dict(replaced.to_dict())

    async def list_namespaces(self) -> list[dict[str, Any]]:
        try:
            return [_as_dict(ns.to_dict()) async for ns in self._client.list(Namespace)]
        except Exception as exc:
            raise _translate(exc, "Namespaces") from None

    async def list_config_maps(self, name: str) -> list[dict[str, Any]]:
        """The ConfigMaps called `name` in every namespace (a metadata.name field selector,
        which RBAC lets a rule limited to that name allow)."""
        try:
            listing = self._client.list(ConfigMap, namespace="*", fields={"metadata.name": name})
            return [_as_dict(cm.to_dict()) async for cm in listing]
        except Exception as exc:
            raise _translate(exc, f"ConfigMaps {name}") from None

    async def create_config_map(self, config_map: dict[str, Any]) -> None:
        try:
            await self._client.create(cast(ConfigMap, ConfigMap.from_dict(config_map)))
        except Exception as exc:
            raise _translate(exc, f"ConfigMap {_where(config_map)}") from None

    async def replace_config_map(self, config_map: dict[str, Any]) -> None:
        """PUT the ConfigMap; its metadata.resourceVersion is the precondition."""
        try:
            await self._client.replace(cast(ConfigMap, ConfigMap.from_dict(config_map)))
        except Exception as exc:
            raise _translate(exc, f"ConfigMap {_where(config_map)}") from None


def _where(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def _as_dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KubeUnavailableError(
            f"the API server answered a {type(value).__name__}, not an object"
        )
    return value


def _translate(exc: Exception, what: str) -> TrellisError:
    """The client's exception as ours; never carries a request body (it may hold a token)."""
    if isinstance(exc, ApiError):
        code = exc.status.code
        if code == CONFLICT:
            return KubeConflictError(f"{what}: conflict: {exc.status.message}")
        return KubeUnavailableError(f"{what}: the API server answered {code}: {exc.status.message}")
    if isinstance(exc, httpx.HTTPError | OSError | TimeoutError):
        return KubeUnavailableError(f"{what}: cannot reach the API server: {type(exc).__name__}")
    raise exc
