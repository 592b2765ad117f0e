"""The CLI against the real API app in process: FastAPI's TestClient as the CLI's HTTP client.

No sockets: requests go straight to the ASGI app. The CLI finds the client in
the click context object (see `trellis.cli.options.api_client`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from starlette.exceptions import StarletteDeprecationWarning

from trellis.cli.client import ApiClient
from trellis.cli.main import cli
from trellis.controlplane.ads_status import ProxyStatus
from trellis.controlplane.api import create_app
from trellis.controlplane.memory_store import MemoryConfigStore

with warnings.catch_warnings():
    # Starlette >= 1.x prefers the `httpx2` fork; plain httpx still works (and is what we ship).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

DATA = Path(__file__).parent / "data"
SHOP = DATA / "shop.yaml"
INVALID = DATA / "invalid.yaml"
TOKEN = "unit-test-token-0123456789abcdef"


@dataclass
class Api:
    """An API app over a fresh in-memory store, and a way to run CLI commands against it."""

    store: MemoryConfigStore
    client: TestClient

    def run(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        runner = CliRunner()
        return runner.invoke(cli, list(args), obj=ApiClient(self.client), input=input, env=env)

    def list_keys(self) -> list[tuple[str, str, str]]:
        response = self.client.get("/apis/networking.istio.io/v1/virtualservices")
        assert response.status_code == 200, response.text
        keys: list[tuple[str, str, str]] = []
        for kind in ("virtualservices", "destinationrules", "serviceentries", "workloadentries"):
            body = self.client.get(f"/apis/networking.istio.io/v1/{kind}").json()
            keys += [
                (item["kind"], item["metadata"]["namespace"], item["metadata"]["name"])
                for item in body["items"]
            ]
        return sorted(keys)


def make_api(
    *,
    ads_status: Callable[[], list[ProxyStatus]] | None = None,
    proxy_admin: Callable[[str], str | None] | None = None,
    analyze_on_apply: bool = True,
) -> Api:
    store = MemoryConfigStore()
    app = create_app(
        store,
        token=TOKEN,
        ads_status=ads_status,
        proxy_admin=proxy_admin,
        analyze_on_apply=analyze_on_apply,
    )
    client = TestClient(app, base_url="http://127.0.0.1:8080", client=("127.0.0.1", 40000))
    return Api(store, client)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def table_rows(text: str) -> list[dict[str, str]]:
    """A kubectl-style table as one dict per row, cells cut at the header's column offsets."""
    rows = lines(text)
    header = rows[0]
    titles = [title.strip() for title in header.split("   ") if title.strip()]
    starts: list[int] = []
    for title in titles:
        starts.append(header.index(title, starts[-1] + 1 if starts else 0))
    ends = [*starts[1:], None]
    return [
        {
            title: row[start:end].strip()
            for title, start, end in zip(titles, starts, ends, strict=True)
        }
        for row in rows[1:]
    ]


def column(text: str, header: str) -> list[str]:
    return [row[header] for row in table_rows(text)]


def documents(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [dict(item) for item in items]
