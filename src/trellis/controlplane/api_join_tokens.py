"""`POST /api/v1/join-tokens`: issue a join token for one workload (local platform).

Body: `{"namespace": "shop", "serviceAccount": "cart", "workload": "cart-1",
"ttl": "1h"}` (`ttl` optional, Go duration syntax, default 1h). The answer
carries the token, the SPIFFE ID it lets the workload obtain, and when it
expires. The API's usual rules apply (loopback callers freely, others with the
API token, see `api_auth`). The token itself is never logged.
"""

from __future__ import annotations

import datetime
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from trellis.api.duration import Duration, format_duration
from trellis.controlplane.api_status import StatusError
from trellis.controlplane.ca import spiffe_id
from trellis.controlplane.join_token import (
    AUDIENCE,
    DEFAULT_TTL,
    JoinTokenError,
    JoinTokens,
)

log = logging.getLogger("trellis.controlplane.api")


class JoinTokenRequest(BaseModel):
    """Which workload the token is for, and for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(description="The workload's namespace (DNS-1123 label).")
    service_account: str = Field(
        alias="serviceAccount", description="Its service account: the identity it gets."
    )
    workload: str = Field(description="The workload's name (DNS-1123 subdomain).")
    ttl: Duration | None = Field(
        default=None, description="How long the token is accepted, e.g. '1h' (default 1h)."
    )


def join_token_router(tokens: JoinTokens, trust_domain: str) -> APIRouter:
    router = APIRouter(tags=["security"])

    @router.post(
        "/api/v1/join-tokens",
        status_code=201,
        summary="Issue a join token: a workload's credential for the CA (local platform)",
    )
    async def issue(request: Annotated[JoinTokenRequest, Body()]) -> dict[str, Any]:
        ttl = DEFAULT_TTL if request.ttl is None else request.ttl
        try:
            issued = tokens.issue(
                request.namespace, request.service_account, request.workload, ttl=ttl
            )
        except JoinTokenError as exc:
            raise StatusError(400, str(exc)) from None
        claims = issued.claims
        expires = datetime.datetime.fromtimestamp(claims.expires_at, datetime.UTC)
        identity = spiffe_id(trust_domain, claims.namespace, claims.service_account)
        log.info(
            "issued join token %s for %s (workload %s), expires %s",
            claims.token_id,
            identity,
            claims.workload,
            expires.isoformat(),
        )
        return {
            "kind": "JoinToken",
            "token": issued.token,
            "tokenId": claims.token_id,
            "namespace": claims.namespace,
            "serviceAccount": claims.service_account,
            "workload": claims.workload,
            "spiffeId": identity,
            "audience": AUDIENCE,
            "ttl": format_duration(claims.expires_at - claims.issued_at),
            "expiresAt": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    return router
