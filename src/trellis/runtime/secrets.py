"""Secrets (certificates, trusted CAs) and the `ssl.SSLContext`s built from them.

Secrets come from three places (`SecretSource`): the bootstrap, SDS over ADS
(the mesh's `ROOTCA`), and the proxy's identity agent (its workload
certificate `default`, whose key never leaves the process). A context is built
once per TLS setting and set of secret versions; a rotation replaces the
secret, so new connections use the new certificate while established ones
keep theirs.

Python's `ssl` loads a certificate and key only from a file: the PEM goes
through an anonymous in-memory file (`memfd_create`), never the disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from trellis.core.tls import (
    CommonTls,
    DownstreamTls,
    NamedSecret,
    Secret,
    SecretRef,
    SecretSource,
    TlsCertificateSecret,
    TlsVersion,
    UpstreamTls,
    ValidationSecret,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger("trellis.tls")

# The most plaintext one TLS record carries (RFC 8446 section 5.1, the same in TLS 1.2).
TLS_RECORD_PLAINTEXT = 16384

_VERSIONS = {
    TlsVersion.TLSv1_2: ssl.TLSVersion.TLSv1_2,
    TlsVersion.TLSv1_3: ssl.TLSVersion.TLSv1_3,
}
# getpeercert() SAN types -> Envoy's SubjectAltNameMatcher.SanType names
_SAN_TYPES = {"URI": "URI", "DNS": "DNS", "IP Address": "IP", "email": "EMAIL"}


class SecretStore:
    """The proxy's secrets by source and name, and SSL contexts cached per version."""

    def __init__(self, static: tuple[NamedSecret, ...] = ()) -> None:
        self._secrets: dict[SecretSource, dict[str, Secret]] = {
            SecretSource.STATIC: dict(static),
            SecretSource.ADS: {},
            SecretSource.LOCAL: {},
        }
        self._contexts: dict[object, ssl.SSLContext] = {}
        self._listeners: list[Callable[[], None]] = []
        self.version = 0

    def get(self, ref: SecretRef) -> Secret | None:
        return self._secrets[ref.source].get(ref.name)

    def names(self, source: SecretSource) -> frozenset[str]:
        return frozenset(self._secrets[source])

    def set_local(self, name: str, secret: Secret) -> None:
        """The identity agent's secret (a rotated workload certificate)."""
        self._secrets[SecretSource.LOCAL][name] = secret
        self._changed()

    def set_ads(self, secrets: Mapping[str, Secret]) -> None:
        """SDS state of the world for the secrets the proxy asked for."""
        self._secrets[SecretSource.ADS] = dict(secrets)
        self._changed()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        self.version += 1
        self._contexts.clear()
        for listener in self._listeners:
            listener()

    # -- contexts ------------------------------------------------------------------------

    def server_context(self, tls: DownstreamTls) -> ssl.SSLContext | None:
        """The context terminating TLS for `tls`; None while a secret it needs is missing."""
        found = self._contexts.get(tls)
        if found is None:
            found = self._build(tls.common, server=True, require=tls.require_client_certificate)
            if found is not None:
                self._contexts[tls] = found
        return found

    def client_context(self, tls: UpstreamTls) -> ssl.SSLContext | None:
        """The context originating TLS for `tls`; None while a secret it needs is missing."""
        found = self._contexts.get(tls)
        if found is None:
            found = self._build(tls.common, server=False, require=False)
            if found is not None:
                self._contexts[tls] = found
        return found

    def _build(self, common: CommonTls, *, server: bool, require: bool) -> ssl.SSLContext | None:
        certificate: Secret | None = None
        validation: Secret | None = None
        if common.certificate is not None:
            certificate = self.get(common.certificate)
            if not isinstance(certificate, TlsCertificateSecret):
                return None
        if common.validation is not None:
            validation = self.get(common.validation)
            if not isinstance(validation, ValidationSecret):
                return None
        context = AsciiSniContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = _VERSIONS[common.parameters.min_version]
        context.maximum_version = _VERSIONS[common.parameters.max_version]
        if not server:
            context.check_hostname = False  # identities are SPIFFE URIs: checked by SAN matchers
        try:
            if isinstance(certificate, TlsCertificateSecret):
                _load_certificate(context, certificate)
            if isinstance(validation, ValidationSecret):
                context.load_verify_locations(cadata=validation.trusted_ca.decode("ascii"))
                context.verify_mode = (
                    ssl.CERT_REQUIRED if require or not server else (ssl.CERT_OPTIONAL)
                )
            else:
                context.verify_mode = ssl.CERT_NONE
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as error:
            log.error("cannot use the TLS secrets %s: %s", _names(common), error)
            return None
        if common.alpn:
            context.set_alpn_protocols(list(common.alpn))
        return context


def peer_sans(peercert: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """(type, value) pairs of a verified peer certificate's subjectAltName."""
    if not peercert:
        return ()
    return tuple(
        (_SAN_TYPES.get(kind, kind), value) for kind, value in peercert.get("subjectAltName", ())
    )


def peer_principal(sans: tuple[tuple[str, str], ...]) -> str | None:
    """The peer's SPIFFE identity (its first `spiffe://` URI SAN), as Istio reports it."""
    for kind, value in sans:
        if kind == "URI" and value.startswith("spiffe://"):
            return value
    return None


def _names(common: CommonTls) -> str:
    refs = [r for r in (common.certificate, common.validation) if r is not None]
    return ", ".join(f"{r.source.value}:{r.name}" for r in refs)


class RecordSizedSSLObject(ssl.SSLObject):
    """An `ssl.SSLObject` that asks OpenSSL for at most one record's plaintext per read.

    uvloop's TLS transport reads with `read(256 KiB)`, and `ssl` allocates the
    bytes object it returns at the size asked for before OpenSSL fills it, then
    shrinks it to what came: every read of every TLS connection (at least two per
    received segment, the last one finding nothing) took and gave back 256 KiB of
    the C heap. OpenSSL hands out one record per read, 16 KiB at most, so asking
    for more never returned more (bench/README.md, connection churn).
    """

    def read(self, len: int = 1024, buffer: WriteableBuffer | None = None) -> bytes:
        return super().read(min(len, TLS_RECORD_PLAINTEXT), buffer)


class AsciiSniContext(ssl.SSLContext):
    """An `ssl.SSLContext` that gives OpenSSL an ASCII server name (SNI) as it is, and
    reads one record at a time (`RecordSizedSSLObject`).

    The base class runs every name through the idna codec, whose first use imports
    stringprep and unicodedata: ~0.4 MiB of a sidecar's memory, in every sidecar that
    originates TLS with an SNI (Istio sets one on each outbound mTLS cluster). For an
    ASCII name the codec only checks label lengths, which the compiler already did
    (`trellis.xds.compile_tls`, which also IDNA-encodes a name given in Unicode).
    """

    sslobject_class = RecordSizedSSLObject  # what `wrap_bio` makes (uvloop's and TlsStream's)

    def _encode_hostname(self, hostname: str | bytes | None) -> str | None:
        # Overrides ssl.SSLContext's private hook (3.7+); were it gone, the codec is used.
        if isinstance(hostname, str) and hostname.isascii():
            return hostname
        encoded: str | None = super()._encode_hostname(hostname)  # type: ignore[misc]
        return encoded


def _load_certificate(context: ssl.SSLContext, secret: TlsCertificateSecret) -> None:
    data = secret.certificate_chain.rstrip(b"\n") + b"\n" + secret.private_key
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("trellis-certificate", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    import tempfile  # noqa: PLC0415 - only without memfd_create; it costs ~1 MiB to import

    handle, path = tempfile.mkstemp(prefix="trellis-cert-")  # created 0600
    try:
        try:
            os.write(handle, data)
        finally:
            os.close(handle)
        context.load_cert_chain(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
