"""`SocketAddress.parse`: the one reading of a HOST:PORT flag or setting."""

from __future__ import annotations

import pytest

from trellis.core.addresses import SocketAddress


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:15010", "127.0.0.1", 15010),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("[::1]:8080", "::1", 8080),
        ("trellis.trellis-system.svc:15012", "trellis.trellis-system.svc", 15012),
    ],
)
def test_host_and_port(text: str, host: str, port: int) -> None:
    address = SocketAddress.parse(text)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("text", ["15010", ":15010", "host:", "host:http", "host:65536", "[]:1"])
def test_what_is_not_host_port_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected HOST:PORT, got"):
        SocketAddress.parse(text)
