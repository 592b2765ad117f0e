"""An upstream TLS context's SNI: checked once when compiled, in the ASCII form sent."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from trellis.errors import ConfigError
from trellis.xds.compile_tls import upstream_transport
from trellis.xds.where import Where


def _sni(name: str) -> str:
    socket = base_pb2.TransportSocket(name="envoy.transport_sockets.tls")
    socket.typed_config.Pack(tls_pb2.UpstreamTlsContext(sni=name))
    tls = upstream_transport(socket, Where("bootstrap.yaml").at("transport_socket"))
    assert tls is not None
    return tls.sni


@pytest.mark.parametrize(
    "name",
    ["", "outbound_.80_._.echo.demo.svc.cluster.local", "echo.", "x" * 63 + ".local"],
)
def test_ascii_names_are_sent_as_given(name: str) -> None:
    assert _sni(name) == name


def test_a_unicode_name_is_sent_idna_encoded() -> None:
    assert _sni("bücher.example") == "xn--bcher-kva.example"


@pytest.mark.parametrize("name", ["a..b", ".a", "x" * 64 + ".local", "a." * 128 + "b"])
def test_a_name_tls_cannot_carry_is_a_config_error_naming_the_field(name: str) -> None:
    with pytest.raises(ConfigError, match=r"transport_socket\.typed_config\.sni"):
        _sni(name)
