"""Join tokens: one workload, expiring, only for the CA, tamper-evident, restart-proof."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from trellis.controlplane.ca_auth import Grant, Refusal, RefusalKind
from trellis.controlplane.join_token import (
    KEY_FILE,
    InvalidJoinTokenError,
    JoinTokenAuthenticator,
    JoinTokenError,
    JoinTokens,
)

KEY = bytes(range(32))
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge(payload: dict[str, Any], *, key: bytes = KEY, alg: str = "HS256") -> str:
    """A token with any payload, signed with `key` (to reach the checks past the signature)."""
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def payload_of(token: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(unb64(token.split(".")[1]))
    return result


def test_a_token_names_its_workload_and_expires() -> None:
    tokens = JoinTokens(KEY)
    issued = tokens.issue("shop", "cart", "cart-1", ttl=600, now=NOW)
    claims = tokens.verify(issued.token, NOW + 599)
    assert (claims.namespace, claims.service_account, claims.workload) == ("shop", "cart", "cart-1")
    assert claims.expires_at == NOW + 600
    payload = payload_of(issued.token)
    assert payload["aud"] == "trellis-ca"
    assert payload["sub"] == "system:serviceaccount:shop:cart"
    assert issued.token not in repr(issued)
    with pytest.raises(InvalidJoinTokenError, match="expired 0s ago"):
        tokens.verify(issued.token, NOW + 600)


def test_a_token_from_another_purpose_is_refused() -> None:
    payload = payload_of(JoinTokens(KEY).issue("shop", "cart", "c", now=NOW).token)
    payload["aud"] = "trellis-api"
    with pytest.raises(InvalidJoinTokenError, match="audience 'trellis-api' is not 'trellis-ca'"):
        JoinTokens(KEY).verify(forge(payload), NOW)


def test_altered_tokens_are_refused() -> None:
    tokens = JoinTokens(KEY)
    head, body, signature = tokens.issue("shop", "cart", "c", now=NOW).token.split(".")
    payload = json.loads(unb64(body))
    payload["trellis.io"]["serviceAccount"] = "payment"
    altered = f"{head}.{b64(json.dumps(payload).encode())}.{signature}"
    with pytest.raises(InvalidJoinTokenError, match="signature does not verify"):
        tokens.verify(altered, NOW)
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(InvalidJoinTokenError, match="signature does not verify"):
        tokens.verify(f"{head}.{body}.{flipped}", NOW)


def test_tokens_signed_with_another_key_or_algorithm_are_refused() -> None:
    payload = payload_of(JoinTokens(KEY).issue("shop", "cart", "c", now=NOW).token)
    with pytest.raises(InvalidJoinTokenError, match="signature does not verify"):
        JoinTokens(KEY).verify(forge(payload, key=b"x" * 32), NOW)
    unsigned = forge(payload, alg="none").rsplit(".", 1)[0] + "."
    with pytest.raises(InvalidJoinTokenError, match="algorithm 'none' is not HS256"):
        JoinTokens(KEY).verify(unsigned, NOW)


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("", "three '.'-separated parts"),
        ("a.b", "three '.'-separated parts"),
        ("!!.b.c", "not base64url"),
        (f"{b64(b'[1]')}.e30.", "header is not a JSON object"),
        ("x" * 5000, "longer than"),
    ],
)
def test_malformed_tokens_are_refused(token: str, problem: str) -> None:
    with pytest.raises(InvalidJoinTokenError, match=problem):
        JoinTokens(KEY).verify(token, NOW)


def test_incomplete_claims_are_refused() -> None:
    payload = payload_of(JoinTokens(KEY).issue("shop", "cart", "c", now=NOW).token)
    del payload["trellis.io"]["workload"]
    with pytest.raises(InvalidJoinTokenError, match="incomplete"):
        JoinTokens(KEY).verify(forge(payload), NOW)
    payload["trellis.io"]["workload"] = "c"
    payload["trellis.io"]["namespace"] = "Bad_NS"
    with pytest.raises(InvalidJoinTokenError, match="invalid workload"):
        JoinTokens(KEY).verify(forge(payload), NOW)


def test_the_key_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    token = JoinTokens.load_or_create(tmp_path).issue("shop", "cart", "c", now=NOW).token
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    restarted = JoinTokens.load_or_create(tmp_path)
    assert restarted.verify(token, NOW).service_account == "cart"
    (tmp_path / KEY_FILE).write_text("short\n")
    with pytest.raises(JoinTokenError, match="join-token-key: must hold"):
        JoinTokens.load_or_create(tmp_path)


@pytest.mark.parametrize(
    ("namespace", "account", "workload", "problem"),
    [
        ("Shop", "cart", "c", "namespace 'Shop'"),
        ("shop", "cart/x", "c", "serviceAccount"),
        ("shop", "cart", "", "workload"),
    ],
)
def test_names_follow_kubernetes(namespace: str, account: str, workload: str, problem: str) -> None:
    with pytest.raises(JoinTokenError, match=problem):
        JoinTokens(KEY).issue(namespace, account, workload, now=NOW)


def test_ttl_is_bounded() -> None:
    with pytest.raises(JoinTokenError, match="ttl"):
        JoinTokens(KEY).issue("shop", "cart", "c", ttl=0, now=NOW)


def test_the_authenticator_grants_the_token_identity_or_says_why_not() -> None:
    tokens = JoinTokens(KEY)
    token = tokens.issue("shop", "cart", "cart-1", ttl=60, now=NOW).token
    clock = [NOW]
    authenticator = JoinTokenAuthenticator(tokens, clock=lambda: clock[0])
    granted = asyncio.run(authenticator.authenticate(token))
    assert granted == Grant("shop", "cart", "cart-1", "join-token")
    clock[0] = NOW + 61
    refused = asyncio.run(authenticator.authenticate(token))
    assert isinstance(refused, Refusal) and refused.kind is RefusalKind.UNAUTHENTICATED
    assert "expired" in refused.reason and token not in refused.reason
