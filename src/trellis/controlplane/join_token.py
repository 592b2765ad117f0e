"""Join tokens: how a workload on the local platform proves who it is to the CA.

A join token is a JWT (RFC 7519, compact form) signed with HMAC-SHA256 by a
key the control plane creates on first start in its data directory
(`join-token-key`, mode 0600), so tokens stay valid across restarts without
any stored state. It names one workload, `namespace`, `serviceAccount` and
`workload` (private claim `trellis.io`, and `sub` as Kubernetes spells a
service account), expires (`exp`), and is good for one purpose only: its
audience is `trellis-ca`, signing that workload's CSRs. A token is accepted
only with exactly the header algorithm HS256, a matching signature (compared
in constant time), the audience and issuer, and `exp` in the future.

The proxy presents the token on every CreateCertificate call, renewals
included, so a token's lifetime bounds how long a proxy can renew; the
launcher gives a long-lived workload a token that lasts, or rewrites the
token file (the proxy reads it on each call).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trellis.controlplane.ca_auth import Grant, Refusal
from trellis.errors import TrellisError

log = logging.getLogger("trellis.controlplane.ca")

KEY_FILE = "join-token-key"
AUDIENCE = "trellis-ca"
ISSUER = "trellis"
DEFAULT_TTL = 3600.0
MAX_TTL = 366 * 24 * 3600.0
MAX_TOKEN_LENGTH = 4096
CLOCK_SKEW = 60.0
METHOD = "join-token"
_KEY_BYTES = 32
_PRIVATE_CLAIM = "trellis.io"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class JoinTokenError(TrellisError):
    """A join token cannot be issued as asked, or its key file is unusable."""


class InvalidJoinTokenError(TrellisError):
    """A presented token is not acceptable; the message says why and never holds the token."""


def check_workload_names(namespace: str, service_account: str, workload: str) -> None:
    """Kubernetes' rules: the namespace a DNS-1123 label, the others DNS-1123 subdomains."""
    if not _DNS_LABEL.fullmatch(namespace):
        raise JoinTokenError(
            f"namespace {namespace!r} is not a DNS-1123 label (lowercase letters, digits, '-')"
        )
    for what, value in (("serviceAccount", service_account), ("workload", workload)):
        if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
            raise JoinTokenError(
                f"{what} {value!r} is not a DNS-1123 subdomain "
                "(lowercase letters, digits, '-' and '.')"
            )


@dataclass(frozen=True, slots=True)
class JoinTokenClaims:
    """What a verified token says."""

    namespace: str
    service_account: str
    workload: str
    issued_at: float
    expires_at: float
    token_id: str


@dataclass(frozen=True, slots=True)
class IssuedJoinToken:
    token: str = field(repr=False)
    claims: JoinTokenClaims


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise InvalidJoinTokenError("malformed token (not base64url)")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidJoinTokenError("malformed token (not base64url)") from None


def _json_object(data: bytes, part: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise InvalidJoinTokenError(f"malformed token ({part} is not JSON)") from None
    if not isinstance(value, dict):
        raise InvalidJoinTokenError(f"malformed token ({part} is not a JSON object)")
    return value


class JoinTokens:
    """Issues and verifies join tokens with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < _KEY_BYTES:
            raise JoinTokenError(f"the join token key must have at least {_KEY_BYTES} bytes")
        self._key = key
        self._kid = hashlib.sha256(key).hexdigest()[:16]

    @classmethod
    def load_or_create(cls, data_dir: Path) -> JoinTokens:
        """The key in `data_dir/join-token-key`, created (mode 0600) on first use."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(_read_key(path))
        key = secrets.token_bytes(_KEY_BYTES)
        try:
            os.write(fd, _b64encode(key).encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("created the join token key %s", path)
        return cls(key)

    def _signature(self, signing_input: bytes) -> bytes:
        return hmac.new(self._key, signing_input, hashlib.sha256).digest()

    def issue(
        self,
        namespace: str,
        service_account: str,
        workload: str,
        *,
        ttl: float = DEFAULT_TTL,
        now: float | None = None,
    ) -> IssuedJoinToken:
        """A token for one workload, valid `ttl` seconds from `now`."""
        check_workload_names(namespace, service_account, workload)
        if not 1 <= ttl <= MAX_TTL:
            raise JoinTokenError(f"ttl must be between 1s and {int(MAX_TTL)}s, got {ttl:g}s")
        issued_at = int(time.time() if now is None else now)
        claims = JoinTokenClaims(
            namespace, service_account, workload, issued_at, issued_at + int(ttl), uuid.uuid4().hex
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": self._kid}
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": claims.issued_at,
            "exp": claims.expires_at,
            "jti": claims.token_id,
            _PRIVATE_CLAIM: {
                "namespace": namespace,
                "serviceAccount": service_account,
                "workload": workload,
            },
        }
        signing_input = ".".join(
            _b64encode(json.dumps(part, separators=(",", ":")).encode())
            for part in (header, payload)
        ).encode("ascii")
        token = f"{signing_input.decode('ascii')}.{_b64encode(self._signature(signing_input))}"
        return IssuedJoinToken(token, claims)

    def verify(self, token: str, now: float) -> JoinTokenClaims:
        """The claims of an unexpired CA token this key signed; else InvalidJoinTokenError."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidJoinTokenError(f"token longer than {MAX_TOKEN_LENGTH} characters")
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidJoinTokenError(
                "malformed token (expected a JWT: three '.'-separated parts)"
            )
        header = _json_object(_b64decode(parts[0]), "header")
        if header.get("alg") != "HS256":
            raise InvalidJoinTokenError(f"token algorithm {header.get('alg')!r} is not HS256")
        signature = _b64decode(parts[2])
        expected = self._signature(f"{parts[0]}.{parts[1]}".encode("ascii"))
        if not hmac.compare_digest(signature, expected):
            raise InvalidJoinTokenError(
                "token signature does not verify (not issued by this control plane, or altered)"
            )
        payload = _json_object(_b64decode(parts[1]), "payload")
        return _claims(payload, now)


def _claims(payload: dict[str, Any], now: float) -> JoinTokenClaims:
    audience = payload.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if AUDIENCE not in audiences:
        raise InvalidJoinTokenError(f"token audience {audience!r} is not {AUDIENCE!r}")
    if payload.get("iss") != ISSUER:
        raise InvalidJoinTokenError(f"token issuer {payload.get('iss')!r} is not {ISSUER!r}")
    expires_at, issued_at = payload.get("exp"), payload.get("iat")
    if not isinstance(expires_at, int | float) or not isinstance(issued_at, int | float):
        raise InvalidJoinTokenError("token lacks numeric exp and iat claims")
    if now >= expires_at:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
        raise InvalidJoinTokenError(f"token expired {now - expires_at:.0f}s ago (at {when})")
    if issued_at > now + CLOCK_SKEW:
        raise InvalidJoinTokenError("token issued in the future (check the clocks)")
    private = payload.get(_PRIVATE_CLAIM)
    if not isinstance(private, dict):
        raise InvalidJoinTokenError(f"token lacks the {_PRIVATE_CLAIM} claim")
    names = [private.get(key) for key in ("namespace", "serviceAccount", "workload")]
    if not all(isinstance(name, str) for name in names):
        raise InvalidJoinTokenError(f"token's {_PRIVATE_CLAIM} claim is incomplete")
    namespace, service_account, workload = (str(name) for name in names)
    try:
        check_workload_names(namespace, service_account, workload)
    except JoinTokenError as exc:
        raise InvalidJoinTokenError(f"token names an invalid workload: {exc}") from None
    token_id = payload.get("jti")
    return JoinTokenClaims(
        namespace,
        service_account,
        workload,
        float(issued_at),
        float(expires_at),
        token_id if isinstance(token_id, str) else "",
    )


def _read_key(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the join token key %s is readable by other users (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = _b64decode(text)
    except InvalidJoinTokenError:
        key = b""
    if len(key) < _KEY_BYTES:
        raise JoinTokenError(
            f"{path}: must hold a base64url key of at least {_KEY_BYTES} bytes; delete it to "
            "have a new one created (tokens issued with the old key stop working)"
        )
    return key


class JoinTokenAuthenticator:
    """The local platform's `Authenticator`: a join token in, its workload out."""

    def __init__(self, tokens: JoinTokens, *, clock: Callable[[], float] = time.time) -> None:
        self._tokens = tokens
        self._clock = clock

    async def authenticate(self, credential: str) -> Grant | Refusal:
        try:
            claims = self._tokens.verify(credential, self._clock())
        except InvalidJoinTokenError as exc:
            return Refusal(f"join token refused: {exc}")
        return Grant(claims.namespace, claims.service_account, claims.workload, METHOD)
