"""`python -m trellis.runtime.keytool`: the proxy's key and certificate chores, in a child.

The `cryptography` package costs a process ~13 MiB of resident memory; the
sidecar cannot afford it for the few seconds a day it needs it. So, like
Istio's pilot-agent beside Envoy, the proxy runs this short-lived helper and
keeps only PEM text. Commands, each answering one JSON object on stdout:

`csr [SPIFFE_ID]`
    A new ECDSA P-256 key and a CSR for it (with SPIFFE_ID as its URI SAN when
    given): `{"key_pem", "csr_pem", "public_key_sha256"}`. The key exists only
    in this process and on the pipe to the parent.

`inspect` (the certificate chain, PEM, leaf first, then roots, on stdin)
    `{"serial", "not_before", "not_after" (Unix seconds), "uri_sans",
    "public_key_sha256" (of the leaf's SubjectPublicKeyInfo), "chain_ok",
    "problem", "root"}`. The chain is ok when the leaf is valid now and each
    certificate is signed by the next up to a self-signed root (certificates
    after it, other roots of a bundle, are not examined); "root" is that
    root's `{"serial", "not_before", "not_after"}`, or null.

Errors go to stderr with exit status 1 (bad input) or 2 (usage).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

_MAX_INPUT = 1024 * 1024


def public_key_sha256(key: x509.Certificate | x509.CertificateSigningRequest) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def make_csr(spiffe_id: str | None) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=True,
        )
    csr = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "key_pem": key_pem.decode("ascii"),
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "public_key_sha256": public_key_sha256(csr),
    }


def _verify_chain(
    chain: Sequence[x509.Certificate], now: float
) -> tuple[str, x509.Certificate | None]:
    """(problem or "", the root the chain ends with, if it got that far)."""
    leaf = chain[0]
    if now < leaf.not_valid_before_utc.timestamp():
        return "the certificate is not valid yet", None
    if now >= leaf.not_valid_after_utc.timestamp():
        return "the certificate has expired", None
    for position, child in enumerate(chain):
        if _issued_by(child, child):
            return "", child  # a root: what follows are other roots of the bundle
        if position + 1 == len(chain):
            return "the chain does not end with a self-signed root", None
        if not _issued_by(child, chain[position + 1]):
            return f"certificate {position + 1} of the chain is not signed by the next", None
    return "empty chain", None


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def inspect_chain(pem: bytes, now: float) -> dict[str, object]:
    chain = x509.load_pem_x509_certificates(pem)
    leaf = chain[0]
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    problem, root = _verify_chain(chain, now)
    return {
        "root": {
            "serial": f"{root.serial_number:x}",
            "not_before": root.not_valid_before_utc.timestamp(),
            "not_after": root.not_valid_after_utc.timestamp(),
        }
        if root is not None
        else None,
        "serial": f"{leaf.serial_number:x}",
        "not_before": leaf.not_valid_before_utc.timestamp(),
        "not_after": leaf.not_valid_after_utc.timestamp(),
        "uri_sans": uris,
        "public_key_sha256": public_key_sha256(leaf),
        "chain_ok": not problem,
        "problem": problem,
    }


def main(argv: Sequence[str]) -> int:
    command = argv[0] if argv else ""
    if command == "csr" and len(argv) <= 2:
        result: dict[str, object] = dict(make_csr(argv[1] if len(argv) == 2 else None))
    elif command == "inspect" and len(argv) == 1:
        data = sys.stdin.buffer.read(_MAX_INPUT + 1)
        if len(data) > _MAX_INPUT:
            print("keytool: the chain is larger than 1 MiB", file=sys.stderr)
            return 1
        try:
            result = inspect_chain(data, time.time())
        except ValueError as exc:
            print(f"keytool: not a PEM certificate chain: {exc}", file=sys.stderr)
            return 1
    else:
        print("usage: python -m trellis.runtime.keytool csr [SPIFFE_ID] | inspect", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
