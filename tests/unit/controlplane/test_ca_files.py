"""An operator's CA (Istio's plug-in certificates) is checked before use; errors name the file."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trellis.controlplane.ca import CaError, spiffe_id
from trellis.controlplane.ca_files import load_plugged, open_authority

from .pki_helpers import NOW, Key, cert_pem, certificate, csr, key_pem, load, new_key, write

CART = spiffe_id("cluster.local", "default", "cart")


@dataclass
class Pki:
    root: x509.Certificate
    root_key: Key
    intermediate: x509.Certificate
    intermediate_key: Key


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key, intermediate_key = new_key(), new_key()
    root = certificate("Test Root", root_key)
    intermediate = certificate("Test Intermediate", intermediate_key, issuer=(root, root_key))
    return Pki(root, root_key, intermediate, intermediate_key)


def test_an_intermediate_with_its_chain_signs_leaves_chained_to_the_root(
    pki: Pki, tmp_path: Path
) -> None:
    cert = write(tmp_path / "ca-cert.pem", cert_pem(pki.intermediate))
    key = write(tmp_path / "ca-key.pem", key_pem(pki.intermediate_key))
    # Istio's cert-chain.pem starts with ca-cert.pem itself: accepted.
    chain = write(tmp_path / "cert-chain.pem", cert_pem(pki.intermediate, pki.root))
    ca = load_plugged(cert, key, chain, now=NOW)
    assert ca.root == pki.root
    assert ca.root_bundle_pem == cert_pem(pki.root).decode()
    issued = ca.sign(csr(), CART, 60, NOW)
    leaf, intermediate, root = (load(pem) for pem in issued.cert_chain)
    assert (intermediate, root) == (pki.intermediate, pki.root)
    leaf.verify_directly_issued_by(pki.intermediate)
    assert leaf.issuer == pki.intermediate.subject


def test_a_root_alone_needs_no_chain(pki: Pki, tmp_path: Path) -> None:
    cert = write(tmp_path / "root.pem", cert_pem(pki.root))
    key = write(tmp_path / "root-key.pem", key_pem(pki.root_key))
    ca = open_authority(tmp_path, ca_cert=cert, ca_key=key, now=NOW)
    assert ca.chain == () and ca.root == pki.root
    assert len(ca.sign(csr(), CART, 60, NOW).cert_chain) == 2


def test_a_key_that_does_not_match_is_refused(pki: Pki, tmp_path: Path) -> None:
    cert = write(tmp_path / "ca-cert.pem", cert_pem(pki.root))
    key = write(tmp_path / "other-key.pem", key_pem(new_key()))
    with pytest.raises(CaError, match=r"--ca-key .*other-key\.pem: the key does not belong"):
        load_plugged(cert, key, now=NOW)


def test_a_certificate_that_is_not_a_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    leaf_key = new_key()
    leaf = certificate("leaf", leaf_key, issuer=(pki.root, pki.root_key), ca=False)
    cert = write(tmp_path / "leaf.pem", cert_pem(leaf))
    key = write(tmp_path / "leaf-key.pem", key_pem(leaf_key))
    with pytest.raises(CaError, match=r"--ca-cert .*leaf\.pem: 'CN=leaf' is not a CA"):
        load_plugged(cert, key, now=NOW)


def test_a_ca_without_key_cert_sign_is_refused(pki: Pki, tmp_path: Path) -> None:
    key_ = new_key()
    limited = certificate("limited", key_, key_cert_sign=False)
    cert = write(tmp_path / "limited.pem", cert_pem(limited))
    key = write(tmp_path / "limited-key.pem", key_pem(key_))
    with pytest.raises(CaError, match="may not sign certificates"):
        load_plugged(cert, key, now=NOW)


def test_an_intermediate_without_a_chain_is_refused(pki: Pki, tmp_path: Path) -> None:
    cert = write(tmp_path / "ca-cert.pem", cert_pem(pki.intermediate))
    key = write(tmp_path / "ca-key.pem", key_pem(pki.intermediate_key))
    with pytest.raises(CaError, match=r"--ca-cert .*is issued by 'CN=Test Root'; give --ca-chain"):
        load_plugged(cert, key, now=NOW)


def test_a_chain_from_another_root_is_refused(pki: Pki, tmp_path: Path) -> None:
    other_key = new_key()
    other = certificate("Other Root", other_key)
    cert = write(tmp_path / "ca-cert.pem", cert_pem(pki.intermediate))
    key = write(tmp_path / "ca-key.pem", key_pem(pki.intermediate_key))
    chain = write(tmp_path / "chain.pem", cert_pem(other))
    with pytest.raises(CaError, match=r"--ca-chain .*chain\.pem: 'CN=Other Root' did not sign"):
        load_plugged(cert, key, chain, now=NOW)


def test_a_chain_that_stops_short_of_the_root_is_refused(pki: Pki, tmp_path: Path) -> None:
    second_key = new_key()
    second = certificate("Second", second_key, issuer=(pki.intermediate, pki.intermediate_key))
    cert = write(tmp_path / "ca-cert.pem", cert_pem(second))
    key = write(tmp_path / "ca-key.pem", key_pem(second_key))
    chain = write(tmp_path / "chain.pem", cert_pem(pki.intermediate))
    with pytest.raises(CaError, match=r"--ca-chain .*not self-signed; it must end with the root"):
        load_plugged(cert, key, chain, now=NOW)


def test_an_expired_ca_is_refused(tmp_path: Path) -> None:
    old_key = new_key()
    old = certificate(
        "Old Root",
        old_key,
        not_before=NOW - datetime.timedelta(days=400),
        not_after=NOW - datetime.timedelta(days=1),
    )
    cert = write(tmp_path / "old.pem", cert_pem(old))
    key = write(tmp_path / "old-key.pem", key_pem(old_key))
    with pytest.raises(CaError, match=r"--ca-cert .*old\.pem: 'CN=Old Root' expired"):
        load_plugged(cert, key, now=NOW)


def test_unreadable_and_malformed_files_are_named(pki: Pki, tmp_path: Path) -> None:
    cert = write(tmp_path / "ca-cert.pem", cert_pem(pki.root))
    key = write(tmp_path / "ca-key.pem", key_pem(pki.root_key))
    with pytest.raises(CaError, match=r"--ca-cert .*missing\.pem: cannot read"):
        load_plugged(tmp_path / "missing.pem", key, now=NOW)
    garbage = write(tmp_path / "garbage.pem", b"hello\n")
    with pytest.raises(CaError, match=r"--ca-cert .*garbage\.pem: not PEM certificates"):
        load_plugged(garbage, key, now=NOW)
    with pytest.raises(CaError, match=r"--ca-key .*garbage\.pem: not a PEM private key"):
        load_plugged(cert, garbage, now=NOW)
    encrypted = write(
        tmp_path / "encrypted.pem",
        pki.root_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    )
    with pytest.raises(CaError, match=r"--ca-key .*encrypted\.pem: the key is encrypted"):
        load_plugged(cert, encrypted, now=NOW)


def test_cert_and_key_come_together(pki: Pki, tmp_path: Path) -> None:
    cert = write(tmp_path / "ca-cert.pem", cert_pem(pki.root))
    with pytest.raises(CaError, match="give both --ca-cert and --ca-key"):
        open_authority(tmp_path, ca_cert=cert, now=NOW)
    with pytest.raises(CaError, match="--ca-chain needs --ca-cert and --ca-key"):
        open_authority(tmp_path, ca_chain=cert, now=NOW)
