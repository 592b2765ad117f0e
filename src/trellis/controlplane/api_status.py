"""Error answers of the REST API, shaped like Kubernetes' `Status` objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trellis.errors import TrellisError

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class StatusError(TrellisError):
    """A request the API answers with an error status; `details` goes into the body."""

    def __init__(
        self, code: int, message: str, *, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})


def status_body(
    code: int, message: str, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A Kubernetes-style `Status` object for an error answer."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        body["details"] = dict(details)
    return body


def not_found(what: str, names: Sequence[str] = ()) -> StatusError:
    quoted = " ".join(f'"{name}"' for name in names)
    return StatusError(404, f"{what} {quoted} not found" if quoted else f"{what} not found")
