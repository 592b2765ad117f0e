"""The proxy's identity pieces that need no network: response shapes, timing, metrics, leanness."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from trellis.core.addresses import SocketAddress
from trellis.runtime.ca_client import IdentityError, pem_blocks, split_response
from trellis.runtime.identity import (
    EXPIRY_METRIC,
    CertificateManager,
    CertificateStatus,
    IdentitySettings,
    IssuedCertificate,
    expiry_prometheus,
    token_from_file,
)
from trellis.xds import istio_ca_pb2

PEM = "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n"
LEAF, MIDDLE, ROOT, ROOT2 = (PEM.format(name) for name in ("TEEF", "TUlE", "Uk9P", "Uk9Q"))


def cert(issued_at: float = 1000.0, not_after: float = 1100.0) -> IssuedCertificate:
    return IssuedCertificate(
        cert_chain_pem=LEAF,
        key_pem="-----BEGIN PRIVATE KEY-----\nSECRET\n-----END PRIVATE KEY-----\n",
        root_pem=ROOT,
        serial="abc",
        not_before=issued_at - 60,
        not_after=not_after,
        issued_at=issued_at,
        spiffe_id="spiffe://cluster.local/ns/shop/sa/cart",
    )


def test_the_generated_messages_carry_istio_field_numbers() -> None:
    request = istio_ca_pb2.IstioCertificateRequest.DESCRIPTOR
    numbers = {field.name: field.number for field in request.fields}
    assert numbers == {"csr": 1, "validity_duration": 3, "metadata": 4}
    response = istio_ca_pb2.IstioCertificateResponse.DESCRIPTOR
    assert {field.name: field.number for field in response.fields} == {
        "cert_chain": 1,
        "root_cert": 2,
    }
    service = istio_ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]
    assert service.full_name == "istio.v1.auth.IstioCertificateService"
    assert service.methods_by_name["CreateCertificate"].input_type is request


def test_the_generated_module_loads_first_in_a_fresh_process_without_warnings() -> None:
    probe = "import trellis.xds.istio_ca_pb2 as m; print(m.IstioCertificateRequest(csr='x'))"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", probe],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_proxy_process_never_loads_cryptography_or_grpc() -> None:
    probe = (
        "import json, sys\n"
        "import trellis.proxy.main, trellis.runtime.identity, trellis.runtime.ca_client\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    modules = json.loads(done.stdout)
    assert [m for m in modules if m.split(".")[0] in ("cryptography", "grpc")] == []


def test_a_chain_with_the_root_last_is_split() -> None:
    response = istio_ca_pb2.IstioCertificateResponse(cert_chain=[LEAF, MIDDLE, ROOT + ROOT2])
    signed = split_response(response)
    assert signed.chain == (LEAF, MIDDLE)
    assert signed.roots == (ROOT, ROOT2)


def test_roots_in_their_own_field_are_used() -> None:
    response = istio_ca_pb2.IstioCertificateResponse(
        cert_chain=[LEAF + MIDDLE], root_cert=istio_ca_pb2.Roots(ca_cert=[ROOT, ROOT2])
    )
    signed = split_response(response)
    assert signed.chain == (LEAF, MIDDLE) and signed.roots == (ROOT, ROOT2)


def test_one_entry_holding_everything_is_split_at_the_last_block() -> None:
    signed = split_response(istio_ca_pb2.IstioCertificateResponse(cert_chain=[LEAF + ROOT]))
    assert signed.chain == (LEAF,) and signed.roots == (ROOT,)
    with pytest.raises(IdentityError, match="expected a leaf and a root"):
        split_response(istio_ca_pb2.IstioCertificateResponse(cert_chain=[LEAF]))
    assert pem_blocks("junk") == []


def test_renewal_falls_between_forty_and_sixty_percent_of_the_lifetime() -> None:
    manager = CertificateManager(
        IdentitySettings(SocketAddress("127.0.0.1", 1)), lambda: "t", rng=random.Random(7)
    )
    issued = cert(issued_at=1000.0, not_after=1100.0)
    delays = [manager.renewal_delay(issued, now=1000.0) for _ in range(200)]
    assert min(delays) >= 40 and max(delays) <= 60
    assert max(delays) - min(delays) > 10  # jittered, not one instant for every proxy
    assert manager.renewal_delay(issued, now=1090.0) == 0.05  # overdue: renew at once


def test_backoff_is_capped() -> None:
    manager = CertificateManager(
        IdentitySettings(SocketAddress("127.0.0.1", 1), backoff_max=8.0),
        lambda: "t",
        rng=random.Random(1),
    )
    waits = [manager._backoff(failures) for failures in range(1, 30)]
    assert max(waits) <= 8.0 and waits[0] <= 2.0


def test_the_key_is_in_no_repr_or_status() -> None:
    issued = cert()
    assert "SECRET" not in repr(issued)
    manager = CertificateManager(IdentitySettings(SocketAddress("127.0.0.1", 1)), lambda: "t")
    assert manager.status() is None
    manager.current = issued
    status = manager.status()
    assert status is not None and status.serial == "abc" and status.name == "default"
    assert "SECRET" not in repr(status)
    assert not hasattr(CertificateStatus, "key_pem")


def test_the_expiry_gauge_is_istios() -> None:
    manager = CertificateManager(
        IdentitySettings(SocketAddress("127.0.0.1", 1)), lambda: "t", clock=lambda: 1040.5
    )
    assert manager.prometheus() == ""
    manager.current = cert(not_after=1100.0)
    families = list(text_string_to_metric_families(manager.prometheus()))
    assert [family.name for family in families] == [EXPIRY_METRIC]
    (sample,) = families[0].samples
    assert sample.labels == {"resource_name": "default"} and sample.value == 59.5
    assert families[0].type == "gauge"
    assert expiry_prometheus(manager.status(), 1200.0).endswith(" -100\n")


def test_the_token_file_is_read_on_every_call(tmp_path: Path) -> None:
    path = tmp_path / "token"
    read = token_from_file(path)
    with pytest.raises(IdentityError, match="cannot read the join token file"):
        read()
    path.write_text("first\n")
    assert read() == "first"
    path.write_text("second")
    assert read() == "second"
    path.write_text("\n")
    with pytest.raises(IdentityError, match="is empty"):
        read()
