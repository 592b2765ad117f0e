"""The mesh's certificate authority: signs workload certificates (SPIFFE X.509 SVIDs).

A `CertificateAuthority` holds a signing key and certificate (the self-signed
root the control plane created, or an operator's intermediate, see `ca_files`)
and the chain from that certificate up to the root. `sign` turns a CSR into a
leaf for exactly one SPIFFE ID, the one the caller's credential grants:

- the CSR's signature must verify (whoever sent it holds the private key);
- the CSR may name no SAN at all, or exactly the granted SPIFFE ID; a CSR that
  asks for any other name is refused (`IdentityMismatchError`), so a workload
  can never obtain another's identity, and the attempt is visible in the log.
  Istio's CA API requires this check ("verify the authenticated caller is
  authorized to all SANs in the CSR"). The CSR's subject and extensions are
  never copied: the CA decides every field of the certificate.
- the leaf: empty subject, URI SAN (critical, as RFC 5280 requires with an
  empty subject), not a CA, digitalSignature + keyEncipherment, serverAuth +
  clientAuth, a random serial, not_before backdated by `BACKDATE` for clock
  skew, not_after = now + ttl but never past the signing certificate's.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from trellis.errors import TrellisError

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_CERT_TTL = 24 * 3600.0
BACKDATE = datetime.timedelta(seconds=60)
MAX_CSR_BYTES = 64 * 1024
_MIN_RSA_BITS = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class CaError(TrellisError):
    """The CA's key or certificates are unusable; the message names the file."""


class CsrError(TrellisError):
    """A certificate signing request is malformed or unacceptable (gRPC INVALID_ARGUMENT)."""


class IdentityMismatchError(TrellisError):
    """The CSR asks for a name the caller was not granted (gRPC PERMISSION_DENIED)."""


def check_trust_domain(trust_domain: str) -> str:
    """The trust domain if SPIFFE allows it (lowercase letters, digits, '.', '-', '_')."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain) or len(trust_domain) > 255:
        raise ValueError(
            f"trust domain {trust_domain!r} may hold only lowercase letters, digits, '.', '-' "
            "and '_' (SPIFFE)"
        )
    return trust_domain


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """Istio's workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def signature_hash(key: SigningKey) -> hashes.SHA256 | None:
    """The digest to sign with: SHA-256, or none for Ed25519/Ed448 (they hash internally)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def to_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def describe(certificate: x509.Certificate) -> str:
    """A certificate for error messages: its subject (or SAN when the subject is empty)."""
    subject = certificate.subject.rfc4514_string()
    return f"'{subject}'" if subject else f"(serial {certificate.serial_number:x})"


@dataclass(frozen=True, slots=True)
class IssuedLeaf:
    """What `sign` made: the chain to send (leaf first, root last) and the leaf's facts."""

    cert_chain: tuple[str, ...]
    serial: str
    not_after: datetime.datetime
    spiffe_id: str


class CertificateAuthority:
    """Signs workload certificates with `key` and `certificate`.

    `chain` holds the certificates above `certificate`, up to and including the
    root; it is empty when `certificate` is itself the (self-signed) root.
    Construct through `ca_files` (which validates); `source` names where the
    key came from, for logs.
    """

    def __init__(
        self,
        key: SigningKey,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        source: str = "",
    ) -> None:
        self._key = key
        self.certificate = certificate
        self.chain = tuple(chain)
        self.trust_domain = trust_domain
        self.source = source
        self._chain_pem = tuple(to_pem(cert) for cert in (certificate, *self.chain))
        self._authority_key_id = _authority_key_id(certificate)

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.certificate

    @property
    def root_bundle_pem(self) -> str:
        """The trust anchor proxies verify peers against (PEM), for the xDS ROOTCA secret."""
        return self._chain_pem[-1]

    @property
    def chain_pem(self) -> tuple[str, ...]:
        """What follows a leaf in a response: the signing certificate up to the root."""
        return self._chain_pem

    def sign(self, csr_pem: str, identity: str, ttl: float, now: datetime.datetime) -> IssuedLeaf:
        """A leaf for `identity` (a SPIFFE ID) with the CSR's public key, valid `ttl` seconds.

        Raises CsrError for a CSR that is malformed, badly signed or uses a weak
        key, IdentityMismatchError for one that asks for another name.
        """
        if ttl <= 0:
            raise ValueError(f"certificate lifetime must be positive, got {ttl}")
        csr = _parse_csr(csr_pem)
        _check_requested_names(csr, identity)
        not_after = min(now + datetime.timedelta(seconds=ttl), self.certificate.not_valid_after_utc)
        if not_after <= now:
            raise CaError(f"the CA certificate {describe(self.certificate)} has expired")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                critical=True,
            )
            .add_extension(self._authority_key_id, critical=False)
        )
        leaf = builder.sign(self._key, signature_hash(self._key))
        return IssuedLeaf(
            cert_chain=(to_pem(leaf), *self._chain_pem),
            serial=f"{leaf.serial_number:x}",
            not_after=leaf.not_valid_after_utc,
            spiffe_id=identity,
        )

    def sign_server(
        self,
        public_key: ec.EllipticCurvePublicKey,
        dns_names: Sequence[str],
        ttl: float,
        now: datetime.datetime,
    ) -> tuple[str, ...]:
        """A serving certificate for the control plane's own `dns_names` (the webhook's).

        Not a workload identity: DNS SANs only, serverAuth only. Returns the chain
        (leaf first, root last) as PEM.
        """
        if ttl <= 0 or not dns_names:
            raise ValueError("a serving certificate needs a positive lifetime and a DNS name")
        not_after = min(now + datetime.timedelta(seconds=ttl), self.certificate.not_valid_after_utc)
        if not_after <= now:
            raise CaError(f"the CA certificate {describe(self.certificate)} has expired")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]),
                critical=False,
            )
            .add_extension(self._authority_key_id, critical=False)
        )
        leaf = builder.sign(self._key, signature_hash(self._key))
        return (to_pem(leaf), *self._chain_pem)

    def issue_server(
        self, dns_names: Sequence[str], ttl: float, now: datetime.datetime
    ) -> tuple[bytes, bytes]:
        """A new P-256 key and its serving certificate (`sign_server`): (the key as
        PKCS8 PEM, the chain as PEM), for the control plane's own TLS servers."""
        key = ec.generate_private_key(ec.SECP256R1())
        chain = self.sign_server(key.public_key(), dns_names, ttl, now)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem, "".join(chain).encode()


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    data = csr_pem.encode("utf-8", "replace")
    if not data.strip():
        raise CsrError("the request carries no CSR")
    if len(data) > MAX_CSR_BYTES:
        raise CsrError(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CsrError(f"the CSR is not a PEM certificate signing request: {exc}") from None
    try:
        if not csr.is_signature_valid:
            raise CsrError("the CSR's signature does not verify with the key it carries")
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm, InvalidSignature) as exc:
        raise CsrError(f"the CSR cannot be verified: {exc}") from None
    _check_key(key)
    return csr


def _check_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _EC_CURVES):
            raise CsrError(f"the CSR's EC key uses curve {key.curve.name}; use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise CsrError(f"the CSR's RSA key has {key.key_size} bits; at least 2048 are needed")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CsrError(
            f"the CSR's key type {type(key).__name__} is not accepted (ECDSA, RSA or Ed25519)"
        )


def _check_requested_names(csr: x509.CertificateSigningRequest, identity: str) -> None:
    try:
        extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return
    except ValueError as exc:
        raise CsrError(f"the CSR's extensions cannot be parsed: {exc}") from None
    others = sorted(
        _name_text(name)
        for name in extension.value
        if not (isinstance(name, x509.UniformResourceIdentifier) and name.value == identity)
    )
    if others:
        raise IdentityMismatchError(
            f"the CSR asks for {', '.join(others)}; the credential grants only {identity}"
        )


def _name_text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    return type(name).__name__
