"""The proxy's certificate in `/config_dump` (key redacted as Envoy does) and `/certs`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from trellis.xds.config_dump import config_dump
from trellis.xds.secret_dump import certs_json

CHAIN = "-----BEGIN CERTIFICATE-----\nTEVBRg==\n-----END CERTIFICATE-----\n"


@dataclass(frozen=True)
class Cert:
    name: str = "default"
    spiffe_id: str = "spiffe://cluster.local/ns/shop/sa/cart"
    serial: str = "1f2e"
    not_before: float = 1_700_000_000.0
    not_after: float = 1_700_086_400.0
    issued_at: float = 1_700_000_060.0
    cert_chain_pem: str = CHAIN
    root_pem: str = "ROOT"
    root_serial: str = "99"
    root_not_before: float = 1_600_000_000.0
    root_not_after: float = 1_900_000_000.0


def test_config_dump_shows_the_certificate_with_the_key_redacted() -> None:
    dump = config_dump(bootstrap_pb2.Bootstrap(), 1.0, None, secrets=[Cert()])
    (secrets,) = [c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump")]
    (entry,) = secrets["dynamic_active_secrets"]
    assert entry["name"] == "default"
    assert entry["version_info"] == "1f2e"
    assert entry["last_updated"] == "2023-11-14T22:14:20Z"
    secret = entry["secret"]
    assert secret["@type"] == "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    tls = secret["tls_certificate"]
    assert base64.b64decode(tls["certificate_chain"]["inline_bytes"]).decode() == CHAIN
    assert tls["private_key"] == {"inline_bytes": "W3JlZGFjdGVkXQ=="}  # "[redacted]", as Envoy
    assert "PRIVATE KEY" not in json.dumps(dump)


def test_no_certificate_no_secrets_entry() -> None:
    dump = config_dump(bootstrap_pb2.Bootstrap(), 1.0, None)
    assert not [c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump")]


def test_certs_answers_envoys_shape() -> None:
    answer: dict[str, Any] = certs_json([Cert()], now=1_700_000_060.0)
    (entry,) = answer["certificates"]
    (leaf,) = entry["cert_chain"]
    assert leaf["serial_number"] == "1f2e"
    assert leaf["subject_alt_names"] == [{"uri": "spiffe://cluster.local/ns/shop/sa/cart"}]
    assert leaf["expiration_time"] == "2023-11-15T22:13:20Z"
    assert leaf["days_until_expiration"] == "0"
    (root,) = entry["ca_cert"]
    assert root["serial_number"] == "99"
    assert int(root["days_until_expiration"]) > 2000


@dataclass
class _State:
    version: str
    resources: dict[str, Any]
    last_updated: float = 1.0
    rejected_version: str = ""
    rejected_reason: str = ""


def test_bootstrap_and_sds_secrets_are_dumped_without_private_keys() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"
    boot = bootstrap_pb2.Bootstrap()
    static = boot.static_resources.secrets.add(name="server-cert")
    static.tls_certificate.certificate_chain.inline_string = CHAIN
    static.tls_certificate.private_key.inline_string = key
    root = secret_pb2.Secret(name="ROOTCA")
    root.validation_context.trusted_ca.inline_bytes = CHAIN.encode()
    sds = {"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": _State(
        "v7", {"ROOTCA": root})}  # fmt: skip
    dump = config_dump(boot, 1.0, sds)
    text = json.dumps(dump)
    assert "PRIVATE KEY" not in text and "c2VjcmV0" not in text
    assert static.tls_certificate.private_key.inline_string == key  # the proxy's copy is intact
    (secrets,) = [c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump")]
    (shown,) = secrets["static_secrets"]
    assert shown["name"] == "server-cert"
    assert shown["secret"]["tls_certificate"]["private_key"] == {"inline_bytes": "W3JlZGFjdGVkXQ=="}
    (dynamic,) = secrets["dynamic_active_secrets"]
    assert (dynamic["name"], dynamic["version_info"]) == ("ROOTCA", "v7")
    trusted = dynamic["secret"]["validation_context"]["trusted_ca"]["inline_bytes"]
    assert base64.b64decode(trusted).decode() == CHAIN
