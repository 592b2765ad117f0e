"""The control plane's REST API (FastAPI): config apply/get/list/delete/watch, analysis,
proxy status and config dumps.

`create_app` builds the application over a `ConfigStore`; `serve_api` runs it
with uvicorn inside the control plane's event loop. Paths follow Kubernetes
(`/apis/networking.istio.io/v1/namespaces/default/virtualservices/payment`);
errors are `Status` objects. Loopback callers need no token; others send
`Authorization: Bearer <token>` (see `api_auth`). The OpenAPI document is at
`/openapi.json`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from trellis import __version__
from trellis.api.loader import MAX_SOURCE_BYTES
from trellis.api.networking import NetworkingResource
from trellis.controlplane.ads_status import ProxyStatus
from trellis.controlplane.api_apply import analyze_config, apply_batch
from trellis.controlplane.api_auth import TokenAuthMiddleware
from trellis.controlplane.api_dashboard import (
    OPEN_PAGE_PATHS,
    config_router,
    dashboard_page_router,
    stats_router,
)
from trellis.controlplane.api_join_tokens import join_token_router
from trellis.controlplane.api_mesh import MeshInfo, mesh_router
from trellis.controlplane.api_proxies import proxies_json, resolve_proxy
from trellis.controlplane.api_routes import resource_router, watch_router
from trellis.controlplane.api_service_addresses import ServiceAddressSource, service_address_router
from trellis.controlplane.api_status import StatusError, status_body
from trellis.controlplane.join_token import JoinTokens
from trellis.controlplane.otlp import trace_router
from trellis.controlplane.stats_collector import MetricsCollector
from trellis.controlplane.store import ConfigStore, StoreError
from trellis.controlplane.traces import TraceStore
from trellis.errors import TrellisError

log = logging.getLogger("trellis.controlplane.api")

ProxyAdmin = Callable[[str], str | None]
"""proxy_admin(node id) -> the proxy's admin address `HOST:PORT`, or None if unknown."""

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
JSON_TYPES = frozenset({"application/json"})
CONFIG_DUMP_TIMEOUT = 5.0
OPEN_PATHS = ("/healthz", *OPEN_PAGE_PATHS)
BEARER_HELP = (
    "Needed from non-loopback callers: the token in the control plane's data directory "
    "(file api-token)."
)


async def _read_text(request: Request) -> str:
    """The request body as text: JSON or YAML content types only, at most MAX_SOURCE_BYTES."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in YAML_TYPES | JSON_TYPES:
        raise StatusError(
            415,
            f"content type {media_type or '(none)'!r} is not accepted; "
            "send application/json (a list of documents) or application/yaml",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_SOURCE_BYTES:
        raise StatusError(413, f"the body is larger than {MAX_SOURCE_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SOURCE_BYTES:
            raise StatusError(413, f"the body is larger than {MAX_SOURCE_BYTES} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StatusError(400, f"the body is not UTF-8 text: {exc.reason}") from None


async def _status_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StatusError)
    return JSONResponse(status_body(exc.code, exc.message, exc.details), status_code=exc.code)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        status_body(exc.status_code, str(exc.detail)),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', '')}"
        for error in exc.errors()
    )
    return JSONResponse(status_body(400, f"bad request: {problems}"), status_code=400)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s: store error: %s", request.method, request.url.path, exc)
    return JSONResponse(status_body(503, f"config store: {exc}"), status_code=503)


def create_app(
    store: ConfigStore,
    *,
    analyze_on_apply: bool = True,
    token: str,
    ads_status: Callable[[], list[ProxyStatus]] | None = None,
    proxy_admin: ProxyAdmin | None = None,
    join_tokens: JoinTokens | None = None,
    trust_domain: str = "cluster.local",
    service_addresses: ServiceAddressSource | None = None,
    mesh: MeshInfo | None = None,
    metrics: MetricsCollector | None = None,
    traces: TraceStore | None = None,
    registry: Callable[[], Sequence[NetworkingResource]] | None = None,
) -> FastAPI:
    """The REST API over `store`.

    `token`: what non-loopback callers must present. `ads_status`: the xDS
    server's view of connected proxies (`AggregatedDiscoveryService.status`).
    `proxy_admin`: maps a proxy's node id to its admin address, for config dumps.
    `join_tokens`: issues `POST /api/v1/join-tokens` (SPIFFE IDs in `trust_domain`).
    `service_addresses`: serves `GET /api/v1/service-addresses` (services' virtual IPs).
    `mesh`: serves `GET /api/v1/mesh` (trust domain, where proxies connect).
    `metrics`: the proxies' scraped metrics behind `GET /api/v1/graph` and
    `/api/v1/services/stats` (503 without). `traces`: where OTLP exports to
    `POST /v1/traces` go and `GET /api/v1/traces` reads (a store of its own if None).
    `registry`: the platform's services (Kubernetes discovery), which apply and
    analyze check references against beside the stored ones.
    The dashboard is at `/dashboard`.
    """
    app = FastAPI(
        title="Trellis control plane",
        version=__version__,
        description="Mesh config (Istio kinds), analysis and proxy status. "
        "Loopback callers need no token; others send 'Authorization: Bearer <token>'.",
        # Documents the scheme in the OpenAPI document; TokenAuthMiddleware enforces it.
        dependencies=[Depends(HTTPBearer(auto_error=False, description=BEARER_HELP))],
    )
    app.add_middleware(TokenAuthMiddleware, token=token, open_paths=OPEN_PATHS)
    app.add_exception_handler(StatusError, _status_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_error)
    app.include_router(resource_router(store))
    app.include_router(watch_router(store))
    if join_tokens is not None:
        app.include_router(join_token_router(join_tokens, trust_domain))
    if service_addresses is not None:
        app.include_router(service_address_router(service_addresses))
    if mesh is not None:
        app.include_router(mesh_router(mesh))
    app.include_router(stats_router(metrics))
    app.include_router(trace_router(traces if traces is not None else TraceStore()))
    app.include_router(config_router(store))
    app.include_router(dashboard_page_router())

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/api/v1/apply",
        tags=["config"],
        summary="Create or update resources (all or nothing)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                    "application/yaml": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def apply(
        request: Request,
        force: Annotated[bool, Query(description="Store even if analysis finds errors")] = False,
        dry_run: Annotated[
            bool, Query(alias="dryRun", description="Validate and plan, store nothing")
        ] = False,
    ) -> dict[str, Any]:
        text = await _read_text(request)
        return await apply_batch(
            store,
            text,
            source="request",
            force=force,
            dry_run=dry_run,
            analyze_on_apply=analyze_on_apply,
            registry=registry() if registry is not None else (),
        )

    @app.get("/api/v1/analyze", tags=["config"], summary="Analyze the stored config")
    async def analyze_stored() -> dict[str, Any]:
        return await analyze_config(
            store, None, "request", registry() if registry is not None else ()
        )

    @app.post(
        "/api/v1/analyze",
        tags=["config"],
        summary="Analyze the stored config with these documents applied",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                    "application/yaml": {"schema": {"type": "string"}},
                },
            }
        },
    )
    async def analyze_with(request: Request) -> dict[str, Any]:
        return await analyze_config(
            store,
            await _read_text(request),
            "request",
            registry() if registry is not None else (),
        )

    @app.get("/api/v1/proxies", tags=["proxies"], summary="Connected proxies and their sync state")
    async def proxies() -> dict[str, Any]:
        if ads_status is None:
            raise StatusError(503, "the xDS server is not running in this control plane")
        return {"kind": "ProxyStatusList", "items": proxies_json(ads_status())}

    @app.get(
        "/api/v1/proxies/{proxy_id}/config_dump",
        tags=["proxies"],
        summary="The proxy's Envoy config dump, fetched from its admin port",
    )
    async def config_dump(proxy_id: str) -> Any:
        node_id = resolve_proxy(proxy_id, ads_status() if ads_status is not None else [])
        address = proxy_admin(node_id) if proxy_admin is not None else None
        if address is None:
            raise StatusError(
                404,
                f"no admin address is known for proxy {node_id!r}; "
                "give the CLI --admin HOST:PORT to read it directly",
            )
        return await _fetch_config_dump(node_id, address)

    return app


async def _fetch_config_dump(node_id: str, address: str) -> Any:
    url = f"http://{address}/config_dump"
    try:
        async with httpx.AsyncClient(timeout=CONFIG_DUMP_TIMEOUT) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        raise StatusError(502, f"proxy {node_id}: cannot read {url}: {exc!r}") from None
    if response.status_code != 200:
        raise StatusError(502, f"proxy {node_id}: {url} answered {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise StatusError(502, f"proxy {node_id}: {url} did not answer JSON") from None


class ApiServerError(TrellisError):
    """The REST API could not start (its address is taken, not local, ...)."""


async def serve_api(
    app: Starlette,
    host: str,
    port: int,
    *,
    started: Callable[[int], None] | None = None,
    name: str = "REST API",
) -> None:
    """Serve `app` with uvicorn on `host:port` until cancelled.

    Binds the socket itself (a taken port is an ApiServerError, not an exit) and
    leaves signal handling to the caller's event loop. `started(port)` is called
    once the socket listens, with the real port when `port` is 0. `name` says
    which server it is in errors and logs (the monitoring port uses this too).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        raise ApiServerError(
            f"cannot listen on {host}:{port} for the {name}: {exc.strerror or exc}"
        ) from None
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
        log.info("%s on http://%s:%d", name, host, sock.getsockname()[1])
        if started is not None:
            started(sock.getsockname()[1])
        await server.main_loop()
    finally:
        server.should_exit = True
        if server.started:
            await server.shutdown(sockets=[sock])
        sock.close()
