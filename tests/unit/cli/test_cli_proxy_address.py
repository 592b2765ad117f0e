"""`trellis proxy --xds` / `--ca-address`: HOST:PORT or `unix:PATH` (the control plane's
Unix socket), and errors that name the flag."""

from __future__ import annotations

import os

import pytest

from trellis.core.addresses import PIPE_PATH_MAX_BYTES, PipeAddress, SocketAddress
from trellis.proxy.cli import control_plane_address

SOCKET = "/run/trellis/xds.sock"


def test_the_flag_takes_unix_paths_in_both_spellings() -> None:
    assert control_plane_address(f"unix:{SOCKET}", "--xds") == PipeAddress(SOCKET)
    assert control_plane_address(f"unix://{SOCKET}", "--xds") == PipeAddress(SOCKET)
    relative = control_plane_address("unix:run/xds.sock", "--xds")
    assert relative == PipeAddress(os.path.join(os.getcwd(), "run/xds.sock"))


def test_the_flag_still_takes_host_port() -> None:
    assert control_plane_address("127.0.0.1:15010", "--xds") == SocketAddress("127.0.0.1", 15010)
    assert control_plane_address("[::1]:15010", "--xds") == SocketAddress("::1", 15010)
    assert control_plane_address(None, "--xds") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("unix:", "needs a socket path"),
        ("unix://run/xds.sock", "needs an absolute path"),
        ("unix:@trellis", "abstract Unix sockets"),
        ("unix:/" + "x" * PIPE_PATH_MAX_BYTES, "at most 107"),
        ("localhost15010", "expected HOST:PORT"),
    ],
)
def test_bad_flag_values_name_the_flag(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        control_plane_address(value, "--ca-address")
    assert str(info.value).startswith("--ca-address: ")
