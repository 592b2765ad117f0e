"""Why transparent capture cannot be used: each missing piece named in the message."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from trellis.platform import netns


def test_not_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert netns.transparent_unavailable() == (
        "transparent capture needs Linux (namespaces, iptables), not darwin"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks past the platform")
def test_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    message = netns.transparent_unavailable()
    assert message is not None and message.startswith("transparent capture needs root")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks past the platform")
def test_missing_tools_are_named_with_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which
    monkeypatch.setattr(
        shutil,
        "which",
        lambda name: None if name in ("iptables-restore", "setpriv") else real_which(name),
    )
    message = netns.transparent_unavailable()
    assert message is not None
    assert "iptables-restore (Debian package iptables)" in message
    assert "setpriv (Debian package util-linux)" in message
