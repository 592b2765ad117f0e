"""The proxy's workload identity: its key, its certificate, and renewal before expiry.

`CertificateManager` obtains a SPIFFE certificate from the control plane's CA
and keeps it current, like Istio's pilot-agent does for Envoy:

1. a new private key and CSR (keytool child process, see `ca_client`);
2. CreateCertificate with the credential (a join token, read afresh from its
   source on every call, so a launcher can refresh the file);
3. the answer is checked before use: the chain verifies up to a self-signed
   root, the leaf carries the key just generated, and exactly one SPIFFE URI
   SAN (the one asked for, when one was);
4. the new certificate replaces the old in one reference swap, listeners are
   called (the TLS layer rebuilds its contexts there; connections already up
   keep theirs), and renewal is scheduled at 40-60% of the lifetime (measured
   from when it arrived, as Istio does); failures retry with capped, jittered
   back-off while the old certificate stays in use.

Everything is held in memory; nothing is written unless `directory` is given
(then `cert-chain.pem`, `key.pem`, `root-cert.pem`, Istio's file names, mode
0600). The private key appears in no repr, log, status or metric.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trellis.core.addresses import EndpointAddress
from trellis.core.prometheus import braces, family_header, format_value, label_pairs
from trellis.runtime.ca_client import (
    KEYTOOL,
    IdentityError,
    generate_key,
    inspect_chain,
    request_certificate,
)
from trellis.runtime.files import write_file_atomically
from trellis.runtime.grpc_stream import GrpcTls

if TYPE_CHECKING:
    from pathlib import Path  # the proxy itself passes none: it does not load pathlib

log = logging.getLogger("trellis.identity")

RESOURCE_NAME = "default"
"""Envoy/Istio's SDS name for a workload's own certificate."""
EXPIRY_METRIC = "istio_agent_cert_expiry_seconds"
TokenSource = Callable[[], str]
"""Returns the current credential; raises IdentityError or OSError when there is none."""
RotationListener = Callable[["IssuedCertificate"], None]


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate in use. `cert_chain_pem`: the leaf and any intermediates."""

    cert_chain_pem: str
    key_pem: str = field(repr=False)
    root_pem: str
    serial: str
    not_before: float
    not_after: float
    issued_at: float
    spiffe_id: str
    root_serial: str = ""
    root_not_before: float = 0.0
    root_not_after: float = 0.0

    @property
    def lifetime(self) -> float:
        """Seconds from arrival to expiry: what renewal timing is measured against."""
        return self.not_after - self.issued_at


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """The current certificate for `/config_dump` and `/certs`: everything but the key."""

    name: str
    spiffe_id: str
    serial: str
    not_before: float
    not_after: float
    issued_at: float
    cert_chain_pem: str
    root_pem: str
    root_serial: str
    root_not_before: float
    root_not_after: float
    renewals: int
    last_error: str


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """Where the CA is and how to ask it. `validity`: seconds to request (0: the CA's default)."""

    ca: EndpointAddress  # HOST:PORT, or the control plane's Unix socket
    tls: GrpcTls | None = None  # TLS to a HOST:PORT CA (the control plane's 15012)
    spiffe_id: str | None = None
    validity: int = 0
    directory: Path | None = None
    call_timeout: float = 10.0
    renew_window: tuple[float, float] = (0.4, 0.6)
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    keytool: tuple[str, ...] = KEYTOOL


def token_from_file(path: str | os.PathLike[str]) -> TokenSource:
    """Reads the token file on every call (it may be refreshed while the proxy runs)."""

    def read() -> str:
        try:
            with open(path, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as exc:
            raise IdentityError(
                f"cannot read the join token file {os.fspath(path)}: {exc.strerror}"
            ) from None
        if not token:
            raise IdentityError(f"the join token file {os.fspath(path)} is empty")
        return token

    return read


def token_value(token: str) -> TokenSource:
    """A fixed token (from the environment)."""
    return lambda: token


def expiry_prometheus(status: CertificateStatus | None, now: float) -> str:
    """Istio's agent gauge: seconds until the certificate expires (negative once expired)."""
    if status is None:
        return ""
    labels = braces(label_pairs((("resource_name", status.name),)))
    value = format_value(round(status.not_after - now, 3))
    help_text = "Seconds until the workload certificate expires; negative once it has."
    return f"{family_header(EXPIRY_METRIC, 'gauge', help_text)}{EXPIRY_METRIC}{labels} {value}\n"


class CertificateManager:
    """Obtains and renews the proxy's certificate; `run()` until cancelled."""

    def __init__(
        self,
        settings: IdentitySettings,
        token: TokenSource,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._token = token
        self._rng = rng or random.Random()
        self._clock = clock
        self._listeners: list[RotationListener] = []
        self.current: IssuedCertificate | None = None
        self.renewals = 0
        self.last_error = ""
        self._first = asyncio.Event()
        self._first_refusal: str | None = None

    def add_listener(self, listener: RotationListener) -> None:
        """Call `listener(certificate)` with every new certificate, the first included.

        A listener added later reads the one in use from `current`.
        """
        self._listeners.append(listener)

    def status(self) -> CertificateStatus | None:
        cert = self.current
        if cert is None:
            return None
        return CertificateStatus(
            RESOURCE_NAME,
            cert.spiffe_id,
            cert.serial,
            cert.not_before,
            cert.not_after,
            cert.issued_at,
            cert.cert_chain_pem,
            cert.root_pem,
            cert.root_serial,
            cert.root_not_before,
            cert.root_not_after,
            self.renewals,
            self.last_error,
        )

    def prometheus(self) -> str:
        return expiry_prometheus(self.status(), self._clock())

    def renewal_delay(self, cert: IssuedCertificate, now: float) -> float:
        low, high = self.settings.renew_window
        due = cert.issued_at + cert.lifetime * self._rng.uniform(low, high)
        return max(0.05, due - now)

    def _backoff(self, failures: int) -> float:
        ceiling = min(
            self.settings.backoff_max, self.settings.backoff_base * 2 ** min(failures, 10)
        )
        return self._rng.uniform(ceiling / 2, ceiling)

    async def wait_first(self, within: float) -> IssuedCertificate:
        """The first certificate, waiting up to `within` seconds (`run()` must be running).

        Raises IdentityError at once if the CA refuses (a bad token will not get
        better by waiting), or with the last error when time runs out.
        """
        try:
            async with asyncio.timeout(within):
                await self._first.wait()
        except TimeoutError:
            raise IdentityError(
                f"no certificate within {within:g}s: {self.last_error or 'no answer yet'}"
            ) from None
        if self.current is None:
            raise IdentityError(self._first_refusal or self.last_error, refused=True)
        return self.current

    async def run(self) -> None:
        """Obtain, then renew before expiry, until cancelled."""
        failures = 0
        while True:
            try:
                cert = await self.refresh()
            except Exception as exc:  # the renewal loop must outlive any one failure
                failures += 1
                self.last_error = str(exc)
                delay = self._backoff(failures)
                if isinstance(exc, IdentityError):
                    log.warning("certificate request failed (retry in %.1fs): %s", delay, exc)
                else:
                    log.exception("certificate request failed (retry in %.1fs)", delay)
                if isinstance(exc, IdentityError) and exc.refused and self.current is None:
                    self._first_refusal = str(exc)
                    self._first.set()
                await asyncio.sleep(delay)
                continue
            failures = 0
            await asyncio.sleep(self.renewal_delay(cert, self._clock()))

    async def refresh(self) -> IssuedCertificate:
        """Get a new certificate now and put it in use. Raises IdentityError."""
        settings = self.settings
        try:
            credential = self._token()
        except OSError as exc:
            raise IdentityError(f"cannot read the join token: {exc}", refused=True) from None
        key = await generate_key(settings.spiffe_id, command=settings.keytool)
        signed = await request_certificate(
            settings.ca,
            key.csr_pem,
            credential,
            validity=settings.validity,
            call_timeout=settings.call_timeout,
            tls=settings.tls,
        )
        received = self._clock()
        chain_pem = "".join(signed.chain)
        facts = await inspect_chain(chain_pem + "".join(signed.roots), command=settings.keytool)
        if not facts.chain_ok:
            raise IdentityError(f"the CA's certificate chain does not verify: {facts.problem}")
        if facts.public_key_sha256 != key.public_key_sha256:
            raise IdentityError("the CA's certificate is not for the key this proxy generated")
        spiffe = [uri for uri in facts.uri_sans if uri.startswith("spiffe://")]
        if len(spiffe) != 1 or (settings.spiffe_id and spiffe[0] != settings.spiffe_id):
            raise IdentityError(f"the certificate names {facts.uri_sans}, not one SPIFFE ID")
        cert = IssuedCertificate(
            cert_chain_pem=chain_pem,
            key_pem=key.key_pem,
            root_pem="".join(signed.roots),
            serial=facts.serial,
            not_before=facts.not_before,
            not_after=facts.not_after,
            issued_at=received,
            spiffe_id=spiffe[0],
            root_serial=facts.root_serial,
            root_not_before=facts.root_not_before,
            root_not_after=facts.root_not_after,
        )
        self._install(cert)
        return cert

    def _install(self, cert: IssuedCertificate) -> None:
        previous = self.current
        if self.settings.directory is not None:
            try:
                _write_files(self.settings.directory, cert)
            except OSError as exc:
                raise IdentityError(
                    f"cannot write the certificate to {self.settings.directory}: {exc}"
                ) from None
        self.current = cert
        self.last_error = ""
        if previous is not None:
            self.renewals += 1
        log.info(
            "certificate %s for %s, valid %.0fs (until %s)",
            cert.serial,
            cert.spiffe_id,
            cert.lifetime,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cert.not_after)),
        )
        self._first.set()
        for listener in list(self._listeners):
            try:
                listener(cert)
            except Exception:  # a listener is another component: log, keep rotating
                log.exception("certificate rotation listener %r failed", listener)


def _write_files(directory: Path, cert: IssuedCertificate) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files: Sequence[tuple[str, str]] = (
        ("key.pem", cert.key_pem),
        ("cert-chain.pem", cert.cert_chain_pem),
        ("root-cert.pem", cert.root_pem),
    )
    for name, text in files:
        write_file_atomically(directory / name, text.encode("ascii"))
