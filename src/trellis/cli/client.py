"""HTTP client of the control plane's REST API, for the CLI.

Errors come back as `ApiError` carrying the server's `Status` (message, reason,
code, details), or saying that the server could not be reached.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from trellis.controlplane.api_kinds import KindInfo
from trellis.errors import TrellisError

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0


class ApiError(TrellisError):
    """The API refused a request, or could not be reached (`code` 0)."""

    def __init__(
        self,
        message: str,
        *,
        code: int = 0,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.details: dict[str, Any] = dict(details or {})


def _status_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return ApiError(
            str(body.get("message", "")),
            code=response.status_code,
            reason=str(body.get("reason", "")),
            details=body.get("details") if isinstance(body.get("details"), dict) else None,
        )
    text = response.text.strip()[:500] or response.reason_phrase
    return ApiError(f"{response.status_code}: {text}", code=response.status_code)


class ApiClient:
    """Calls the REST API through an `httpx.Client` whose base URL is the server."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    @classmethod
    def connect(
        cls, server: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> ApiClient:
        """A client of the API at `server` (`http://HOST:PORT`), sending `token` if given."""
        if "://" not in server:
            server = f"http://{server}"
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return cls(httpx.Client(base_url=server, headers=headers, timeout=timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            response = self._http.request(
                method, path, params=params, content=content, headers=headers
            )
        except httpx.TransportError as exc:
            raise ApiError(
                f"cannot reach the control plane at {self._http.base_url}: {exc} "
                "(is `trellis control-plane` running? set --server or TRELLIS_SERVER)"
            ) from None
        if response.status_code >= 400:
            raise _status_error(response)
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                f"{method} {path}: the server did not answer JSON", code=response.status_code
            ) from None

    def apply(
        self, documents: Sequence[Mapping[str, Any]], *, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        params = {"force": str(force).lower(), "dryRun": str(dry_run).lower()}
        result: dict[str, Any] = self._call(
            "POST",
            "/api/v1/apply",
            params=params,
            content=json.dumps(list(documents)).encode(),
            headers={"content-type": "application/json"},
        )
        return result

    def list_resources(self, kind: KindInfo, namespace: str | None) -> list[dict[str, Any]]:
        """Resources of `kind` in `namespace` (None: all namespaces)."""
        body = self._call("GET", kind.collection_path(namespace))
        items: list[dict[str, Any]] = body.get("items", [])
        return items

    def get(self, kind: KindInfo, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", kind.item_path(namespace, name))
        return result

    def delete(self, kind: KindInfo, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", kind.item_path(namespace, name))
        return result

    def analyze(self, documents: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Findings over the server's config, with `documents` merged in when given."""
        if documents is None:
            body = self._call("GET", "/api/v1/analyze")
        else:
            body = self._call(
                "POST",
                "/api/v1/analyze",
                content=json.dumps(list(documents)).encode(),
                headers={"content-type": "application/json"},
            )
        findings: list[dict[str, Any]] = body.get("findings", [])
        return findings

    def proxies(self) -> list[dict[str, Any]]:
        body = self._call("GET", "/api/v1/proxies")
        items: list[dict[str, Any]] = body.get("items", [])
        return items

    def create_join_token(
        self, namespace: str, service_account: str, workload: str, ttl: str | None = None
    ) -> dict[str, Any]:
        """A join token for one workload (`ttl` in Go syntax, e.g. "1h"; None: the default)."""
        body: dict[str, str] = {
            "namespace": namespace,
            "serviceAccount": service_account,
            "workload": workload,
        }
        if ttl is not None:
            body["ttl"] = ttl
        result: dict[str, Any] = self._call(
            "POST",
            "/api/v1/join-tokens",
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        return result

    def graph(self, window: str = "60s", namespace: str | None = None) -> dict[str, Any]:
        """`GET /api/v1/graph`: the service graph and per-edge rows over `window`."""
        params = {"window": window}
        if namespace:
            params["namespace"] = namespace
        result: dict[str, Any] = self._call("GET", "/api/v1/graph", params=params)
        return result

    def config_dump(self, proxy: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "GET", f"/api/v1/proxies/{quote(proxy, safe='')}/config_dump"
        )
        return result


def fetch_admin_config_dump(address: str, timeout: float = 10.0) -> dict[str, Any]:
    """A proxy's `/config_dump`, read straight from its admin address `HOST:PORT`."""
    url = f"http://{address}/config_dump"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.TransportError as exc:
        raise ApiError(f"cannot read {url}: {exc}") from None
    if response.status_code != 200:
        raise ApiError(f"{url} answered {response.status_code}", code=response.status_code)
    try:
        result: dict[str, Any] = response.json()
    except ValueError:
        raise ApiError(f"{url} did not answer JSON") from None
    return result
