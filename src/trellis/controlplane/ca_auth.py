"""Who is asking the CA: a credential in, the identity it grants (or why not) out.

The certificate service accepts one bearer credential per call (gRPC metadata
`authorization: Bearer <credential>`) and hands it to an `Authenticator`. On
the local platform that is a join token (`join_token.JoinTokenAuthenticator`);
on Kubernetes a TokenReview of the pod's projected service-account token
(`kube_token_auth.TokenReviewAuthenticator`), behind the same interface.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from trellis.controlplane.ca import spiffe_id


@dataclass(frozen=True, slots=True)
class Grant:
    """The workload a credential speaks for. `method` names the credential kind (for logs)."""

    namespace: str
    service_account: str
    workload: str
    method: str

    def spiffe_id(self, trust_domain: str) -> str:
        return spiffe_id(trust_domain, self.namespace, self.service_account)

    def describe(self) -> str:
        workload = f" workload {self.workload}" if self.workload else ""
        return f"ns/{self.namespace} sa/{self.service_account}{workload} ({self.method})"


class RefusalKind(enum.Enum):
    """How a refusal maps to gRPC: no valid credential, a credential that may not do this,
    or a credential that cannot be checked now (its verifier, e.g. the API server, is down)."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a credential was not accepted; the reason is logged and answered, never the token."""

    reason: str
    kind: RefusalKind = RefusalKind.UNAUTHENTICATED


class Authenticator(Protocol):
    """Checks one bearer credential presented to the certificate service."""

    async def authenticate(self, credential: str) -> Grant | Refusal: ...
