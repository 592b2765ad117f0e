"""`trellis iptables` (the injected init container's command) in a real network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("iptables-save") or not shutil.which("ip"),
    reason="needs root, iproute2 and iptables to make a network namespace and its rules",
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"trellis-ipt-{uuid.uuid4().hex[:8]}"
    done = run("ip", "netns", "add", name)
    assert done.returncode == 0, done.stderr
    try:
        yield name
    finally:
        run("ip", "netns", "delete", name)


def test_the_init_step_installs_the_capture_rules(namespace: str) -> None:
    done = run(
        "ip", "netns", "exec", namespace, sys.executable, "-m", "trellis.cli.main", "iptables",
        "--exclude-inbound-ports", "15000,15020,15021,15090,9000",
        "--exclude-outbound-ports", "5432",
        "--exclude-outbound-ip-ranges", "169.254.169.254/32",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = run("ip", "netns", "exec", namespace, "iptables-save", "-t", "nat").stdout
    rules = [line for line in saved.splitlines() if line.startswith("-A")]
    assert "-A OUTPUT -p tcp -j TRELLIS_OUTPUT" in rules
    assert "-A TRELLIS_INBOUND -p tcp -m tcp --dport 9000 -j RETURN" in rules
    assert "-A TRELLIS_OUTPUT -m owner --gid-owner 1337 -j RETURN" in rules
    assert "-A TRELLIS_OUTPUT -d 169.254.169.254/32 -j RETURN" in rules
    assert "-A TRELLIS_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN" in rules
    assert "-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in rules
    assert "-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in rules
    # The rules went into the namespace only: the host's nat table has none of them.
    assert "TRELLIS_REDIRECT" not in run("iptables-save", "-t", "nat").stdout
