"""`trellis join-token` and `POST /api/v1/join-tokens` against the real API app (no sockets)."""

from __future__ import annotations

import json
import time
import warnings

from click.testing import CliRunner
from starlette.exceptions import StarletteDeprecationWarning

from trellis.cli.client import ApiClient
from trellis.cli.main import cli
from trellis.controlplane.api import create_app
from trellis.controlplane.join_token import JoinTokens
from trellis.controlplane.memory_store import MemoryConfigStore

from .api_testing import TOKEN

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

KEY = bytes(range(32))


def client(peer: str = "127.0.0.1") -> TestClient:
    app = create_app(
        MemoryConfigStore(), token=TOKEN, join_tokens=JoinTokens(KEY), trust_domain="example.org"
    )
    return TestClient(app, base_url="http://127.0.0.1:8080", client=(peer, 40000))


def test_the_cli_prints_a_token_the_ca_accepts_for_that_workload() -> None:
    result = CliRunner().invoke(
        cli,
        ["join-token", "-n", "shop", "--service-account", "cart", "--workload", "cart-1"],
        obj=ApiClient(client()),
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    claims = JoinTokens(KEY).verify(token, time.time())
    assert (claims.namespace, claims.service_account, claims.workload) == ("shop", "cart", "cart-1")
    assert 3590 < claims.expires_at - time.time() <= 3600
    assert "spiffe://example.org/ns/shop/sa/cart" in result.stderr


def test_ttl_and_json_output() -> None:
    result = CliRunner().invoke(
        cli,
        ["join-token", "--service-account", "web", "--workload", "w", "--ttl", "90s", "-o", "json"],
        obj=ApiClient(client()),
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["namespace"] == "default"
    assert answer["ttl"] == "90s"
    assert answer["spiffeId"] == "spiffe://example.org/ns/default/sa/web"
    assert answer["audience"] == "trellis-ca"


def test_invalid_requests_are_400_naming_the_field() -> None:
    api = client()
    bad_name = api.post(
        "/api/v1/join-tokens", json={"namespace": "Shop", "serviceAccount": "a", "workload": "w"}
    )
    assert bad_name.status_code == 400 and "namespace 'Shop'" in bad_name.json()["message"]
    bad_ttl = api.post(
        "/api/v1/join-tokens",
        json={"namespace": "shop", "serviceAccount": "a", "workload": "w", "ttl": "soon"},
    )
    assert bad_ttl.status_code == 400 and "ttl" in bad_ttl.json()["message"]
    unknown = api.post(
        "/api/v1/join-tokens",
        json={"namespace": "shop", "serviceAccount": "a", "workload": "w", "spiffeId": "x"},
    )
    assert unknown.status_code == 400 and "spiffeId" in unknown.json()["message"]
    result = CliRunner().invoke(
        cli,
        ["join-token", "--service-account", "a", "--workload", "w", "--ttl", "0s"],
        obj=ApiClient(api),
    )
    assert result.exit_code == 1 and "ttl must be between" in result.stderr


def test_other_hosts_need_the_api_token() -> None:
    remote = client(peer="10.0.0.9")
    body = {"namespace": "shop", "serviceAccount": "a", "workload": "w"}
    assert remote.post("/api/v1/join-tokens", json=body).status_code == 401
    allowed = remote.post(
        "/api/v1/join-tokens", json=body, headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert allowed.status_code == 201
