"""Test PKI: roots, intermediates, leaves and CSRs made with `cryptography`, written as PEM."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def certificate(
    subject: str,
    key: Key,
    *,
    issuer: tuple[x509.Certificate, Key] | None = None,
    ca: bool = True,
    key_cert_sign: bool = True,
    not_before: datetime.datetime = NOW - datetime.timedelta(days=1),
    not_after: datetime.datetime = NOW + datetime.timedelta(days=365),
) -> x509.Certificate:
    issuer_name = issuer[0].subject if issuer is not None else name(subject)
    signing_key = issuer[1] if issuer is not None else key
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(signing_key, hashes.SHA256())
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def csr(key: Key | None = None, *names: x509.GeneralName, common_name: str = "") -> str:
    """A CSR (PEM) for `key` (a new P-256 key by default) asking for `names`."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        name(common_name) if common_name else x509.Name([])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=True)
    signed = builder.sign(key or new_key(), hashes.SHA256())
    return signed.public_bytes(serialization.Encoding.PEM).decode("ascii")


def uri(value: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(value)


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode("ascii"))
