"""The dashboard: its page (`GET /dashboard`, static files shipped in the package) and the
REST endpoints it draws from: the service graph, per-service golden signals, the
stored config.

The page and its script need no token (they hold no data); the script calls the
API like any client, with the bearer token it was given in the URL fragment
(`/dashboard#token=...`) when it is not served to a loopback address.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import RedirectResponse, Response

from trellis.api.duration import DurationSyntaxError, parse_duration
from trellis.controlplane.api_status import StatusError
from trellis.controlplane.stats_collector import MetricsCollector
from trellis.controlplane.stats_graph import graph_json, rows_json, service_series
from trellis.controlplane.stats_window import recent, window
from trellis.controlplane.store import ConfigStore

PAGE_FILES = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/style.css": ("style.css", "text/css; charset=utf-8"),
}
"""URL path -> (file in trellis/controlplane/dashboard, content type)."""
OPEN_PAGE_PATHS = ("/", *PAGE_FILES)
MAX_WINDOW = 3600.0


def _seconds(text: str, name: str, least: float = 1.0) -> float:
    try:
        value = parse_duration(text)
    except DurationSyntaxError as exc:
        raise StatusError(400, f"{name}: {exc} (Go syntax: 60s, 5m)") from None
    if not least <= value <= MAX_WINDOW:
        raise StatusError(400, f"{name}: must be between {least:g}s and {MAX_WINDOW:g}s")
    return value


def _page(file: str) -> bytes:
    return resources.files("trellis.controlplane").joinpath("dashboard", file).read_bytes()


def dashboard_page_router() -> APIRouter:
    """`GET /` (redirects) and the dashboard's page, script and style sheet."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard", status_code=307)

    for path, (file, media_type) in PAGE_FILES.items():
        body = _page(file)

        async def serve(body: bytes = body, media_type: str = media_type) -> Response:
            return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})

        router.add_api_route(path, serve, methods=["GET"])
    return router


def _no_metrics() -> StatusError:
    return StatusError(503, "this control plane does not collect proxy metrics")


def stats_router(metrics: MetricsCollector | None) -> APIRouter:
    """`GET /api/v1/graph` and `GET /api/v1/services/stats` from the collector's samples."""
    router = APIRouter(tags=["stats"])

    @router.get(
        "/api/v1/graph",
        summary="The service graph with each edge's requests/s, success, latency and mTLS",
    )
    async def graph(
        window_: Annotated[
            str, Query(alias="window", description="How far back (Go duration: 60s, 5m)")
        ] = "60s",
        namespace: Annotated[
            str | None, Query(description="Only edges with an end or service here")
        ] = None,
    ) -> dict[str, Any]:
        span = _seconds(window_, "window")
        if metrics is None:
            raise _no_metrics()
        win = window(recent(metrics.samples, span))
        body = graph_json(win, namespace)
        body["rows"] = rows_json(win, namespace)
        body["window"] = span
        body["scrapeInterval"] = metrics.interval
        body["scrapes"] = [item.to_json() for _, item in sorted(metrics.outcomes.items())]
        return body

    @router.get(
        "/api/v1/services/stats",
        summary="Per service: requests/s, success and latency over the last minutes",
    )
    async def service_stats(
        window_: Annotated[
            str, Query(alias="window", description="How far back (Go duration: 10m)")
        ] = "10m",
        step: Annotated[str, Query(description="Time between points (Go duration)")] = "15s",
        namespace: Annotated[str | None, Query(description="Only services here")] = None,
    ) -> dict[str, Any]:
        span = _seconds(window_, "window")
        step_seconds = _seconds(step, "step", least=0.1)
        if metrics is None:
            raise _no_metrics()
        items = service_series(metrics.samples, span, step_seconds, namespace)
        return {"kind": "ServiceStatsList", "window": span, "step": step_seconds, "items": items}

    return router


def config_router(store: ConfigStore) -> APIRouter:
    """`GET /api/v1/config`: every stored resource, for the dashboard's config view."""
    router = APIRouter(tags=["config"])

    @router.get("/api/v1/config", summary="Every stored resource, by kind, namespace and name")
    async def config(
        namespace: Annotated[str | None, Query(description="Only this namespace")] = None,
    ) -> dict[str, Any]:
        listing = await store.list_with_version(None, namespace)
        return {
            "kind": "ResourceList",
            "resourceVersion": listing.resource_version,
            "items": [item.to_document() for item in listing.items],
        }

    return router
