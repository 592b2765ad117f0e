"""tests/e2e-k8s/run.sh is not run here (it needs a kind or k3d cluster), but it must parse
(`bash -n`), pass shellcheck when that is installed, and its sample apps must be valid YAML."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

E2E = Path(__file__).resolve().parents[1] / "e2e-k8s"


def test_the_script_parses() -> None:
    done = subprocess.run(
        ["bash", "-n", str(E2E / "run.sh")], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(
        [shellcheck, str(E2E / "run.sh")], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout


def test_the_sample_apps_are_two_deployments_with_their_own_accounts() -> None:
    documents = list(yaml.safe_load_all((E2E / "apps.yaml").read_text()))
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in documents)
    assert kinds == [
        ("Deployment", "client"),
        ("Deployment", "echo"),
        ("Service", "echo"),
        ("ServiceAccount", "client"),
        ("ServiceAccount", "echo"),
    ]
