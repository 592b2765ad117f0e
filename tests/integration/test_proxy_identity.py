"""`trellis proxy --join-token-file` as a real subprocess against a real CA on 127.0.0.1.

The proxy obtains its certificate before serving, shows it in `/config_dump` (key
redacted), `/certs` and the `istio_agent_cert_expiry_seconds` gauge, re-obtains an
identity after a restart, and refuses to start with a bad token.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from trellis.controlplane.ads import AdsServer, serve_ads
from trellis.controlplane.ca_files import load_or_create_root
from trellis.controlplane.ca_service import CertificateService
from trellis.controlplane.join_token import JoinTokenAuthenticator, JoinTokens
from trellis.controlplane.snapshot_cache import SnapshotCache

from .bootstrap import free_port

CART = "spiffe://cluster.local/ns/shop/sa/cart"


class CaThread:
    """The ADS server with the certificate service, on an event loop thread."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tokens = JoinTokens.load_or_create(data_dir)
        self.root = ""

        async def start() -> AdsServer:
            authority = load_or_create_root(data_dir, now=datetime.datetime.now(datetime.UTC))
            self.root = authority.root_bundle_pem
            service = CertificateService(authority, JoinTokenAuthenticator(self.tokens))
            return await serve_ads(
                "127.0.0.1:0", SnapshotCache(debounce=0.0), handlers=(service.rpc_handler(),)
            )

        self.server: AdsServer = self._call(start())

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=10)

    def stop(self) -> None:
        self._call(self.server.stop(0.1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[CaThread]:
    server = CaThread(tmp_path / "cp")
    yield server
    server.stop()


def start_proxy(
    ca: CaThread, token_file: Path, admin_port: int, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "trellis.cli.main", "proxy",
        "--xds", f"127.0.0.1:{ca.server.port}",
        "--node-id", "sidecar~cart-1",
        "--admin-port", str(admin_port),
        "--join-token-file", str(token_file),
    ]  # fmt: skip
    with log.open("ab") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)


def admin(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def secrets_of(port: int, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """The proxy's SecretsConfigDump, waiting (bounded) for the admin port to answer."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            status, body = admin(port, "/config_dump")
        except OSError:
            time.sleep(0.1)
            continue
        assert status == 200
        configs = json.loads(body)["configs"]
        found = [c for c in configs if c["@type"].endswith("SecretsConfigDump")]
        assert found, "the admin port answered before the certificate was there"
        result: dict[str, Any] = found[0]
        return result
    raise AssertionError(f"no admin answer within 20s\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_the_proxy_gets_its_identity_before_serving_and_shows_it(
    ca: CaThread, tmp_path: Path
) -> None:
    token_file = tmp_path / "cart.token"
    token = ca.tokens.issue("shop", "cart", "cart-1").token
    token_file.write_text(token + "\n")
    port, log = free_port(), tmp_path / "proxy.log"
    proc = start_proxy(ca, token_file, port, log)
    try:
        secrets = secrets_of(port, proc, log)
        (entry,) = secrets["dynamic_active_secrets"]
        assert entry["name"] == "default"
        tls = entry["secret"]["tls_certificate"]
        assert base64.b64decode(tls["private_key"]["inline_bytes"]) == b"[redacted]"
        chain = base64.b64decode(tls["certificate_chain"]["inline_bytes"]).decode()
        assert chain.startswith("-----BEGIN CERTIFICATE-----")
        status, certs = admin(port, "/certs")
        assert status == 200
        (leaf,) = json.loads(certs)["certificates"][0]["cert_chain"]
        assert leaf["subject_alt_names"] == [{"uri": CART}]
        assert leaf["serial_number"] == entry["version_info"]
        _, metrics = admin(port, "/stats/prometheus")
        (family,) = [
            f
            for f in text_string_to_metric_families(metrics)
            if f.name == "istio_agent_cert_expiry_seconds"
        ]
        (sample,) = family.samples
        assert sample.labels == {"resource_name": "default"}
        assert 24 * 3600 - 120 < sample.value <= 24 * 3600
        everything = log.read_text() + json.dumps(secrets) + certs + metrics
        assert token not in everything and "PRIVATE KEY" not in everything
        first_serial = entry["version_info"]
    finally:
        stop(proc)
    proc = start_proxy(ca, token_file, port, log)
    try:
        (again,) = secrets_of(port, proc, log)["dynamic_active_secrets"]
        assert again["version_info"] != first_serial  # a restart obtains a new certificate
    finally:
        stop(proc)


def test_a_refused_token_stops_the_proxy_with_the_reason(ca: CaThread, tmp_path: Path) -> None:
    token_file = tmp_path / "bad.token"
    token_file.write_text("not-a-token\n")
    log = tmp_path / "proxy.log"
    proc = start_proxy(ca, token_file, free_port(), log)
    try:
        assert proc.wait(20) == 1
    finally:
        stop(proc)
    text = log.read_text()
    assert "no workload certificate: the CA refused: UNAUTHENTICATED" in text
    assert "Traceback" not in text
