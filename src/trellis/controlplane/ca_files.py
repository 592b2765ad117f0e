"""Where the CA's key and certificates come from: created on first start, or plugged in.

Self-signed (the default): on first start the control plane creates an ECDSA
P-256 root valid for ten years in `DATA_DIR/ca/` (`ca-key.pem` mode 0600,
`ca-cert.pem`), each file written to a temporary name, synced and renamed, and
reuses it afterwards.

Plugged in (Istio's "plug-in CA certificates"): `--ca-cert` (the signing
certificate, usually an intermediate), `--ca-key` (its key, unencrypted PEM)
and, when the signing certificate is not itself a root, `--ca-chain` (the
certificates above it up to the root, as Istio's `cert-chain.pem`; a leading
copy of the signing certificate is accepted and dropped). Everything is
checked before the control plane serves: the key matches the certificate,
every certificate of the chain is a CA and signed the one below it, the chain
ends with a self-signed root, and the signing certificate is valid now. Each
problem is a `CaError` naming the flag and the file.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from trellis.controlplane.ca import (
    BACKDATE,
    DEFAULT_TRUST_DOMAIN,
    CaError,
    CertificateAuthority,
    SigningKey,
    describe,
    signature_hash,
)
from trellis.runtime.files import write_file_atomically

CA_DIR = "ca"
CERT_FILE = "ca-cert.pem"
KEY_FILE = "ca-key.pem"
ROOT_VALIDITY = datetime.timedelta(days=3650)
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def create_root(
    trust_domain: str, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed root: ECDSA P-256, ten years, CA:true, keyCertSign and cRLSign."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "Trellis root CA"),
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash(key))
    )
    return key, certificate


def load_or_create_root(
    data_dir: Path, *, trust_domain: str = DEFAULT_TRUST_DOMAIN, now: datetime.datetime
) -> CertificateAuthority:
    """The self-signed CA kept in `data_dir/ca/`, created there on first use."""
    directory = data_dir / CA_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if not cert_path.exists():
        # No certificate was ever published: (re)create both. A key alone is what a
        # crash between the two renames below leaves behind.
        key, certificate = create_root(trust_domain, now)
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_file_atomically(key_path, pem_key, 0o600)
        write_file_atomically(
            cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644
        )
    return _load(
        (str(cert_path), cert_path),
        (str(key_path), key_path),
        None,
        trust_domain=trust_domain,
        now=now,
    )


def open_authority(
    data_dir: Path,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
    ca_chain: Path | None = None,
    now: datetime.datetime,
) -> CertificateAuthority:
    """The operator's CA when `ca_cert` and `ca_key` are given, else the self-signed one."""
    if ca_cert is None and ca_key is None:
        if ca_chain is not None:
            raise CaError("--ca-chain needs --ca-cert and --ca-key")
        return load_or_create_root(data_dir, trust_domain=trust_domain, now=now)
    if ca_cert is None or ca_key is None:
        raise CaError("give both --ca-cert and --ca-key (or neither, for a self-signed root)")
    return load_plugged(ca_cert, ca_key, ca_chain, trust_domain=trust_domain, now=now)


def load_plugged(
    cert: Path,
    key: Path,
    chain: Path | None = None,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    now: datetime.datetime,
) -> CertificateAuthority:
    """An operator's CA (`--ca-cert`, `--ca-key`, optional `--ca-chain`), checked."""
    return _load(
        (f"--ca-cert {cert}", cert),
        (f"--ca-key {key}", key),
        (f"--ca-chain {chain}", chain) if chain is not None else None,
        trust_domain=trust_domain,
        now=now,
    )


def _load(
    cert: tuple[str, Path],
    key: tuple[str, Path],
    chain: tuple[str, Path] | None,
    *,
    trust_domain: str,
    now: datetime.datetime,
) -> CertificateAuthority:
    cert_label = cert[0]
    certificates = _read_certificates(*cert)
    signing = certificates[0]
    signing_key = _read_key(*key)
    if signing_key.public_key().public_bytes(*_SPKI) != signing.public_key().public_bytes(*_SPKI):
        raise CaError(f"{key[0]}: the key does not belong to the certificate in {cert_label}")
    _check_ca(signing, cert_label)
    _check_current(signing, cert_label, now)
    above = list(certificates[1:])
    if chain is not None:
        above += _read_certificates(*chain)
    if above and above[0] == signing:
        del above[0]
    label = chain[0] if chain is not None else cert_label
    _check_chain(signing, above, label, cert_label)
    return CertificateAuthority(
        signing_key, signing, above, trust_domain=trust_domain, source=cert_label
    )


def _read(label: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CaError(f"{label}: cannot read: {exc.strerror or exc}") from None


def _read_certificates(label: str, path: Path) -> list[x509.Certificate]:
    data = _read(label, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CaError(f"{label}: not PEM certificates: {exc}") from None
    if not certificates:
        raise CaError(f"{label}: holds no certificate")
    return certificates


def _read_key(label: str, path: Path) -> SigningKey:
    data = _read(label, path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CaError(f"{label}: the key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CaError(f"{label}: not a PEM private key: {exc}") from None
    signing_types = (
        ec.EllipticCurvePrivateKey,
        rsa.RSAPrivateKey,
        ed25519.Ed25519PrivateKey,
        ed448.Ed448PrivateKey,
    )
    if not isinstance(key, signing_types):
        raise CaError(f"{label}: a {type(key).__name__} cannot sign certificates")
    return key


def _check_ca(certificate: x509.Certificate, label: str) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise CaError(
            f"{label}: {describe(certificate)} is not a CA certificate (no basicConstraints)"
        ) from None
    if not constraints.value.ca:
        raise CaError(f"{label}: {describe(certificate)} is not a CA certificate (CA:FALSE)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise CaError(f"{label}: {describe(certificate)} may not sign certificates (keyCertSign)")


def _check_current(certificate: x509.Certificate, label: str, now: datetime.datetime) -> None:
    if now >= certificate.not_valid_after_utc:
        raise CaError(
            f"{label}: {describe(certificate)} expired on {certificate.not_valid_after_utc}"
        )
    if now + BACKDATE < certificate.not_valid_before_utc:
        raise CaError(
            f"{label}: {describe(certificate)} is not valid before "
            f"{certificate.not_valid_before_utc}"
        )


def _check_chain(
    signing: x509.Certificate, above: Sequence[x509.Certificate], label: str, cert_label: str
) -> None:
    below = signing
    for parent in above:
        _check_ca(parent, label)
        if not _issued_by(below, parent):
            raise CaError(
                f"{label}: {describe(parent)} did not sign {describe(below)}; "
                "list the chain from the signing certificate's issuer up to the root"
            )
        below = parent
    if not _issued_by(below, below):
        if below is signing:
            raise CaError(
                f"{cert_label}: {describe(signing)} is issued by "
                f"'{signing.issuer.rfc4514_string()}'; give --ca-chain with the "
                "certificates up to the root"
            )
        raise CaError(
            f"{label}: the chain ends with {describe(below)}, which is not self-signed; "
            "it must end with the root"
        )


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True
