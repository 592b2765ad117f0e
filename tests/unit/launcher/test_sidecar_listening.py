"""`listening`: the application's port, seen in its network namespace's socket table."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from trellis.platform.sidecar import listening

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def test_a_listening_socket_shows_and_a_connected_one_does_not() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        assert not listening(os.getpid(), port)  # bound, not listening
        server.listen()
        assert listening(os.getpid(), port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            assert not listening(os.getpid(), client.getsockname()[1])
    assert not listening(os.getpid(), port)


def test_a_process_that_is_gone_listens_on_nothing() -> None:
    assert not listening(2**22 + 7, 80)  # above the default pid_max: no such process
