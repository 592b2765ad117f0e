"""Istio's certificate service over gRPC: CSR in, certificate chain out.

`istio.v1.auth.IstioCertificateService/CreateCertificate`, served on the same
grpc.aio server as ADS. The caller sends `authorization: Bearer <credential>`
as call metadata; the `Authenticator` turns it into a `Grant`, and the CA signs
a leaf for exactly that grant's SPIFFE ID (see `ca.CertificateAuthority.sign`).
Lifetime: the requested `validity_duration` capped at `cert_ttl`, or `cert_ttl`
when none is asked for.

Every refusal is logged at WARNING with the peer and the reason (never the
credential) and answered: UNAUTHENTICATED (no, malformed, unknown, expired or
wrong-audience credential), PERMISSION_DENIED (the CSR asks for an identity
the credential does not grant), INVALID_ARGUMENT (a malformed CSR or lifetime),
UNAVAILABLE (the credential cannot be checked now: the caller retries).

`CertificateService.counts` tallies requests and their outcomes for the control
plane's monitoring port (istiod's `citadel_server_*` counters).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from trellis.controlplane.ca import (
    DEFAULT_CERT_TTL,
    CaError,
    CertificateAuthority,
    CsrError,
    IdentityMismatchError,
)
from trellis.controlplane.ca_auth import Authenticator, Grant, Refusal, RefusalKind
from trellis.xds import istio_ca_pb2

log = logging.getLogger("trellis.controlplane.ca")

SERVICE_NAME = "istio.v1.auth.IstioCertificateService"
CREATE_CERTIFICATE = f"/{SERVICE_NAME}/CreateCertificate"

_REFUSAL_CODES = {
    RefusalKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    RefusalKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    RefusalKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


@dataclass(slots=True)
class CertificateCounts:
    """What the certificate service has answered since it started.

    Every request counts once in `requests` and, when it ends, once in exactly
    one outcome: `issued`, `authentication_failures` (no usable credential, or
    one the authenticator refused or could not check), `csr_errors` (a
    malformed CSR or lifetime), `identity_mismatches` (the CSR asks for an
    identity the credential does not grant) or `sign_errors` (the CA failed).
    """

    requests: int = 0
    issued: int = 0
    authentication_failures: int = 0
    csr_errors: int = 0
    identity_mismatches: int = 0
    sign_errors: int = 0


def bearer_credential(metadata: Any) -> str | Refusal:
    """The credential of the call's single `authorization: Bearer ...` entry, or why not."""
    values = [
        value
        for key, value in (metadata or ())
        if isinstance(key, str) and key.lower() == "authorization"
    ]
    if not values:
        return Refusal("no credential: send 'authorization: Bearer <join token>' metadata")
    if len(values) > 1:
        return Refusal("several authorization entries; send one")
    value = values[0].decode("latin-1") if isinstance(values[0], bytes) else str(values[0])
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return Refusal("the authorization metadata is not 'Bearer <token>'")
    return credential.strip()


class CertificateService:
    """Serves CreateCertificate; add `rpc_handler()` to a grpc.aio server."""

    def __init__(
        self,
        ca: CertificateAuthority,
        authenticator: Authenticator,
        *,
        cert_ttl: float = DEFAULT_CERT_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cert_ttl <= 0:
            raise ValueError(f"cert_ttl must be positive, got {cert_ttl}")
        self.ca = ca
        self.authenticator = authenticator
        self.cert_ttl = cert_ttl
        self.counts = CertificateCounts()
        self._clock = clock

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                    self.create_certificate,
                    request_deserializer=istio_ca_pb2.IstioCertificateRequest.FromString,
                    response_serializer=istio_ca_pb2.IstioCertificateResponse.SerializeToString,
                )
            },
        )

    def lifetime(self, requested: int) -> float:
        """`validity_duration` (seconds; 0 means unset) capped at the configured TTL."""
        if requested < 0:
            raise CsrError(f"validity_duration must not be negative, got {requested}")
        return min(float(requested), self.cert_ttl) if requested else self.cert_ttl

    async def create_certificate(
        self,
        request: istio_ca_pb2.IstioCertificateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> istio_ca_pb2.IstioCertificateResponse:
        counts = self.counts
        counts.requests += 1
        peer = context.peer()
        credential = bearer_credential(context.invocation_metadata())
        if isinstance(credential, Refusal):
            counts.authentication_failures += 1
            await self._refuse(
                context, peer, None, grpc.StatusCode.UNAUTHENTICATED, credential.reason
            )
        grant = await self.authenticator.authenticate(credential)
        if isinstance(grant, Refusal):
            counts.authentication_failures += 1
            await self._refuse(context, peer, None, _REFUSAL_CODES[grant.kind], grant.reason)
        identity = grant.spiffe_id(self.ca.trust_domain)
        try:
            ttl = self.lifetime(request.validity_duration)
            issued = self.ca.sign(
                request.csr,
                identity,
                ttl,
                datetime.datetime.fromtimestamp(self._clock(), datetime.UTC),
            )
        except CsrError as exc:
            counts.csr_errors += 1
            await self._refuse(context, peer, grant, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except IdentityMismatchError as exc:
            counts.identity_mismatches += 1
            await self._refuse(context, peer, grant, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except CaError as exc:
            counts.sign_errors += 1
            log.error("cannot sign for %s: %s", grant.describe(), exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the CA cannot sign: {exc}")
            raise
        counts.issued += 1
        log.info(
            "issued certificate %s for %s to %s (%s), valid until %s",
            issued.serial,
            identity,
            peer,
            grant.describe(),
            issued.not_after.isoformat(),
        )
        return istio_ca_pb2.IstioCertificateResponse(cert_chain=issued.cert_chain)

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        peer: str,
        grant: Grant | None,
        code: grpc.StatusCode,
        reason: str,
    ) -> NoReturn:
        who = f" ({grant.describe()})" if grant is not None else ""
        log.warning("certificate request from %s%s refused: %s", peer, who, reason)
        await context.abort(code, reason)
        raise AssertionError("grpc.aio abort() returned")  # it raises; this is for type checkers
