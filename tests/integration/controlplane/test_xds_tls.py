"""xDS and the CA over TLS (`--xds-tls-address`, the control plane's 15012).

A real `trellis control-plane` serves the same gRPC services on a TLS port with
a certificate from its own CA; a real `trellis proxy --xds-root-ca` gets its
workload certificate (join token) and its listeners over that port. A proxy
trusting another root, or expecting another name, is refused and never falls
back to plaintext.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from trellis.controlplane.ca_files import CA_DIR, CERT_FILE, load_or_create_root
from trellis.core.addresses import SocketAddress
from trellis.runtime.ca_client import IdentityError, request_certificate
from trellis.runtime.grpc_stream import GrpcTls

from ..bootstrap import free_port
from ..client import Response, request
from ..upstream import HttpUpstream
from .mesh_procs import ControlPlane, SidecarProcess, until
from .test_xds_socket import PAYMENT, WEB, dynamic_listeners

NAME = "xds.trellis.test"


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlPlane]:
    tls_port = free_port()
    plane = ControlPlane(
        tmp_path / "cp",
        "--xds-tls-address", f"127.0.0.1:{tls_port}",
        "--xds-tls-names", f"{NAME},other.test",
    )  # fmt: skip
    plane.tls_port = tls_port  # type: ignore[attr-defined]
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def tls_port(control: ControlPlane) -> int:
    port: int = control.tls_port  # type: ignore[attr-defined]
    return port


def tls_sidecar(
    control: ControlPlane, workdir: Path, name: str, root: Path, *extra: str
) -> SidecarProcess:
    """`trellis proxy --xds 127.0.0.1:TLS_PORT --xds-root-ca ROOT` with a join token."""
    token_file = workdir / f"{name}.token"
    token_file.write_text(control.join_token("default", name, name) + "\n")
    proxy = SidecarProcess(control, workdir, name, token_file, {"NAMESPACE": "default"})
    at = proxy.command.index("--xds")
    proxy.command[at + 1] = f"127.0.0.1:{tls_port(control)}"
    proxy.command += ["--xds-root-ca", str(root), *extra]
    return proxy


def test_the_tls_port_presents_a_certificate_of_the_mesh_ca(control: ControlPlane) -> None:
    root = (control.data_dir / CA_DIR / CERT_FILE).read_text()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=root)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", tls_port(control)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=NAME) as conn,
    ):
        assert conn.selected_alpn_protocol() == "h2"
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [NAME, "other.test"]
    # the plaintext port still answers plaintext only
    with (
        socket.create_connection(("127.0.0.1", control.xds_port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname=NAME).close()


def test_a_proxy_gets_its_certificate_and_config_over_tls(
    control: ControlPlane, tmp_path: Path
) -> None:
    root = control.data_dir / CA_DIR / CERT_FILE
    app = HttpUpstream("payment-app").start()
    outbound = free_port()
    sidecar = tls_sidecar(control, tmp_path, "web", root, "--xds-server-name", NAME)
    sidecar.command += ["--metadata", f"TRELLIS_OUTBOUND_PORT={outbound}"]
    try:
        control.apply(PAYMENT % {"port": app.port})
        sidecar.start()  # ready only once the CA answered over TLS
        assert sidecar.certificate()["subject_alt_names"] == [{"uri": WEB}]
        until(lambda: dynamic_listeners(sidecar.admin_json("/config_dump")), what="listeners")

        def pay() -> Response | None:
            answer = request(outbound, "GET", "http://payment/pay", host="payment")
            return answer if answer.status == 200 else None

        response = until(pay, what="web -> payment through the outbound listener")
        assert response is not None and response.header("x-upstream") == "payment-app"
    finally:
        sidecar.stop()
        app.stop()
    assert sidecar.crash_report() is None


@pytest.mark.parametrize("problem", ["wrong root", "wrong name"])
def test_a_proxy_that_cannot_verify_the_server_is_refused(
    control: ControlPlane, tmp_path: Path, problem: str
) -> None:
    root = control.data_dir / CA_DIR / CERT_FILE
    extra: tuple[str, ...] = ("--xds-server-name", NAME)
    if problem == "wrong root":
        other = load_or_create_root(tmp_path / "other", now=datetime.datetime.now(datetime.UTC))
        root = tmp_path / "other-root.pem"
        root.write_text(other.root_bundle_pem)
    else:
        extra = ("--xds-server-name", "not-the-control-plane.test")
    sidecar = tls_sidecar(control, tmp_path, "web", root, *extra)
    sidecar.start(wait_ready=False)
    try:
        code = sidecar.wait_exit(45)  # no certificate within its bound: the proxy gives up
        assert code not in (None, 0), sidecar.describe()
        assert "certificate verify failed" in sidecar.stderr(), sidecar.describe()
    finally:
        sidecar.stop()
    assert "issued certificate" not in control.log_text()  # the token never reached the CA
    assert "refused" not in control.log_text()


def test_the_ca_client_checks_the_name_and_never_speaks_plaintext(
    control: ControlPlane, tmp_path: Path
) -> None:
    root = (control.data_dir / CA_DIR / CERT_FILE).read_text()
    token = control.join_token("default", "web", "web")

    async def ask(port: int, name: str) -> str:
        tls = GrpcTls(root, name)
        try:
            await request_certificate(
                SocketAddress("127.0.0.1", port), "not a csr", token, tls=tls, call_timeout=5
            )
        except IdentityError as exc:
            return str(exc)
        return "answered"

    wrong_name = asyncio.run(ask(tls_port(control), "other.example"))
    assert "cannot reach the CA" in wrong_name and "hostname" in wrong_name.lower()
    plaintext = asyncio.run(ask(control.xds_port, NAME))
    assert "cannot reach the CA" in plaintext
    right = asyncio.run(ask(tls_port(control), NAME))  # reaches the CA, which reads the CSR
    assert "CSR" in right or "csr" in right, right
