"""The TokenReview authenticator's decisions and its cache, with a scripted reviewer."""

from __future__ import annotations

import asyncio
from typing import Any

from trellis.controlplane.ca_auth import Grant, Refusal, RefusalKind
from trellis.controlplane.kube_calls import KubeUnavailableError
from trellis.controlplane.kube_token_auth import TokenReviewAuthenticator


class ScriptedReviewer:
    """Answers every review for `accounts[token]`; `down` makes it fail like the API server."""

    def __init__(self, accounts: dict[str, str]) -> None:
        self.accounts = accounts
        self.down = False
        self.seen: list[str] = []

    async def create_token_review(self, review: dict[str, Any]) -> dict[str, Any]:
        token = review["spec"]["token"]
        self.seen.append(token)
        if self.down:
            raise KubeUnavailableError("TokenReview: the API server answered 503: busy")
        account = self.accounts.get(token)
        if account is None:
            return {"status": {"authenticated": False, "error": "invalid bearer token"}}
        return {"status": {"authenticated": True, "user": {"username": account}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_grants_are_cached_by_hash_for_a_while_and_bounded() -> None:
    reviewer = ScriptedReviewer(
        {f"token-{i}": f"system:serviceaccount:shop:sa{i}" for i in range(5)}
    )
    clock = Clock()
    auth = TokenReviewAuthenticator(reviewer, cache_ttl=10, cache_size=2, clock=clock)

    async def check() -> None:
        first = await auth.authenticate("token-0")
        assert first == Grant("shop", "sa0", "", "token-review")
        assert await auth.authenticate("token-0") == first
        assert reviewer.seen == ["token-0"]
        assert all("token-0" not in key for key in auth._cache)
        clock.now += 10
        await auth.authenticate("token-0")  # expired: asked again
        assert reviewer.seen == ["token-0", "token-0"]
        await auth.authenticate("token-1")
        await auth.authenticate("token-2")  # evicts token-0, the least recently used
        assert len(auth._cache) == 2
        await auth.authenticate("token-0")
        assert reviewer.seen.count("token-0") == 3

    asyncio.run(check())


def test_refusals_and_outages_are_not_cached() -> None:
    reviewer = ScriptedReviewer({"good": "system:serviceaccount:shop:cart"})
    auth = TokenReviewAuthenticator(reviewer, clock=Clock())

    async def check() -> None:
        refused = await auth.authenticate("bad")
        assert isinstance(refused, Refusal) and refused.kind is RefusalKind.UNAUTHENTICATED
        reviewer.down = True
        down = await auth.authenticate("good")
        assert isinstance(down, Refusal) and down.kind is RefusalKind.UNAVAILABLE
        assert "503" in down.reason
        reviewer.down = False
        assert isinstance(await auth.authenticate("good"), Grant)
        assert isinstance(await auth.authenticate("bad"), Refusal)
        assert reviewer.seen == ["bad", "good", "good", "bad"]

    asyncio.run(check())


def test_an_oversized_token_is_refused_without_asking() -> None:
    reviewer = ScriptedReviewer({})
    auth = TokenReviewAuthenticator(reviewer)
    result = asyncio.run(auth.authenticate("x" * 20000))
    assert isinstance(result, Refusal) and "longer than" in result.reason
    assert reviewer.seen == []
