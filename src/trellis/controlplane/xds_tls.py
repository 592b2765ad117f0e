"""The serving certificate of xDS and the CA over TLS (port 15012, DESIGN.md §4).

Sidecars in other pods send their service-account token to the CA: on the pod
network that must not travel in clear. The control plane serves the same gRPC
services on a second, TLS port, with a certificate its own CA issues for the
names the sidecars dial (`trellis.trellis-system.svc`). Sidecars already trust
that root (the injector hands it to them), so no other PKI is needed.

The certificate is renewed in place: grpc asks `ServingCertificate.fetch`
before each handshake, and it answers a new certificate once the current one
has lived half its lifetime; established streams keep theirs.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from trellis.controlplane.ca import CertificateAuthority
from trellis.errors import TrellisError

log = logging.getLogger("trellis.controlplane.xds_tls")

DEFAULT_XDS_TLS_NAMES = (
    "trellis.trellis-system.svc",
    "trellis.trellis-system.svc.cluster.local",
)
DEFAULT_XDS_TLS_TTL = 24 * 3600.0
Clock = Callable[[], datetime.datetime]


@dataclass(frozen=True, slots=True)
class XdsTlsSettings:
    """Serve xDS and the CA over TLS on `address`, certified for `dns_names`."""

    address: str
    dns_names: tuple[str, ...] = DEFAULT_XDS_TLS_NAMES
    ttl: float = DEFAULT_XDS_TLS_TTL

    def __post_init__(self) -> None:
        if not self.dns_names or any(not name for name in self.dns_names):
            raise ValueError("give at least one DNS name, none empty")
        if self.ttl <= 0:
            raise ValueError("the xDS serving certificate needs a positive lifetime")


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ServingCertificate:
    """The current key and chain for `dns_names`, renewed at half its lifetime."""

    def __init__(
        self,
        ca: CertificateAuthority,
        dns_names: Sequence[str],
        ttl: float,
        clock: Clock = _utc_now,
    ) -> None:
        self._ca = ca
        self._dns_names = tuple(dns_names)
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()  # grpc calls `fetch` from its own threads
        self.renew_at = clock()
        self.issued = 0
        self.first = self._issue()

    def _issue(self) -> grpc.ServerCertificateConfiguration:
        now = self._clock()
        key_pem, chain_pem = self._ca.issue_server(self._dns_names, self._ttl, now)
        self.renew_at = now + datetime.timedelta(seconds=self._ttl / 2)
        self.issued += 1
        return grpc.ssl_server_certificate_configuration([(key_pem, chain_pem)])

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's callback: a new certificate when due, None to keep the current one."""
        with self._lock:
            if self._clock() < self.renew_at:
                return None
            try:
                config = self._issue()
            except (TrellisError, ValueError) as exc:  # keep serving the old one; retry later
                log.error("cannot renew the xDS serving certificate: %s", exc)
                return None
            log.info("renewed the xDS serving certificate for %s", ", ".join(self._dns_names))
            return config

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that always present the current certificate."""
        return grpc.dynamic_ssl_server_credentials(self.first, self.fetch)
