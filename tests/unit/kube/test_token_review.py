"""What the CA makes of a TokenReview answer (pure: dicts in, account or refusal out)."""

from __future__ import annotations

from typing import Any

import pytest

from trellis.kube.token_review import (
    ReviewedAccount,
    ReviewRefusal,
    read_review,
    token_review_body,
)


def answer(**status: Any) -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}


def user(name: str, pod: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"username": name, "uid": "1"}
    if pod is not None:
        result["extra"] = {"authentication.kubernetes.io/pod-name": [pod]}
    return result


def test_the_request_asks_for_our_audience() -> None:
    assert token_review_body("t0k") == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": "t0k", "audiences": ["trellis-ca"]},
    }


def test_a_service_account_with_its_pod() -> None:
    review = answer(
        authenticated=True,
        user=user("system:serviceaccount:shop:cart", "cart-1"),
        audiences=["trellis-ca"],
    )
    assert read_review(review) == ReviewedAccount("shop", "cart", "cart-1")


def test_a_token_without_a_pod_binding() -> None:
    review = answer(authenticated=True, user=user("system:serviceaccount:shop:cart"))
    assert read_review(review) == ReviewedAccount("shop", "cart", "")


@pytest.mark.parametrize(
    ("review", "reason"),
    [
        (answer(authenticated=False, error="invalid bearer token"), "invalid bearer token"),
        (answer(authenticated=False), "did not authenticate the token"),
        ({"kind": "TokenReview"}, "no status"),
        (
            answer(authenticated=True, user=user("system:serviceaccount:a:b"), audiences=["x"]),
            "not meant for trellis-ca",
        ),
        (answer(authenticated=True, user=user("alice")), "not to a service account"),
        (answer(authenticated=True, user=user("system:node:n1")), "not to a service account"),
        (
            answer(authenticated=True, user=user("system:serviceaccount:Shop:cart")),
            "malformed service-account user",
        ),
        (
            answer(authenticated=True, user=user("system:serviceaccount:shop")),
            "malformed service-account user",
        ),
        (
            answer(authenticated=True, user=user("system:serviceaccount:shop:a:b")),
            "malformed service-account user",
        ),
        (answer(authenticated=True), "names no user"),
    ],
)
def test_refusals_say_why(review: dict[str, Any], reason: str) -> None:
    result = read_review(review)
    assert isinstance(result, ReviewRefusal)
    assert reason in result.reason


def test_a_malformed_pod_name_is_ignored_not_trusted() -> None:
    review = answer(
        authenticated=True, user=user("system:serviceaccount:shop:cart", "../../etc/passwd")
    )
    assert read_review(review) == ReviewedAccount("shop", "cart", "")
