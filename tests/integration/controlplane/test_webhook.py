"""The injection webhook served for real: HTTPS on 127.0.0.1, a certificate from the mesh CA.

The client is what the API server does: it verifies the serving certificate
against the MutatingWebhookConfiguration's caBundle for the Service's DNS
name, posts an AdmissionReview, and applies the returned JSONPatch.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from trellis.controlplane.ca_files import open_authority
from trellis.controlplane.webhook import serve_webhook, webhook_ca_bundle
from trellis.kube.settings import PROXY_NAME, InjectionSettings
from trellis.kube.webhook_config import client_config, mutating_webhook_configuration

from ..bootstrap import free_port
from .mesh_procs import ControlPlane, until

DATA = Path(__file__).resolve().parents[2] / "data" / "kube"
SERVICE_NAME = "trellis-webhook.trellis-system.svc"


def _review(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / name).read_text())
    return loaded


def _client_context(bundle: str) -> ssl.SSLContext:
    """Trust exactly the caBundle, as the API server does."""
    return ssl.create_default_context(cadata=base64.b64decode(bundle).decode("ascii"))


def _client(port: int, bundle: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{port}", verify=_client_context(bundle), timeout=10
    )


async def _post(client: httpx.AsyncClient, path: str, content: bytes) -> httpx.Response:
    # Connect to 127.0.0.1, but check the certificate for the Service's name.
    return await client.post(
        path,
        content=content,
        headers={"content-type": "application/json"},
        extensions={"sni_hostname": SERVICE_NAME},
    )


def _with_webhook(
    tmp_path: Path, body: Callable[[int, str], Awaitable[None]], settings: InjectionSettings
) -> None:
    ca = open_authority(tmp_path / "ca", now=datetime.datetime.now(datetime.UTC))
    bundle = webhook_ca_bundle(ca)

    async def main() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve_webhook(ca, settings, "127.0.0.1", 0, started=ready.set_result)
        )
        try:
            port = await asyncio.wait_for(asyncio.shield(ready), 10)
            await asyncio.wait_for(body(port, bundle), 30)
        finally:
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server

    asyncio.run(main())


def test_an_admission_review_is_answered_over_verified_https(tmp_path: Path) -> None:
    request = _review("review-replicaset-pod.json")

    async def body(port: int, bundle: str) -> None:
        async with _client(port, bundle) as client:
            reply = await _post(client, "/inject?timeout=10s", json.dumps(request).encode())
        assert reply.status_code == 200, reply.text
        response = reply.json()["response"]
        assert response["uid"] == request["request"]["uid"]
        assert response["allowed"] is True
        assert response["patchType"] == "JSONPatch"
        operations = json.loads(base64.b64decode(response["patch"]))
        added = [op for op in operations if op["path"] == "/spec/initContainers"]
        assert PROXY_NAME in [c["name"] for c in added[0]["value"]]

    _with_webhook(tmp_path, body, InjectionSettings())


def test_malformed_requests_get_400_and_the_server_keeps_serving(tmp_path: Path) -> None:
    opted_out = _review("review-opt-out-pod.json")

    async def body(port: int, bundle: str) -> None:
        async with _client(port, bundle) as client:
            reply = await _post(client, "/inject", b"{not json")
            assert reply.status_code == 400
            assert "not JSON" in reply.json()["message"]
            reply = await _post(client, "/inject", b'{"kind": "AdmissionReview"}')
            assert reply.status_code == 400
            assert "apiVersion/kind" in reply.json()["message"]
            reply = await client.get("/inject", extensions={"sni_hostname": SERVICE_NAME})
            assert reply.status_code == 405
            reply = await _post(client, "/inject", json.dumps(opted_out).encode())
            assert reply.status_code == 200
            assert reply.json()["response"] == {
                "uid": opted_out["request"]["uid"],
                "allowed": True,
            }
            health = await client.get("/healthz", extensions={"sni_hostname": SERVICE_NAME})
            assert health.status_code == 200

    _with_webhook(tmp_path, body, InjectionSettings())


def test_a_client_trusting_another_ca_refuses_the_server(tmp_path: Path) -> None:
    other = open_authority(tmp_path / "other", now=datetime.datetime.now(datetime.UTC))

    async def body(port: int, bundle: str) -> None:
        async with _client(port, webhook_ca_bundle(other)) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await _post(client, "/inject", b"{}")
        async with _client(port, bundle) as client:  # the right CA, the wrong name
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.post("/inject", content=b"{}", extensions={"sni_hostname": "evil.svc"})

    _with_webhook(tmp_path, body, InjectionSettings())


def test_the_webhook_configuration_carries_the_ca_bundle(tmp_path: Path) -> None:
    ca = open_authority(tmp_path / "ca", now=datetime.datetime.now(datetime.UTC))
    configuration = mutating_webhook_configuration(ca.root_bundle_pem)
    bundle = webhook_ca_bundle(ca)
    assert client_config(ca.root_bundle_pem)["caBundle"] == bundle
    for webhook in configuration["webhooks"]:
        assert webhook["clientConfig"]["caBundle"] == bundle
        assert webhook["clientConfig"]["service"]["name"] == "trellis-webhook"
        assert webhook["failurePolicy"] == "Fail"
    import kubernetes_validate  # noqa: PLC0415

    kubernetes_validate.validate(configuration, "1.29", strict=True)


def test_control_plane_serves_the_webhook_when_asked(tmp_path: Path) -> None:
    port = free_port()
    plane = ControlPlane(
        tmp_path / "cp",
        "--webhook-address", f"127.0.0.1:{port}", "--inject-no-native-sidecar",
        "--inject-control-plane", "cp.example:15010",
    )  # fmt: skip
    plane.start()
    try:
        ca = open_authority(plane.data_dir, now=datetime.datetime.now(datetime.UTC))
        bundle = webhook_ca_bundle(ca)
        request = _review("review-replicaset-pod.json")

        async def post() -> httpx.Response:
            async with _client(port, bundle) as client:
                return await _post(client, "/inject", json.dumps(request).encode())

        def answered() -> httpx.Response | None:
            try:
                return asyncio.run(post())
            except httpx.TransportError:
                return None

        reply = until(answered, what=f"the webhook\n{plane.log_text()[-2000:]}")
        assert reply is not None
        operations = json.loads(base64.b64decode(reply.json()["response"]["patch"]))
        # The application's probes are rewritten too, so the patch replaces the list.
        (containers,) = (op["value"] for op in operations if op["path"] == "/spec/containers")
        proxy = containers[1]
        assert proxy["name"] == PROXY_NAME
        assert proxy["args"][:3] == ["proxy", "--xds", "cp.example:15010"]
    finally:
        plane.stop()


def test_control_plane_rejects_a_bad_webhook_address(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trellis.cli.main", "control-plane", "--data-dir", str(tmp_path),
         "--webhook-address", "15017"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--webhook-address" in done.stderr


def test_control_plane_rejects_a_bad_webhook_service(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trellis.cli.main", "control-plane", "--data-dir", str(tmp_path),
         "--webhook-address", "127.0.0.1:0", "--webhook-service", "trellis-webhook"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--webhook-service" in done.stderr
    assert "expected NAME.NAMESPACE" in done.stderr
