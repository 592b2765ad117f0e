"""The CA's authenticator on Kubernetes: TokenReview of the pod's projected token.

The injected sidecar shows the CA its projected service-account token
(audience `trellis-ca`, `trellis.kube.settings.TOKEN_AUDIENCE`). The CA asks
the API server about it (`trellis.kube.token_review`) and grants the token's
service account, `spiffe://<td>/ns/<ns>/sa/<sa>`, nothing else: a CSR naming
any other identity is refused PERMISSION_DENIED by the certificate service.
When the API server cannot be asked (down, a timeout, an error status) the
answer is UNAVAILABLE, which the proxy retries, never a grant.

Positive answers are cached for `cache_ttl` seconds (10 s by default, never
past the TokenReview's own word, which the API server may revoke), in a
bounded map keyed by the token's SHA-256: the token itself is kept nowhere and
logged nowhere. Refusals are not cached, so a pod whose token was just issued
is not locked out by an earlier failure.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from trellis.controlplane.ca_auth import Grant, Refusal, RefusalKind
from trellis.controlplane.kube_calls import KubeUnavailableError
from trellis.errors import TrellisError
from trellis.kube.token_review import (
    DEFAULT_AUDIENCES,
    ReviewedAccount,
    ReviewRefusal,
    read_review,
    token_review_body,
)

log = logging.getLogger("trellis.controlplane.ca")

METHOD = "token-review"
DEFAULT_CACHE_TTL = 10.0
DEFAULT_CACHE_SIZE = 4096
MAX_TOKEN_LENGTH = 16 * 1024


class TokenReviewer(Protocol):
    """Creates a TokenReview and returns it as the API server answered (`KubeCalls` does)."""

    async def create_token_review(self, review: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _Cached:
    grant: Grant
    expires: float


class TokenReviewAuthenticator:
    """An `ca_auth.Authenticator` asking the API server about each (uncached) token."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        *,
        audiences: Sequence[str] = DEFAULT_AUDIENCES,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not audiences:
            raise ValueError("a TokenReview needs at least one audience")
        if cache_ttl < 0 or cache_size < 0:
            raise ValueError("cache_ttl and cache_size must not be negative")
        self._reviewer = reviewer
        self.audiences = tuple(audiences)
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self.reviews = 0  # TokenReviews sent (the cache's effect is visible in tests)

    async def authenticate(self, credential: str) -> Grant | Refusal:
        if len(credential) > MAX_TOKEN_LENGTH:
            return Refusal(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
        key = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).hexdigest()
        now = self._clock()
        cached = self._cached(key, now)
        if cached is not None:
            return cached
        self.reviews += 1
        try:
            answer = await self._reviewer.create_token_review(
                token_review_body(credential, self.audiences)
            )
        except KubeUnavailableError as exc:
            log.warning("cannot review a token with the API server: %s", exc)
            return Refusal(
                f"cannot check the token with the API server now: {exc}", RefusalKind.UNAVAILABLE
            )
        except TrellisError as exc:
            log.warning("TokenReview failed: %s", exc)
            return Refusal(f"TokenReview failed: {exc}", RefusalKind.UNAVAILABLE)
        reviewed = read_review(answer, self.audiences)
        if isinstance(reviewed, ReviewRefusal):
            return Refusal(reviewed.reason)
        grant = _grant(reviewed)
        self._remember(key, grant, now)
        return grant

    def _cached(self, key: str, now: float) -> Grant | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry.grant

    def _remember(self, key: str, grant: Grant, now: float) -> None:
        if self._cache_ttl == 0 or self._cache_size == 0:
            return
        self._cache[key] = _Cached(grant, now + self._cache_ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _grant(account: ReviewedAccount) -> Grant:
    return Grant(account.namespace, account.service_account, account.pod_name, METHOD)
