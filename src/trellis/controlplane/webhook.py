"""The sidecar injection webhook's HTTPS server (port 15017), thin around a pure handler.

`POST /inject` takes an AdmissionReview v1 and answers with
`trellis.kube.admission.review_response`; a body that is not JSON or not an
AdmissionReview gets 400 with the reason, never a crash. `GET /healthz`
answers 200 for the Deployment's probes.

The serving certificate is issued by the mesh CA for the webhook Service's
DNS names (`trellis-webhook.trellis-system.svc`, ... by default; the
installation's own Service through `--webhook-service`), so the API server
verifies it against the same root the MutatingWebhookConfiguration carries
as `caBundle` (`webhook_ca_bundle`). Its key is made here and kept in memory
(it passes through a private temporary directory only to be loaded); the
certificate is renewed in place at half its lifetime.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from trellis.controlplane.ca import CertificateAuthority
from trellis.errors import TrellisError
from trellis.kube.admission import AdmissionReviewError, review_response
from trellis.kube.settings import InjectionSettings
from trellis.kube.webhook_config import INJECT_PATH, ca_bundle, webhook_dns_names

log = logging.getLogger("trellis.controlplane.webhook")

MAX_REVIEW_BYTES = 8 * 1024 * 1024
"""Far above the API server's own limit on an object (about 3 MiB)."""
SERVING_CERT_TTL = 24 * 3600.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class WebhookServerError(TrellisError):
    """The webhook could not start (its address is taken, the CA cannot sign, ...)."""


def webhook_ca_bundle(ca: CertificateAuthority) -> str:
    """The MutatingWebhookConfiguration's `caBundle` for this control plane's CA."""
    return ca_bundle(ca.root_bundle_pem)


def load_serving_certificate(
    context: ssl.SSLContext,
    ca: CertificateAuthority,
    dns_names: Sequence[str],
    ttl: float,
    now: datetime.datetime,
) -> None:
    """Make a key, have the CA certify it for `dns_names`, and load both into `context`."""
    key_pem, chain_pem = ca.issue_server(dns_names, ttl, now)
    with tempfile.TemporaryDirectory(prefix="trellis-webhook-") as directory:
        key_file, cert_file = Path(directory, "key.pem"), Path(directory, "cert.pem")
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(key_pem)
        cert_file.write_bytes(chain_pem)
        context.load_cert_chain(cert_file, key_file)


def serving_context(
    ca: CertificateAuthority, dns_names: Sequence[str], ttl: float, now: datetime.datetime
) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding a fresh serving certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_serving_certificate(context, ca, dns_names, ttl, now)
    return context


def webhook_app(settings: InjectionSettings) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI application: `POST /inject`, `GET /healthz`, 404 elsewhere."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/healthz" and method in ("GET", "HEAD"):
            await _reply(send, 200, {"status": "ok"})
        elif path != INJECT_PATH:
            await _reply(send, 404, {"message": f"no such path {path!r}"})
        elif method != "POST":
            await _reply(send, 405, {"message": "use POST"}, allow="POST")
        else:
            status, body = await _review(receive, settings)
            await _reply(send, status, body)

    return app


async def _review(receive: Receive, settings: InjectionSettings) -> tuple[int, dict[str, Any]]:
    body = await _read_body(receive)
    if body is None:
        return 413, {"message": f"an AdmissionReview must be under {MAX_REVIEW_BYTES} bytes"}
    try:
        review = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return 400, {"message": f"the body is not JSON: {exc}"}
    try:
        answer = review_response(review, settings)
    except AdmissionReviewError as exc:
        log.warning("rejected a malformed AdmissionReview: %s", exc)
        return 400, {"message": f"not an AdmissionReview v1: {exc}"}
    response = answer["response"]
    if not response["allowed"]:
        log.warning("refused a pod: %s", response["status"]["message"])
    else:
        log.debug("review %s: %s", response["uid"], "patched" if "patch" in response else "as is")
    return 200, answer


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None once it passes MAX_REVIEW_BYTES (bounded by that)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_REVIEW_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reply(send: Send, status: int, body: dict[str, Any], allow: str = "") -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if allow:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def serve_webhook(
    ca: CertificateAuthority,
    settings: InjectionSettings,
    host: str,
    port: int,
    *,
    dns_names: Sequence[str] = webhook_dns_names(),
    cert_ttl: float = SERVING_CERT_TTL,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve the webhook over HTTPS on `host:port` until cancelled.

    `started(port)` is called once the socket listens (the real port when `port` is 0).
    """
    try:
        context = serving_context(ca, dns_names, cert_ttl, _now())
    except (TrellisError, ValueError, ssl.SSLError) as exc:
        raise WebhookServerError(f"cannot make the webhook's serving certificate: {exc}") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        raise WebhookServerError(
            f"cannot listen on {host}:{port} for the injection webhook: {exc.strerror or exc}"
        ) from None
    config = uvicorn.Config(
        webhook_app(settings),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    config.load()
    config.ssl = context
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        async with asyncio.TaskGroup() as group:
            await server.startup(sockets=[sock])
            log.info(
                "injection webhook on https://%s:%d%s", host, sock.getsockname()[1], INJECT_PATH
            )
            if started is not None:
                started(sock.getsockname()[1])
            renewal = group.create_task(
                _renew(context, ca, dns_names, cert_ttl), name="webhook certificate renewal"
            )
            try:
                await server.main_loop()
            finally:
                renewal.cancel()
    finally:
        server.should_exit = True
        if server.started:
            await server.shutdown(sockets=[sock])
        sock.close()


async def _renew(
    context: ssl.SSLContext, ca: CertificateAuthority, dns_names: Sequence[str], ttl: float
) -> None:
    """Replace the serving certificate at half its lifetime; new handshakes get the new one."""
    while True:  # for the server's lifetime; cancelled with it
        await asyncio.sleep(ttl / 2)
        try:
            load_serving_certificate(context, ca, dns_names, ttl, _now())
            log.info("renewed the webhook's serving certificate")
        except (TrellisError, ValueError, ssl.SSLError) as exc:
            log.error("cannot renew the webhook's serving certificate: %s", exc)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
