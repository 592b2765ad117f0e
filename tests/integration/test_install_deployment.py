"""The rendered Deployment's command really starts a control plane, and the rendered
MutatingWebhookConfiguration's caBundle verifies that control plane's webhook.

The container's arguments are run as they are, with only what the pod provides
replaced: the `cacerts` Secret's mount becomes a directory holding the rendered
Secret's files, the emptyDir data directory a temporary one, and 0.0.0.0 with
Kubernetes' fixed ports becomes 127.0.0.1 with free ones.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from click.testing import CliRunner

from trellis.cli.main import cli

from .bootstrap import free_port

WEBHOOK_HOST = "trellis-webhook.trellis-system.svc"


def rendered(data_dir: Path) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        cli, ["install", "--render", "--data-dir", str(data_dir), "--include-ca-secret"]
    )
    assert result.exit_code == 0, result.output
    return list(yaml.safe_load_all(result.stdout))


def pod_args(found: list[dict[str, Any]], root: Path) -> tuple[list[str], dict[str, int]]:
    """The container's args as this machine can run them, and the ports chosen."""
    deployment = next(d for d in found if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secret = next(d for d in found if d["kind"] == "Secret")
    cacerts = root / "cacerts"
    cacerts.mkdir()
    for name, value in secret["data"].items():
        (cacerts / name).write_bytes(base64.b64decode(value))
    ports = {p["name"]: free_port() for p in container["ports"]}
    declared = {str(p["containerPort"]): ports[p["name"]] for p in container["ports"]}

    def local(arg: str) -> str:
        path = arg.replace(mounts["cacerts"], str(cacerts))
        path = path.replace(mounts["data"], str(root / "data"))
        if path.startswith("0.0.0.0:"):
            return f"127.0.0.1:{declared[path.split(':')[1]]}"
        if path == "0.0.0.0":
            return "127.0.0.1"
        return str(declared.get(path, path))

    assert container["command"] == ["trellis"]
    return [local(arg) for arg in container["args"]], ports


@contextlib.contextmanager
def running(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "trellis.cli.main", *args],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def until_ok(get: Any, what: str, log: Path, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response: httpx.Response = get()
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if response.status_code == 200:
            return response
        time.sleep(0.2)
    raise AssertionError(f"{what} never answered 200\n{log.read_text()[-3000:]}")


def test_the_deployment_starts_a_control_plane_the_webhook_configuration_trusts(
    tmp_path: Path,
) -> None:
    found = rendered(tmp_path / "install")
    args, ports = pod_args(found, tmp_path)
    assert args[0] == "control-plane"
    configuration = next(d for d in found if d["kind"] == "MutatingWebhookConfiguration")
    bundle = base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"]).decode()
    service = configuration["webhooks"][0]["clientConfig"]["service"]
    assert f"{service['name']}.{service['namespace']}.svc" == WEBHOOK_HOST
    log = tmp_path / "control-plane.log"
    with running(args, log) as process:
        api = f"http://127.0.0.1:{ports['http-api']}"
        until_ok(lambda: httpx.get(f"{api}/healthz", timeout=2), "the API's /healthz", log)
        # As the API server calls the webhook: trusting only the caBundle, checking the
        # certificate for the Service's name.
        trust = ssl.create_default_context(cadata=bundle)
        with httpx.Client(verify=trust, timeout=5) as client:
            reply = until_ok(
                lambda: client.get(
                    f"https://127.0.0.1:{ports['https-webhook']}/healthz",
                    extensions={"sni_hostname": WEBHOOK_HOST},
                ),
                "the webhook",
                log,
            )
        assert reply.status_code == 200
        assert process.poll() is None
