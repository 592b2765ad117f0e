"""`trellis install` (applying): the kubectl commands it runs and its errors, as a process.

No Kubernetes API server can run here, so the apply path is checked against
`fake_kubectl`, a test double that records its arguments and standard input
and answers like kubectl; the unreachable-cluster error is also checked with
the real kubectl when it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

TRELLIS = [sys.executable, "-m", "trellis.cli.main"]

FAKE_KUBECTL = """#!{python}
# Test double for kubectl: records each call, answers `version` and `apply`.
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read()
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
if "version" in args:
    if os.environ.get("FAKE_KUBECTL_UNREACHABLE"):
        sys.stderr.write("The connection to the server 10.0.0.1:6443 was refused\\n")
        sys.exit(1)
    minor = os.environ.get("FAKE_KUBECTL_MINOR", "30")
    print(json.dumps({{"serverVersion": {{"major": "1", "minor": minor + "+"}}}}))
elif "apply" in args:
    if os.environ.get("FAKE_KUBECTL_APPLY_FAILS"):
        sys.stderr.write('Error from server (Forbidden): customresourcedefinitions is forbidden\\n')
        sys.exit(1)
    print("namespace/trellis-system serverside-applied")
"""


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> Path:
    script = tmp_path / "fake_kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(0o755)
    return script


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FAKE_KUBECTL_LOG": str(tmp_path / "calls.jsonl"), **env}
    return subprocess.run(
        [*TRELLIS, "install", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_install_checks_the_cluster_then_applies_everything(
    tmp_path: Path, fake_kubectl: Path
) -> None:
    data = tmp_path / "data"
    done = run(
        ["--data-dir", str(data), "--kubectl", str(fake_kubectl), "--context", "kind-mesh"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "serverside-applied" in done.stdout
    version, apply = calls(tmp_path)
    assert version["args"] == [
        "--context", "kind-mesh", "--request-timeout", "10s", "version", "--output", "json",
    ]  # fmt: skip
    assert apply["args"] == [
        "--context", "kind-mesh", "--request-timeout", "10s",
        "apply", "--server-side", "--field-manager", "trellis-install", "--filename", "-",
    ]  # fmt: skip
    applied = list(yaml.safe_load_all(apply["stdin"]))
    kinds = [document["kind"] for document in applied]
    # The key never leaves the machine except into the cluster: applying includes the Secret.
    assert "Secret" in kinds and kinds[-1] == "MutatingWebhookConfiguration"
    rendered = run(["--render", "--data-dir", str(data), "--include-ca-secret"], tmp_path)
    assert rendered.stdout == apply["stdin"]
    assert "cacerts" not in done.stderr  # no advice to create what was just applied


def test_an_old_cluster_gets_a_warning(tmp_path: Path, fake_kubectl: Path) -> None:
    done = run(
        ["--data-dir", str(tmp_path / "d"), "--kubectl", str(fake_kubectl)],
        tmp_path,
        FAKE_KUBECTL_MINOR="27",
    )
    assert done.returncode == 0, done.stderr
    assert "Kubernetes 1.27" in done.stderr and "1.29" in done.stderr


def test_no_reachable_cluster_applies_nothing(tmp_path: Path, fake_kubectl: Path) -> None:
    done = run(
        ["--data-dir", str(tmp_path / "d"), "--kubectl", str(fake_kubectl)],
        tmp_path,
        FAKE_KUBECTL_UNREACHABLE="1",
    )
    assert done.returncode == 1
    assert "no Kubernetes cluster is reachable" in done.stderr
    assert "10.0.0.1:6443 was refused" in done.stderr
    assert [call["args"][-3] for call in calls(tmp_path)] == ["version"]


def test_a_failed_apply_is_reported(tmp_path: Path, fake_kubectl: Path) -> None:
    done = run(
        ["--data-dir", str(tmp_path / "d"), "--kubectl", str(fake_kubectl)],
        tmp_path,
        FAKE_KUBECTL_APPLY_FAILS="1",
    )
    assert done.returncode == 1
    assert "kubectl apply failed (exit status 1)" in done.stderr
    assert "forbidden" in done.stderr
    assert "BEGIN" not in done.stderr  # the manifests (and the CA key) are not echoed


def test_missing_kubectl_is_named(tmp_path: Path) -> None:
    done = run(["--data-dir", str(tmp_path / "d"), "--kubectl", str(tmp_path / "nope")], tmp_path)
    assert done.returncode == 1
    assert "--kubectl" in done.stderr and "--render" in done.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_real_kubectl_without_a_cluster(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "nobody", "user": {"token": "x"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "nobody"}}],
                "current-context": "gone",
            }
        )
    )
    done = run(["--data-dir", str(tmp_path / "d")], tmp_path, KUBECONFIG=str(kubeconfig))
    assert done.returncode == 1, done.stdout
    assert "no Kubernetes cluster is reachable" in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr
