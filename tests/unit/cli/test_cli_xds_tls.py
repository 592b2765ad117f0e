"""`trellis proxy --xds-root-ca/--xds-server-name` and `trellis control-plane
--xds-tls-address/--xds-tls-names`: parsed, or rejected naming the flag."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from trellis.cli.controlplane_settings import _xds_tls
from trellis.controlplane.xds_tls import DEFAULT_XDS_TLS_NAMES
from trellis.core.addresses import PipeAddress, SocketAddress
from trellis.proxy.cli import xds_tls_settings

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CONTROL_PLANE = SocketAddress("trellis.trellis-system.svc", 15012)


def test_the_server_name_defaults_to_the_xds_host(tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    root.write_text(PEM)
    assert xds_tls_settings(root, None, CONTROL_PLANE) == (PEM, "trellis.trellis-system.svc")
    assert xds_tls_settings(root, "cp.test", CONTROL_PLANE) == (PEM, "cp.test")
    assert xds_tls_settings(None, None, CONTROL_PLANE) is None


@pytest.mark.parametrize(
    ("content", "name", "address", "flag"),
    [
        (None, "cp.test", CONTROL_PLANE, "--xds-server-name"),
        ("not a pem", None, CONTROL_PLANE, "--xds-root-ca"),
        ("missing", None, CONTROL_PLANE, "--xds-root-ca"),
        (PEM, None, PipeAddress("/run/xds.sock"), "--xds-root-ca"),
        (PEM, None, None, "--xds-root-ca"),
        (PEM, "", CONTROL_PLANE, "--xds-server-name"),
    ],
)
def test_bad_proxy_tls_flags_are_named(
    tmp_path: Path,
    content: str | None,
    name: str | None,
    address: SocketAddress | PipeAddress | None,
    flag: str,
) -> None:
    root: Path | None = None
    if content is not None:
        root = tmp_path / "root.pem"
        if content != "missing":
            root.write_text(content)
    with pytest.raises(ValueError, match=f"^{flag}:"):
        xds_tls_settings(root, name, address)


def test_control_plane_tls_flags() -> None:
    assert _xds_tls(None, None) is None
    default = _xds_tls("0.0.0.0:15012", None)
    assert default is not None and default.dns_names == DEFAULT_XDS_TLS_NAMES
    named = _xds_tls("127.0.0.1:0", "a.test, b.test")
    assert named is not None and named.dns_names == ("a.test", "b.test")
    for address, names, flag in [
        ("15012", None, "--xds-tls-address"),
        (None, "a.test", "--xds-tls-names"),
        ("127.0.0.1:15012", "a.test,,b.test", "--xds-tls-names"),
    ]:
        with pytest.raises(click.BadParameter) as caught:
            _xds_tls(address, names)
        assert caught.value.param_hint == flag
