"""The CA on Kubernetes: TokenReview of the projected service-account token, for real.

The certificate service runs on a real grpc.aio server on 127.0.0.1 with the
`TokenReviewAuthenticator`, whose lightkube client asks a stand-in API server
(`kube_auth_standin`, a test double) about each token. A real `trellis proxy`
holding a projected token in its `--join-token-file` gets a certificate for
the token's service account; an unknown token, a token for another audience
and a CSR for another identity are refused with the right status, and an API
server in trouble is UNAVAILABLE (retried), never a grant.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from trellis.controlplane.ads import AdsServer, serve_ads
from trellis.controlplane.ca_files import load_or_create_root
from trellis.controlplane.ca_service import CREATE_CERTIFICATE, CertificateService
from trellis.controlplane.kube_calls import KubeCalls, api_client
from trellis.controlplane.kube_token_auth import TokenReviewAuthenticator
from trellis.controlplane.snapshot_cache import SnapshotCache
from trellis.core.addresses import SocketAddress
from trellis.runtime.ca_client import generate_key
from trellis.runtime.grpc_stream import GrpcError, unary_call
from trellis.xds import istio_ca_pb2

from ..bootstrap import free_port
from ..kube_auth_standin import KubeAuthStandin, kube_auth_standin
from ..test_proxy_identity import admin, secrets_of, stop

CART = "spiffe://cluster.local/ns/shop/sa/cart"
PAYMENT = "spiffe://cluster.local/ns/shop/sa/payment"
CART_TOKEN = "eyJhbGciOiJSUzI1NiJ9.cart-projected-token.signature"
OK, PERMISSION_DENIED, UNAVAILABLE, UNAUTHENTICATED = 0, 7, 14, 16


class KubeCa:
    """The certificate service with TokenReview authentication, on an event loop thread."""

    def __init__(self, data_dir: Path, standin: KubeAuthStandin) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.calls: KubeCalls | None = None
        self.authenticator: TokenReviewAuthenticator | None = None

        async def start() -> AdsServer:
            authority = load_or_create_root(data_dir, now=datetime.datetime.now(datetime.UTC))
            self.calls = KubeCalls(api_client(standin.kube_config(), timeout=5))
            self.authenticator = TokenReviewAuthenticator(self.calls)
            service = CertificateService(authority, self.authenticator)
            return await serve_ads(
                "127.0.0.1:0", SnapshotCache(debounce=0.0), handlers=(service.rpc_handler(),)
            )

        self.server: AdsServer = self.call(start())

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=20)

    def stop(self) -> None:
        self.call(self.server.stop(0.1))
        if self.calls is not None:
            self.call(self.calls.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def standin() -> Iterator[KubeAuthStandin]:
    with kube_auth_standin() as server:
        yield server


@pytest.fixture
def ca(tmp_path: Path, standin: KubeAuthStandin) -> Iterator[KubeCa]:
    server = KubeCa(tmp_path / "cp", standin)
    yield server
    server.stop()


def create_certificate(port: int, token: str, identity: str | None) -> tuple[int, str]:
    """CreateCertificate at `port` for a fresh key naming `identity`: (status, message or leaf)."""

    async def call() -> tuple[int, str]:
        key = await generate_key(identity)
        request = istio_ca_pb2.IstioCertificateRequest(csr=key.csr_pem)
        try:
            answer = await unary_call(
                SocketAddress("127.0.0.1", port),
                CREATE_CERTIFICATE,
                request.SerializeToString(),
                metadata=[("authorization", f"Bearer {token}")],
                call_timeout=10,
            )
        except GrpcError as exc:
            return exc.status, exc.message
        chain = istio_ca_pb2.IstioCertificateResponse.FromString(answer).cert_chain
        return OK, chain[0]

    return asyncio.run(call())


def start_proxy(
    ca: KubeCa, token_file: Path, admin_port: int, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "trellis.cli.main", "proxy",
        "--xds", f"127.0.0.1:{ca.port}",
        "--node-id", "sidecar~10.0.0.7~cart-7d9f-abcde.shop~shop.svc.cluster.local",
        "--admin-port", str(admin_port),
        "--join-token-file", str(token_file),
    ]  # fmt: skip
    with log.open("ab") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)


def test_a_proxy_with_a_projected_token_gets_its_service_accounts_identity(
    ca: KubeCa, standin: KubeAuthStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    standin.issue(CART_TOKEN, "shop", "cart", pod="cart-7d9f-abcde")
    token_file = tmp_path / "trellis-token"
    token_file.write_text(CART_TOKEN)  # the kubelet writes the projected token without a newline
    port, log = free_port(), tmp_path / "proxy.log"
    caplog.set_level(logging.INFO, "trellis.controlplane.ca")
    proc = start_proxy(ca, token_file, port, log)
    try:
        (entry,) = secrets_of(port, proc, log)["dynamic_active_secrets"]
        chain = base64.b64decode(
            entry["secret"]["tls_certificate"]["certificate_chain"]["inline_bytes"]
        )
        assert chain.startswith(b"-----BEGIN CERTIFICATE-----")
        status, certs = admin(port, "/certs")
        assert status == 200
        (leaf,) = json.loads(certs)["certificates"][0]["cert_chain"]
        assert leaf["subject_alt_names"] == [{"uri": CART}]
    finally:
        stop(proc)
    (review,) = standin.state.reviews
    assert review["spec"] == {"token": CART_TOKEN, "audiences": ["trellis-ca"]}
    issued = [r.getMessage() for r in caplog.records if "issued certificate" in r.getMessage()]
    assert issued and "ns/shop sa/cart workload cart-7d9f-abcde (token-review)" in issued[0]
    assert CART_TOKEN not in caplog.text + log.read_text()


def test_an_unknown_token_stops_the_proxy_unauthenticated(
    ca: KubeCa, standin: KubeAuthStandin, tmp_path: Path
) -> None:
    token_file = tmp_path / "trellis-token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.forged.token")
    log = tmp_path / "proxy.log"
    proc = start_proxy(ca, token_file, free_port(), log)
    try:
        assert proc.wait(20) == 1
    finally:
        stop(proc)
    text = log.read_text()
    assert "the CA refused: UNAUTHENTICATED" in text
    assert "did not authenticate the token: invalid bearer token" in text
    assert "forged" not in text


def test_a_token_for_another_audience_is_refused(
    ca: KubeCa, standin: KubeAuthStandin, caplog: pytest.LogCaptureFixture
) -> None:
    token = "api-server-audience-token"
    standin.issue(token, "shop", "cart", audiences=("https://kubernetes.default.svc",))
    caplog.set_level(logging.WARNING, "trellis.controlplane.ca")
    status, message = create_certificate(ca.port, token, CART)
    assert status == UNAUTHENTICATED
    assert "is invalid for the target audiences ['trellis-ca']" in message
    assert "refused" in caplog.text and token not in caplog.text


def test_a_csr_for_another_identity_is_denied_and_logged(
    ca: KubeCa, standin: KubeAuthStandin, caplog: pytest.LogCaptureFixture
) -> None:
    standin.issue(CART_TOKEN, "shop", "cart", pod="cart-1")
    caplog.set_level(logging.WARNING, "trellis.controlplane.ca")
    status, message = create_certificate(ca.port, CART_TOKEN, PAYMENT)
    assert status == PERMISSION_DENIED
    assert f"the credential grants only {CART}" in message
    (refusal,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert PAYMENT in refusal and "ns/shop sa/cart workload cart-1 (token-review)" in refusal
    assert CART_TOKEN not in caplog.text
    status, san = create_certificate(ca.port, CART_TOKEN, CART)  # its own identity is fine
    assert status == OK, san


def test_an_api_server_in_trouble_is_unavailable_not_a_grant(
    ca: KubeCa, standin: KubeAuthStandin
) -> None:
    standin.issue(CART_TOKEN, "shop", "cart")
    standin.state.failing = True
    status, message = create_certificate(ca.port, CART_TOKEN, CART)
    assert status == UNAVAILABLE
    assert "cannot check the token with the API server now" in message and "503" in message
    standin.state.failing = False
    assert create_certificate(ca.port, CART_TOKEN, CART)[0] == OK
    reviews = len(standin.state.reviews)
    standin.state.failing = True  # a cached grant needs no review for a while
    assert create_certificate(ca.port, CART_TOKEN, CART)[0] == OK
    assert len(standin.state.reviews) == reviews


def test_an_unreachable_api_server_is_unavailable(ca: KubeCa, standin: KubeAuthStandin) -> None:
    standin.issue(CART_TOKEN, "shop", "cart")
    standin.stop()
    status, message = create_certificate(ca.port, CART_TOKEN, CART)
    assert status == UNAVAILABLE
    assert "cannot reach the API server" in message
