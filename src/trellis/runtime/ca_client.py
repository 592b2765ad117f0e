"""The proxy's side of the CA: keytool in a child process, CreateCertificate over h2.

No `cryptography` here (the proxy process stays lean): key generation and
certificate inspection run in `python -m trellis.runtime.keytool`, a child
that lives for one command; the CSR goes to the control plane with the
proxy's own gRPC client (`grpc_stream.unary_call`), the credential as
`authorization: Bearer` metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from trellis.core.addresses import EndpointAddress
from trellis.errors import TrellisError
from trellis.runtime.grpc_stream import GrpcError, GrpcTls, unary_call
from trellis.xds import istio_ca_pb2

KEYTOOL: tuple[str, ...] = (sys.executable, "-m", "trellis.runtime.keytool")
CREATE_CERTIFICATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
KEYTOOL_TIMEOUT = 30.0
# gRPC codes that mean "this credential or CSR will not do": retrying the same won't help.
REFUSALS = {3: "INVALID_ARGUMENT", 7: "PERMISSION_DENIED", 16: "UNAUTHENTICATED"}
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL)


class IdentityError(TrellisError):
    """Obtaining a certificate failed; `refused` when the CA said no (not a transport error)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True, slots=True)
class KeyAndCsr:
    key_pem: str = field(repr=False)
    csr_pem: str
    public_key_sha256: str


@dataclass(frozen=True, slots=True)
class ChainFacts:
    """What keytool `inspect` found in a chain (leaf first)."""

    serial: str
    not_before: float
    not_after: float
    uri_sans: tuple[str, ...]
    public_key_sha256: str
    chain_ok: bool
    problem: str
    root_serial: str = ""
    root_not_before: float = 0.0
    root_not_after: float = 0.0


@dataclass(frozen=True, slots=True)
class SignedChain:
    """The CA's answer split into the certificate chain (leaf, intermediates) and the roots."""

    chain: tuple[str, ...]
    roots: tuple[str, ...]


async def run_keytool(
    arguments: Sequence[str],
    stdin: bytes = b"",
    *,
    command: Sequence[str] = KEYTOOL,
    run_timeout: float = KEYTOOL_TIMEOUT,
) -> dict[str, Any]:
    """Run one keytool command; its JSON answer. Raises IdentityError on any failure.

    A command without input gets /dev/null: writing even nothing to a pipe the
    child has closed fails in uvloop with RuntimeError rather than BrokenPipeError.
    """
    try:
        child = await asyncio.create_subprocess_exec(
            *command,
            *arguments,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise IdentityError(f"cannot run keytool ({command[0]}): {exc}") from None
    try:
        async with asyncio.timeout(run_timeout):
            out, err = await child.communicate(stdin or None)
    except TimeoutError:
        raise IdentityError(f"keytool {arguments[0]} took longer than {run_timeout:g}s") from None
    except RuntimeError as exc:  # uvloop: the child closed its input before reading it
        raise IdentityError(f"keytool {arguments[0]} did not take its input: {exc}") from None
    finally:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
    if child.returncode != 0:
        message = err.decode("utf-8", "replace").strip()[-500:]
        raise IdentityError(f"keytool {arguments[0]} failed ({child.returncode}): {message}")
    try:
        answer = json.loads(out)
    except ValueError:
        raise IdentityError(f"keytool {arguments[0]} did not answer JSON") from None
    if not isinstance(answer, dict):
        raise IdentityError(f"keytool {arguments[0]} did not answer a JSON object")
    return answer


async def generate_key(spiffe_id: str | None, *, command: Sequence[str] = KEYTOOL) -> KeyAndCsr:
    """A new private key and a CSR for it (naming `spiffe_id` when given)."""
    answer = await run_keytool(["csr", *([spiffe_id] if spiffe_id else [])], command=command)
    try:
        return KeyAndCsr(
            str(answer["key_pem"]), str(answer["csr_pem"]), str(answer["public_key_sha256"])
        )
    except KeyError as exc:
        raise IdentityError(f"keytool csr answered no {exc}") from None


async def inspect_chain(chain_pem: str, *, command: Sequence[str] = KEYTOOL) -> ChainFacts:
    """The facts of a PEM chain (leaf first, root last)."""
    answer = await run_keytool(["inspect"], chain_pem.encode("ascii"), command=command)
    try:
        root = answer["root"] or {}
        return ChainFacts(
            serial=str(answer["serial"]),
            not_before=float(answer["not_before"]),
            not_after=float(answer["not_after"]),
            uri_sans=tuple(str(uri) for uri in answer["uri_sans"]),
            public_key_sha256=str(answer["public_key_sha256"]),
            chain_ok=bool(answer["chain_ok"]),
            problem=str(answer["problem"]),
            root_serial=str(root.get("serial", "")),
            root_not_before=float(root.get("not_before", 0.0)),
            root_not_after=float(root.get("not_after", 0.0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IdentityError(f"keytool inspect answered no usable {exc}") from None


def pem_blocks(text: str) -> list[str]:
    """Each `CERTIFICATE` PEM block of `text`, normalized to end with a newline."""
    return [block + "\n" for block in _PEM_BLOCK.findall(text)]


def split_response(response: istio_ca_pb2.IstioCertificateResponse) -> SignedChain:
    """Istio's two response shapes: roots in `root_cert`, or the last `cert_chain` entry."""
    entries = list(response.cert_chain)
    if response.root_cert.ca_cert:
        roots = [block for entry in response.root_cert.ca_cert for block in pem_blocks(entry)]
    elif len(entries) >= 2:
        roots = pem_blocks(entries.pop())
    else:
        blocks = pem_blocks("".join(entries))
        entries, roots = ["".join(blocks[:-1])], blocks[-1:]
    chain = [block for entry in entries for block in pem_blocks(entry)]
    if not chain or not roots:
        raise IdentityError(
            f"the CA answered {len(chain)} certificate(s) and {len(roots)} root(s); "
            "expected a leaf and a root"
        )
    return SignedChain(tuple(chain), tuple(roots))


async def request_certificate(
    ca: EndpointAddress,
    csr_pem: str,
    credential: str,
    *,
    validity: int = 0,
    call_timeout: float = 10.0,
    tls: GrpcTls | None = None,
) -> SignedChain:
    """CreateCertificate at `ca` (HOST:PORT or a Unix socket; over TLS with `tls`).
    Raises IdentityError (refused=True when the CA said no)."""
    request = istio_ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=validity)
    try:
        data = await unary_call(
            ca,
            CREATE_CERTIFICATE,
            request.SerializeToString(),
            metadata=[("authorization", f"Bearer {credential}")],
            call_timeout=call_timeout,
            tls=tls,
        )
    except GrpcError as exc:
        name = REFUSALS.get(exc.status)
        if name is not None:
            raise IdentityError(f"the CA refused: {name}: {exc.message}", refused=True) from None
        raise IdentityError(f"CreateCertificate at {ca} failed: {exc}") from None
    except (OSError, TimeoutError) as exc:
        raise IdentityError(f"cannot reach the CA at {ca}: {exc!r}") from None
    except ValueError:  # from the metadata check: never echo the credential
        raise IdentityError(
            "the credential holds characters that cannot be sent as metadata", refused=True
        ) from None
    response = istio_ca_pb2.IstioCertificateResponse()
    try:
        response.ParseFromString(data)
    except DecodeError as exc:
        raise IdentityError(f"the CA's answer is not an IstioCertificateResponse: {exc}") from None
    return split_response(response)
