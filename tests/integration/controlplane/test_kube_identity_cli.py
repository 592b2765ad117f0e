"""`trellis control-plane --ca-authentication token-review --leader-lease trellis-leader`.

Two control-plane subprocesses (pods `cp-0` and `cp-1`: POD_NAME/POD_NAMESPACE
as the install's Deployment sets them, KUBECONFIG pointing at the stand-in API
server, `kube_auth_standin`, a test double) elect one leader over the Lease;
both sign a CSR presented with a projected token; when the leader is stopped
(SIGTERM) it releases the Lease and the other takes over without waiting for
it to expire. A misconfiguration is refused naming the flag.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from ..bootstrap import free_port
from ..kube_auth_standin import CALLER_TOKEN, KubeAuthStandin, kube_auth_standin
from .mesh_procs import until
from .test_ca_token_review import OK, create_certificate

CART = "spiffe://cluster.local/ns/shop/sa/cart"
TOKEN = "projected.cart.token"


class Replica:
    """One `trellis control-plane` subprocess as pod `name`."""

    def __init__(self, name: str, data_dir: Path, kubeconfig: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = data_dir / "control-plane.log"
        data_dir.mkdir(parents=True)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name}
        env["POD_NAMESPACE"] = "trellis-system"
        command = [
            sys.executable, "-m", "trellis.cli.main", "control-plane",
            "--data-dir", str(data_dir), "--api-port", str(free_port()),
            "--xds-address", f"127.0.0.1:{self.port}", "--xds-socket", "",
            "--ca-authentication", "token-review", "--leader-lease", "trellis-leader",
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def standin() -> Iterator[KubeAuthStandin]:
    with kube_auth_standin() as server:
        yield server


def write_kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": {"server": server}}],
        "users": [{"name": "trellis", "user": {"token": CALLER_TOKEN}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "trellis"}}],
        "current-context": "standin",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def serving(replica: Replica) -> bool:
    return "xDS (ADS) on port" in replica.log.read_text()


def holder(standin: KubeAuthStandin) -> str:
    lease = standin.lease()
    return str(lease["spec"].get("holderIdentity") or "") if lease else ""


def test_two_replicas_elect_one_leader_and_both_sign(
    standin: KubeAuthStandin, tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", standin.url)
    standin.issue(TOKEN, "shop", "cart", pod="cart-1")
    replicas = [Replica(f"cp-{i}", tmp_path / f"cp-{i}", kubeconfig) for i in range(2)]
    try:
        leader = until(lambda: holder(standin), timeout=20, what="a leader")
        assert leader in {"cp-0", "cp-1"}
        for replica in replicas:
            until(partial(serving, replica), what=f"{replica.name} serving xDS")
            status, san = create_certificate(replica.port, TOKEN, CART)
            assert status == OK, (san, replica.log.read_text())
        (first,) = [r for r in replicas if r.name == leader]
        (other,) = [r for r in replicas if r.name != leader]
        assert "leading (lease trellis-system/trellis-leader" in first.log.read_text()
        assert "leading" not in other.log.read_text()
        first.stop()
        assert "released lease trellis-system/trellis-leader" in first.log.read_text()
        until(lambda: holder(standin) == other.name, timeout=10, what="the other replica leads")
        assert TOKEN not in first.log.read_text() + other.log.read_text()
    finally:
        for replica in replicas:
            replica.stop()


def test_a_lease_without_token_review_is_refused(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "trellis.cli.main", "control-plane",
        "--data-dir", str(tmp_path), "--leader-lease", "trellis-leader",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--leader-lease" in done.stderr and "token-review" in done.stderr


def test_election_without_the_pod_environment_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"POD_NAME", "POD_NAMESPACE"}}
    command = [
        sys.executable, "-m", "trellis.cli.main", "control-plane",
        "--data-dir", str(tmp_path), "--ca-authentication", "token-review",
        "--leader-lease", "trellis-leader",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 2
    assert "POD_NAME and POD_NAMESPACE" in done.stderr
