"""The proxy's own certificate as Envoy's admin shows certificates.

`/config_dump` gets a `SecretsConfigDump` entry for the workload certificate
(SDS name `default`, as Istio's agent serves it to Envoy): the chain, and the
private key as Envoy redacts it (`inline_bytes` of `[redacted]`).
`version_info` is the certificate's serial number (hex), so each rotation shows
as a new version. `/certs` answers Envoy's `envoy.admin.v3.Certificates`:
serial, SPIFFE URI, validity and days until expiration of the leaf and root.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from envoy.admin.v3 import certs_pb2, config_dump_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import json_format, timestamp_pb2

REDACTED = b"[redacted]"
_DAY = 86400


class CertificateView(Protocol):
    """What the dumps read of a certificate in use (never its key)."""

    @property
    def name(self) -> str: ...
    @property
    def spiffe_id(self) -> str: ...
    @property
    def serial(self) -> str: ...
    @property
    def not_before(self) -> float: ...
    @property
    def not_after(self) -> float: ...
    @property
    def issued_at(self) -> float: ...
    @property
    def cert_chain_pem(self) -> str: ...
    @property
    def root_pem(self) -> str: ...
    @property
    def root_serial(self) -> str: ...
    @property
    def root_not_before(self) -> float: ...
    @property
    def root_not_after(self) -> float: ...


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def redacted(secret: secret_pb2.Secret) -> secret_pb2.Secret:
    """A copy of `secret` fit for a dump: a private key shows as `[redacted]`."""
    shown = secret_pb2.Secret()
    shown.CopyFrom(secret)
    if shown.HasField("tls_certificate"):
        shown.tls_certificate.private_key.inline_bytes = REDACTED
    return shown


def dynamic_secret(cert: CertificateView) -> config_dump_pb2.SecretsConfigDump.DynamicSecret:
    """The certificate as a dynamic active secret, its key redacted."""
    secret = secret_pb2.Secret(name=cert.name)
    tls = secret.tls_certificate
    tls.certificate_chain.inline_bytes = cert.cert_chain_pem.encode("ascii")
    tls.private_key.inline_bytes = REDACTED
    entry = config_dump_pb2.SecretsConfigDump.DynamicSecret(
        name=cert.name, version_info=cert.serial
    )
    entry.last_updated.CopyFrom(_stamp(cert.issued_at))
    entry.secret.Pack(secret)
    return entry


def secrets_config_dump(
    certificates: Sequence[CertificateView],
) -> config_dump_pb2.SecretsConfigDump:
    dump = config_dump_pb2.SecretsConfigDump()
    for cert in certificates:
        dump.dynamic_active_secrets.append(dynamic_secret(cert))
    return dump


def _details(
    serial: str, uri: str, not_before: float, not_after: float, now: float
) -> certs_pb2.CertificateDetails:
    details = certs_pb2.CertificateDetails(
        path="<inline>",
        serial_number=serial,
        days_until_expiration=max(0, int((not_after - now) // _DAY)),
    )
    if uri:
        details.subject_alt_names.add(uri=uri)
    details.valid_from.CopyFrom(_stamp(not_before))
    details.expiration_time.CopyFrom(_stamp(not_after))
    return details


def certs_json(certificates: Sequence[CertificateView], now: float) -> dict[str, object]:
    """Envoy's `/certs` answer: each certificate's leaf and the root that signed it."""
    answer = certs_pb2.Certificates()
    for cert in certificates:
        entry = answer.certificates.add()
        entry.cert_chain.append(
            _details(cert.serial, cert.spiffe_id, cert.not_before, cert.not_after, now)
        )
        entry.ca_cert.append(
            _details(cert.root_serial, "", cert.root_not_before, cert.root_not_after, now)
        )
    result: dict[str, object] = json_format.MessageToDict(
        answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result
