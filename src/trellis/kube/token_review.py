"""TokenReview, the pure half: the request the CA sends and what it makes of the answer.

The CA asks the API server (`authentication.k8s.io/v1` TokenReview) whether a
pod's projected service-account token is genuine and meant for it (audience
`trellis-ca`). A service-account token authenticates as the user
`system:serviceaccount:<namespace>:<account>`; a token bound to a pod also
names the pod in `status.user.extra["authentication.kubernetes.io/pod-name"]`.
Anything else, a user that is not a service account, an audience that is not
ours, a malformed answer, is refused with a reason that never holds the token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trellis.kube.settings import TOKEN_AUDIENCE

API_VERSION = "authentication.k8s.io/v1"
KIND = "TokenReview"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
DEFAULT_AUDIENCES = (TOKEN_AUDIENCE,)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class ReviewedAccount:
    """The service account (and pod, when the token is bound to one) a token belongs to."""

    namespace: str
    service_account: str
    pod_name: str


@dataclass(frozen=True, slots=True)
class ReviewRefusal:
    """Why a reviewed token is not accepted (the API server's own reason, when it gave one)."""

    reason: str


def token_review_body(token: str, audiences: Sequence[str] = DEFAULT_AUDIENCES) -> dict[str, Any]:
    """The TokenReview object to create for `token`, valid only for `audiences`."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "spec": {"token": token, "audiences": list(audiences)},
    }


def read_review(
    review: Mapping[str, Any], audiences: Sequence[str] = DEFAULT_AUDIENCES
) -> ReviewedAccount | ReviewRefusal:
    """What the API server's answer (the created TokenReview) says about the token."""
    status = review.get("status")
    if not isinstance(status, Mapping):
        return ReviewRefusal("the API server's TokenReview has no status")
    if status.get("authenticated") is not True:
        error = status.get("error")
        detail = f": {_clip(error)}" if isinstance(error, str) and error else ""
        return ReviewRefusal(f"the API server did not authenticate the token{detail}")
    granted = status.get("audiences")
    if granted is not None and (not isinstance(granted, list) or not set(audiences) & set(granted)):
        return ReviewRefusal(
            f"the token is not meant for {', '.join(audiences)} "
            f"(the API server says it is for {_clip(str(granted))})"
        )
    user = status.get("user")
    if not isinstance(user, Mapping):
        return ReviewRefusal("the API server's TokenReview names no user")
    return read_service_account(user.get("username"), user.get("extra"))


def read_service_account(username: object, extra: object) -> ReviewedAccount | ReviewRefusal:
    """`system:serviceaccount:<ns>:<sa>` and the pod name from `extra`, checked."""
    if not isinstance(username, str) or not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return ReviewRefusal(
            f"the token belongs to {_clip(str(username))!r}, not to a service account"
        )
    namespace, sep, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    if not sep or not _DNS_LABEL.fullmatch(namespace):
        return ReviewRefusal(f"malformed service-account user {_clip(username)!r}")
    if len(account) > 253 or not _DNS_SUBDOMAIN.fullmatch(account):
        return ReviewRefusal(f"malformed service-account user {_clip(username)!r}")
    return ReviewedAccount(namespace, account, _pod_name(extra))


def _pod_name(extra: object) -> str:
    """The first pod name of `extra` (a map of string lists), or "" when it names none."""
    if not isinstance(extra, Mapping):
        return ""
    values = extra.get(POD_NAME_EXTRA)
    if isinstance(values, list) and values and isinstance(values[0], str):
        name = values[0]
        if len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name):
            return name
    return ""


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."
