"""The CA over real gRPC on 127.0.0.1: the proxy's CertificateManager obtains and renews its
certificate (seconds-long TTL), the result completes real mutual-TLS handshakes, and every
kind of bad request is refused with the right status and a logged reason.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import logging
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from trellis.controlplane.ads import AdsServer, serve_ads
from trellis.controlplane.ca import CertificateAuthority
from trellis.controlplane.ca_files import create_root, load_or_create_root
from trellis.controlplane.ca_service import CREATE_CERTIFICATE, CertificateService
from trellis.controlplane.join_token import KEY_FILE, JoinTokenAuthenticator, JoinTokens
from trellis.controlplane.snapshot_cache import SnapshotCache
from trellis.core.addresses import SocketAddress
from trellis.runtime.ca_client import IdentityError, generate_key
from trellis.runtime.grpc_stream import GrpcError, unary_call
from trellis.runtime.identity import (
    CertificateManager,
    IdentitySettings,
    IssuedCertificate,
    token_value,
)
from trellis.xds import istio_ca_pb2

from .ads_helpers import run

CART = "spiffe://cluster.local/ns/default/sa/cart"
PAYMENT = "spiffe://cluster.local/ns/default/sa/payment"
UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT = 16, 7, 3


@dataclass
class Ca:
    server: AdsServer
    tokens: JoinTokens
    authority: CertificateAuthority
    data_dir: Path

    @property
    def port(self) -> int:
        return self.server.port

    def token(self, account: str = "cart", ttl: float = 600) -> str:
        return self.tokens.issue("default", account, f"{account}-1", ttl=ttl).token

    def manager(self, token: str, **settings: object) -> CertificateManager:
        options = IdentitySettings(SocketAddress("127.0.0.1", self.port), **settings)  # type: ignore[arg-type]
        return CertificateManager(options, token_value(token))


@asynccontextmanager
async def certificate_authority(data_dir: Path, cert_ttl: float = 3600) -> AsyncIterator[Ca]:
    authority = load_or_create_root(data_dir, now=datetime.datetime.now(datetime.UTC))
    tokens = JoinTokens.load_or_create(data_dir)
    service = CertificateService(authority, JoinTokenAuthenticator(tokens), cert_ttl=cert_ttl)
    server = await serve_ads(
        "127.0.0.1:0", SnapshotCache(debounce=0.0), handlers=(service.rpc_handler(),)
    )
    try:
        yield Ca(server, tokens, authority, data_dir)
    finally:
        await server.stop(0.1)


async def handshake(cert: IssuedCertificate, workdir: Path, trusted_root: str) -> str:
    """A real mutual-TLS handshake on 127.0.0.1: server and client both present `cert`, each
    trusting only `trusted_root`. Returns the URI SAN the client saw on the server.
    """
    chain, key = workdir / f"{cert.serial}-chain.pem", workdir / f"{cert.serial}-key.pem"
    chain.write_text(cert.cert_chain_pem)
    key.touch(mode=0o600)
    key.write_text(cert.key_pem)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.minimum_version = ssl.TLSVersion.TLSv1_2
    server_context.load_cert_chain(chain, key)
    server_context.load_verify_locations(cadata=cert.root_pem)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False  # SPIFFE identities are URIs, checked below
    client_context.load_verify_locations(cadata=trusted_root)
    client_context.load_cert_chain(chain, key)
    peers: list[object] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peercert"))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        assert await reader.read() == b"ok"
        peer = writer.get_extra_info("peercert")
        writer.close()
    finally:
        server.close()
    sans = dict(peer["subjectAltName"])
    assert peers and dict(peers[0]["subjectAltName"]) == sans  # type: ignore[index]
    return str(sans["URI"])


def test_a_proxy_obtains_renews_and_uses_its_certificate(tmp_path: Path) -> None:
    async def main() -> None:
        async with certificate_authority(tmp_path, cert_ttl=4) as ca:
            manager = ca.manager(ca.token(), spiffe_id=CART, validity=3600)
            rotations: list[IssuedCertificate] = []
            renewed_twice = asyncio.Event()

            def note(cert: IssuedCertificate) -> None:
                rotations.append(cert)
                if len(rotations) == 3:
                    renewed_twice.set()

            manager.add_listener(note)
            task = asyncio.create_task(manager.run())
            try:
                first = await manager.wait_first(10)
                assert first.spiffe_id == CART
                assert first.not_after - first.issued_at <= 4.0  # requested 1h, capped at 4s
                assert first.root_pem == ca.authority.root_bundle_pem
                assert await handshake(first, tmp_path, ca.authority.root_bundle_pem) == CART
                async with asyncio.timeout(15):
                    await renewed_twice.wait()
                second = rotations[1]
                assert second.serial != first.serial
                assert second.issued_at < first.not_after  # renewed before expiry
                assert await handshake(second, tmp_path, ca.authority.root_bundle_pem) == CART
                assert [c.serial for c in rotations[:2]] == [first.serial, second.serial]
                status = manager.status()
                assert status is not None and status.renewals >= 2
            finally:
                task.cancel()

    run(main)


def test_a_certificate_is_not_trusted_under_another_root(tmp_path: Path) -> None:
    async def main() -> None:
        async with certificate_authority(tmp_path) as ca:
            manager = ca.manager(ca.token())
            task = asyncio.create_task(manager.run())
            try:
                cert = await manager.wait_first(10)
            finally:
                task.cancel()
            _, stranger = create_root("other.example", datetime.datetime.now(datetime.UTC))
            other_root = stranger.public_bytes(serialization.Encoding.PEM).decode()
            with pytest.raises(ssl.SSLError):
                await handshake(cert, tmp_path, other_root)

    run(main)


async def create(port: int, csr: str, metadata: list[tuple[str, str]]) -> int:
    """The gRPC status of one CreateCertificate call (0 when a chain came back)."""
    request = istio_ca_pb2.IstioCertificateRequest(csr=csr).SerializeToString()
    try:
        answer = await unary_call(
            SocketAddress("127.0.0.1", port),
            CREATE_CERTIFICATE,
            request,
            metadata=metadata,
            call_timeout=10,
        )
    except GrpcError as exc:
        return exc.status
    assert istio_ca_pb2.IstioCertificateResponse.FromString(answer).cert_chain
    return 0


def forge_audience(data_dir: Path, token: str, audience: str) -> str:
    """Re-sign `token` with the control plane's own key but another audience."""
    text = (data_dir / KEY_FILE).read_text().strip()
    key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    head, body, _ = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["aud"] = audience
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_bad_requests_are_refused_and_logged_without_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trellis.controlplane.ca")

    async def main() -> list[tuple[str, int]]:
        async with certificate_authority(tmp_path) as ca:
            good = ca.token()
            csr = (await generate_key(None)).csr_pem
            payment_csr = (await generate_key(PAYMENT)).csr_pem
            expired = ca.tokens.issue("default", "cart", "c", ttl=60, now=0).token
            cases = {
                "no token": (csr, []),
                "not bearer": (csr, [("authorization", f"Basic {good}")]),
                "unknown token": (csr, [("authorization", "Bearer a.b.c")]),
                "expired": (csr, [("authorization", f"Bearer {expired}")]),
                "audience": (
                    csr,
                    [("authorization", f"Bearer {forge_audience(tmp_path, good, 'trellis-api')}")],
                ),
                "other identity": (payment_csr, [("authorization", f"Bearer {good}")]),
                "garbage csr": ("hello", [("authorization", f"Bearer {good}")]),
                "good": (csr, [("authorization", f"Bearer {good}")]),
            }
            results = []
            for name, (request_csr, metadata) in cases.items():
                results.append((name, await create(ca.port, request_csr, metadata)))
            assert good not in caplog.text and expired not in caplog.text
            return results

    assert dict(run(main)) == {
        "no token": UNAUTHENTICATED,
        "not bearer": UNAUTHENTICATED,
        "unknown token": UNAUTHENTICATED,
        "expired": UNAUTHENTICATED,
        "audience": UNAUTHENTICATED,
        "other identity": PERMISSION_DENIED,
        "garbage csr": INVALID_ARGUMENT,
        "good": 0,
    }
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 7
    assert any("no credential" in text for text in refusals)
    assert any("expired" in text for text in refusals)
    assert any("audience 'trellis-api'" in text for text in refusals)
    assert any(
        f"asks for URI:{PAYMENT}; the credential grants only {CART}" in text
        and "sa/cart workload cart-1" in text
        for text in refusals
    )


def test_a_token_for_cart_never_yields_payment(tmp_path: Path) -> None:
    async def main() -> None:
        async with certificate_authority(tmp_path) as ca:
            manager = ca.manager(ca.token("cart"), spiffe_id=PAYMENT)
            task = asyncio.create_task(manager.run())
            try:
                with pytest.raises(IdentityError, match="PERMISSION_DENIED") as refused:
                    await manager.wait_first(10)
                assert refused.value.refused and manager.current is None
            finally:
                task.cancel()

    run(main)


def test_tokens_survive_a_control_plane_restart(tmp_path: Path) -> None:
    async def main() -> None:
        async with certificate_authority(tmp_path) as ca:
            token = ca.token()
            root = ca.authority.root_bundle_pem
        async with certificate_authority(tmp_path) as restarted:
            manager = restarted.manager(token, directory=tmp_path / "certs")
            task = asyncio.create_task(manager.run())
            try:
                cert = await manager.wait_first(10)
            finally:
                task.cancel()
            assert cert.root_pem == root and cert.spiffe_id == CART
        # Given a directory, the manager writes Istio's three files, owner-only.
        files = {path.name: path for path in (tmp_path / "certs").iterdir()}
        assert sorted(files) == ["cert-chain.pem", "key.pem", "root-cert.pem"]
        assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files.values())
        assert files["key.pem"].read_text() == cert.key_pem
        assert files["cert-chain.pem"].read_text() == cert.cert_chain_pem

    run(main)
