"""The part of the control plane's REST API the launcher uses, over `httpx.AsyncClient`.

Refusals come back as `ApiRefusedError` with the server's `Status` reason and code;
an unreachable server is a `LaunchError` that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from trellis.platform.hosts import ServiceAddresses
from trellis.platform.spec import NETWORKING_VERSION, LaunchError

TIMEOUT = 10.0
POLL = 0.05


class ApiRefusedError(LaunchError):
    """The API answered with an error status."""

    def __init__(self, message: str, code: int, reason: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.details = dict(details)


def _refusal(method: str, path: str, response: httpx.Response) -> ApiRefusedError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        message = str(body.get("message", ""))
        reason = str(body.get("reason", "")) or str(response.status_code)
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
    else:
        message = response.text.strip()[:300] or response.reason_phrase
        reason, details = str(response.status_code), {}
    return ApiRefusedError(
        f"control plane refused {method} {path} ({reason}): {message}",
        response.status_code,
        reason,
        details or {},
    )


def _item_path(plural: str, namespace: str, name: str) -> str:
    group, version = NETWORKING_VERSION.split("/")
    return f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}"


class ControlPlaneApi:
    """Calls the REST API at `server` (`http://HOST:PORT`), with `token` if given."""

    def __init__(self, server: str, token: str | None = None, timeout: float = TIMEOUT) -> None:
        if "://" not in server:
            server = f"http://{server}"
        self.server = server.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.server, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        params: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        content = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            response = await self._http.request(
                method, path, content=content, headers=headers, params=params
            )
        except httpx.TransportError as exc:
            raise LaunchError(
                f"cannot reach the control plane at {self.server}: {exc or type(exc).__name__} "
                "(is `trellis control-plane` running? set --server or TRELLIS_SERVER)"
            ) from None
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            raise _refusal(method, path, response)
        try:
            answer = response.json()
        except ValueError:
            raise LaunchError(f"{method} {path}: the control plane did not answer JSON") from None
        if not isinstance(answer, dict):
            raise LaunchError(f"{method} {path}: expected a JSON object")
        return answer

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A stored resource (`workloadentries`, `serviceentries`), None when absent."""
        return await self._call("GET", _item_path(plural, namespace, name), missing_ok=True)

    async def apply(self, documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """`POST /api/v1/apply`: all or nothing; the answer lists each resource's outcome."""
        answer = await self._call("POST", "/api/v1/apply", body=list(documents))
        assert answer is not None
        return answer

    async def delete(
        self, plural: str, namespace: str, name: str, resource_version: str | None = None
    ) -> bool:
        """Delete one resource (only if still at `resource_version`); False when absent."""
        params = {"resourceVersion": resource_version} if resource_version else None
        path = _item_path(plural, namespace, name)
        answer = await self._call("DELETE", path, params=params, missing_ok=True)
        return answer is not None

    async def join_token(
        self, namespace: str, service_account: str, workload: str, ttl: str
    ) -> str:
        body = {
            "namespace": namespace,
            "serviceAccount": service_account,
            "workload": workload,
            "ttl": ttl,
        }
        answer = await self._call("POST", "/api/v1/join-tokens", body=body)
        token = (answer or {}).get("token")
        if not isinstance(token, str) or not token:
            raise LaunchError("the control plane's join-token answer has no token")
        return token

    async def proxies(self) -> list[dict[str, Any]]:
        """The connected proxies (`GET /api/v1/proxies`)."""
        answer = await self._call("GET", "/api/v1/proxies")
        items = (answer or {}).get("items", [])
        return [item for item in items if isinstance(item, dict)]

    @contextlib.asynccontextmanager
    async def watch(self, kind: str, seconds: float) -> AsyncIterator[AsyncIterator[str]]:
        """Open `GET /api/v1/watch?kind=KIND` (ended by the server after `seconds`); the
        stream's event lines. Once this is entered, no change of `kind` goes unseen."""
        params = {"kind": kind, "timeoutSeconds": f"{seconds:g}"}
        timeout = httpx.Timeout(TIMEOUT, read=seconds + TIMEOUT)
        try:
            async with self._http.stream(
                "GET", "/api/v1/watch", params=params, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _refusal("GET", "/api/v1/watch", response)
                yield response.aiter_lines()
        except httpx.TransportError as exc:
            raise LaunchError(
                f"watching {kind} at {self.server}: {exc or type(exc).__name__}"
            ) from None

    async def xds_socket(self) -> str | None:
        """The path of the control plane's xDS Unix socket (`GET /api/v1/mesh`), if it has one."""
        answer = await self._call("GET", "/api/v1/mesh")
        path = (answer or {}).get("xdsSocket")
        return str(path) if path else None

    async def service_addresses(self, namespace: str | None = None) -> ServiceAddresses:
        """The services' virtual IPs (`GET /api/v1/service-addresses`), with the names
        that resolve to them from `namespace` (every service's own view when None)."""
        params = {"namespace": namespace} if namespace is not None else None
        answer = await self._call("GET", "/api/v1/service-addresses", params=params)
        return ServiceAddresses.from_json(answer or {})

    async def wait_acknowledged(self, version: str, seconds: float) -> bool:
        """Wait (at most `seconds`) until every connected proxy has the config of store
        `version` (see `acknowledged`); False when not, or when the API cannot tell."""
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds / POLL) + 1):
            try:
                if acknowledged(await self.proxies(), int(version)):
                    return True
            except (LaunchError, ValueError):
                return False  # the control plane is gone, or the version is not a number
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        return False


def resource_version_of(answer: Mapping[str, Any], kind: str, name: str) -> str:
    """The resourceVersion the apply `answer` gives resource `kind`/`name`."""
    for result in answer.get("results", []):
        if result.get("kind") == kind and result.get("name") == name:
            return str(result.get("resourceVersion", ""))
    raise LaunchError(f"the apply answer does not mention {kind} {name}")


def rejection(proxies: Sequence[Mapping[str, Any]], node_id: str) -> str | None:
    """`TYPE: reason` of the update the proxy `node_id` last rejected (NACK), if any."""
    for item in proxies:
        if item.get("id") != node_id:
            continue
        for short_name, status in sorted((item.get("types") or {}).items()):
            nack = (status or {}).get("lastNack")
            if isinstance(nack, dict) and nack.get("message"):
                return f"{short_name}: {nack['message']}"
    return None


def acknowledged(proxies: Sequence[Mapping[str, Any]], version: int) -> bool:
    """Whether every connected proxy runs config built from store `version` or later.

    A proxy counts once its snapshot is that new and none of its xDS types
    waits for an acknowledgement (STALE), i.e. the change reached it.
    """
    for item in proxies:
        try:
            built_from = int(str(item.get("snapshotVersion")))
        except ValueError:
            continue  # no snapshot (its config cannot be built): it gets no change at all
        if built_from < version:
            return False
        states = [(status or {}).get("state") for status in (item.get("types") or {}).values()]
        if "STALE" in states:
            return False
    return True
