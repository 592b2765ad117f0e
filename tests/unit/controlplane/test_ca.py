"""The CA signs exactly the identity it is told to, with the fields a SPIFFE SVID needs."""

from __future__ import annotations

import base64
import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from trellis.controlplane.ca import (
    BACKDATE,
    CertificateAuthority,
    CsrError,
    IdentityMismatchError,
    check_trust_domain,
    spiffe_id,
)
from trellis.controlplane.ca_auth import Grant
from trellis.controlplane.ca_files import CA_DIR, CERT_FILE, KEY_FILE, load_or_create_root
from trellis.controlplane.ca_service import CertificateService, bearer_credential
from trellis.controlplane.join_token import JoinTokenAuthenticator, JoinTokens

from .pki_helpers import NOW, csr, load, new_key, uri

CART = spiffe_id("cluster.local", "default", "cart")
PAYMENT = spiffe_id("cluster.local", "default", "payment")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return load_or_create_root(tmp_path_factory.mktemp("data"), now=NOW)


def test_first_start_creates_a_p256_root_valid_ten_years_with_a_private_key_file(
    tmp_path: Path,
) -> None:
    authority = load_or_create_root(tmp_path, trust_domain="example.org", now=NOW)
    key_file, cert_file = tmp_path / CA_DIR / KEY_FILE, tmp_path / CA_DIR / CERT_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / CA_DIR).iterdir())
    root = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert root == authority.root == authority.certificate
    public = root.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    lifetime = root.not_valid_after_utc - NOW
    assert datetime.timedelta(days=3649) < lifetime <= datetime.timedelta(days=3650)
    root.verify_directly_issued_by(root)
    assert authority.root_bundle_pem == cert_file.read_text()
    assert authority.trust_domain == "example.org"


def test_a_restart_reuses_the_root(tmp_path: Path) -> None:
    first = load_or_create_root(tmp_path, now=NOW)
    again = load_or_create_root(tmp_path, now=NOW + datetime.timedelta(days=30))
    assert again.root.serial_number == first.root.serial_number
    assert again.root_bundle_pem == first.root_bundle_pem


def test_a_leaf_is_a_spiffe_svid_for_the_granted_identity(ca: CertificateAuthority) -> None:
    key = new_key()
    issued = ca.sign(csr(key), CART, 3600, NOW)
    leaf = load(issued.cert_chain[0])
    assert issued.cert_chain[1:] == (ca.root_bundle_pem,)
    leaf.verify_directly_issued_by(ca.root)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.critical and list(sans.value) == [uri(CART)]
    assert leaf.subject == x509.Name([])
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.public_key() == key.public_key()
    assert leaf.not_valid_before_utc == NOW - BACKDATE
    assert leaf.not_valid_after_utc == NOW + datetime.timedelta(hours=1)
    assert issued.serial == f"{leaf.serial_number:x}"


def test_serials_are_random(ca: CertificateAuthority) -> None:
    serials = {ca.sign(csr(), CART, 60, NOW).serial for _ in range(5)}
    assert len(serials) == 5


def test_a_lifetime_of_seconds_is_honoured(ca: CertificateAuthority) -> None:
    leaf = load(ca.sign(csr(), CART, 5, NOW).cert_chain[0])
    assert leaf.not_valid_after_utc - NOW == datetime.timedelta(seconds=5)


def test_no_leaf_outlives_the_signing_certificate(ca: CertificateAuthority) -> None:
    issued = ca.sign(csr(), CART, 20 * 365 * 86400, NOW)
    assert issued.not_after == ca.certificate.not_valid_after_utc


def test_a_csr_naming_another_identity_is_refused(ca: CertificateAuthority) -> None:
    # Decision: a token for cart whose CSR asks for payment gets nothing (PERMISSION_DENIED
    # over gRPC), not a cart certificate: the request is wrong and the log should say so.
    with pytest.raises(IdentityMismatchError, match=r"asks for URI:spiffe://.*/sa/payment"):
        ca.sign(csr(None, uri(PAYMENT)), CART, 60, NOW)


def test_a_csr_adding_any_other_name_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(IdentityMismatchError, match=r"DNS:payment\.default"):
        ca.sign(csr(None, uri(CART), x509.DNSName("payment.default")), CART, 60, NOW)


def test_the_csr_subject_is_ignored(ca: CertificateAuthority) -> None:
    request = csr(None, uri(CART), common_name="payment")
    leaf = load(ca.sign(request, CART, 60, NOW).cert_chain[0])
    assert leaf.subject == x509.Name([])
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [uri(CART)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "carries no CSR"),
        ("not a csr", "not a PEM certificate signing request"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "PEM"),
    ],
)
def test_malformed_csrs_are_refused(ca: CertificateAuthority, text: str, problem: str) -> None:
    with pytest.raises(CsrError, match=problem):
        ca.sign(text, CART, 60, NOW)


def test_a_csr_whose_signature_does_not_verify_is_refused(ca: CertificateAuthority) -> None:
    request = x509.load_pem_x509_csr(csr(None, uri(CART)).encode())
    der = bytearray(request.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s value
    pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der)).decode("ascii")
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CsrError, match="signature does not verify"):
        ca.sign(pem, CART, 60, NOW)


def test_weak_keys_are_refused(ca: CertificateAuthority) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CsrError, match="1024 bits"):
        ca.sign(csr(weak), CART, 60, NOW)


def test_lifetime_is_the_request_capped_at_the_configured_ttl(ca: CertificateAuthority) -> None:
    grants = JoinTokenAuthenticator(JoinTokens(b"k" * 32))
    service = CertificateService(ca, grants, cert_ttl=3600)
    assert service.lifetime(0) == 3600
    assert service.lifetime(5) == 5
    assert service.lifetime(7200) == 3600
    with pytest.raises(CsrError, match="negative"):
        service.lifetime(-1)


def test_bearer_credentials_are_read_from_one_authorization_entry() -> None:
    assert bearer_credential([("authorization", "Bearer abc.def")]) == "abc.def"
    assert bearer_credential([("Authorization", "bearer  xyz ")]) == "xyz"
    for metadata in (
        [],
        [("authorization", "Basic abc")],
        [("authorization", "Bearer ")],
        [("authorization", "Bearer a"), ("authorization", "Bearer b")],
    ):
        refusal = bearer_credential(metadata)
        assert not isinstance(refusal, str), metadata


def test_grants_name_their_spiffe_id() -> None:
    grant = Grant("shop", "cart", "cart-1", "join-token")
    assert grant.spiffe_id("example.org") == "spiffe://example.org/ns/shop/sa/cart"
    assert "cart-1" in grant.describe()


@pytest.mark.parametrize("domain", ["Cluster.Local", "a/b", "", "spiffe://x"])
def test_trust_domains_follow_spiffe(domain: str) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        check_trust_domain(domain)
    assert check_trust_domain("cluster.local") == "cluster.local"
