"""keytool, the child process that does the proxy's cryptography, through its async wrappers."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trellis.controlplane.ca import CertificateAuthority
from trellis.controlplane.ca_files import create_root, load_or_create_root
from trellis.runtime.ca_client import KEYTOOL, IdentityError, generate_key, inspect_chain

SPIFFE = "spiffe://cluster.local/ns/shop/sa/cart"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return load_or_create_root(
        tmp_path_factory.mktemp("ca"), now=datetime.datetime.now(datetime.UTC)
    )


def test_csr_makes_a_p256_key_and_a_csr_naming_the_identity() -> None:
    made = asyncio.run(generate_key(SPIFFE))
    key = serialization.load_pem_private_key(made.key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(made.csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    assert made.key_pem not in repr(made)


def test_inspect_reads_the_leaf_and_verifies_the_chain(ca: CertificateAuthority) -> None:
    made = asyncio.run(generate_key(None))
    now = datetime.datetime.now(datetime.UTC)
    issued = ca.sign(made.csr_pem, SPIFFE, 600, now)
    facts = asyncio.run(inspect_chain("".join(issued.cert_chain)))
    assert facts.chain_ok, facts.problem
    assert facts.serial == issued.serial
    assert facts.uri_sans == (SPIFFE,)
    assert facts.public_key_sha256 == made.public_key_sha256
    assert facts.not_after == pytest.approx(now.timestamp() + 600, abs=1)
    assert facts.root_serial == f"{ca.root.serial_number:x}"
    assert facts.root_not_after == ca.root.not_valid_after_utc.timestamp()


def test_inspect_finds_chains_that_do_not_verify(ca: CertificateAuthority) -> None:
    made = asyncio.run(generate_key(None))
    issued = ca.sign(made.csr_pem, SPIFFE, 600, datetime.datetime.now(datetime.UTC))
    _, stranger = create_root("other.example", datetime.datetime.now(datetime.UTC))
    stranger_pem = stranger.public_bytes(serialization.Encoding.PEM).decode()
    wrong_root = asyncio.run(inspect_chain(issued.cert_chain[0] + stranger_pem))
    assert not wrong_root.chain_ok and "not signed by the next" in wrong_root.problem
    no_root = asyncio.run(inspect_chain(issued.cert_chain[0]))
    assert not no_root.chain_ok and "self-signed root" in no_root.problem
    an_hour_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    expired = ca.sign(made.csr_pem, SPIFFE, 60, an_hour_ago)
    late = asyncio.run(inspect_chain("".join(expired.cert_chain)))
    assert not late.chain_ok and "expired" in late.problem


def test_bad_input_and_usage_fail_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="not a PEM certificate chain"):
        asyncio.run(inspect_chain("garbage"))
    done = subprocess.run(
        [*KEYTOOL, "sign"], check=False, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "usage" in done.stderr
    with pytest.raises(IdentityError, match="cannot run keytool"):
        asyncio.run(generate_key(None, command=(str(tmp_path / "missing"),)))
    with pytest.raises(IdentityError, match="failed"):
        asyncio.run(generate_key(None, command=(sys.executable, "-c", "raise SystemExit(3)")))


# A keytool stand-in that answers at once and says what its standard input is.
_QUICK_KEYTOOL = """
import json, os, stat, sys
mode = os.fstat(0).st_mode
kind = "pipe" if stat.S_ISFIFO(mode) else "char" if stat.S_ISCHR(mode) else "other"
print(json.dumps({"key_pem": kind, "csr_pem": "", "public_key_sha256": ""}))
"""


def test_a_command_without_input_reads_dev_null_not_a_pipe() -> None:
    """A keytool command that needs no input gets /dev/null: a child that exits before
    a pipe is written to would make uvloop fail the write (RuntimeError)."""
    made = asyncio.run(generate_key(None, command=(sys.executable, "-c", _QUICK_KEYTOOL)))
    assert made.key_pem == "char"
