"""`trellis install --render`: the manifests, the CA they trust, and the errors for bad flags."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from trellis.cli.main import cli
from trellis.controlplane.ca import to_pem
from trellis.controlplane.ca_files import load_plugged, open_authority


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def install(*args: str) -> Result:
    return CliRunner().invoke(cli, ["install", *args])


def documents(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return list(yaml.safe_load_all(result.stdout))


def webhook_bundle(found: list[dict[str, Any]]) -> str:
    configuration = next(d for d in found if d["kind"] == "MutatingWebhookConfiguration")
    bundles = {hook["clientConfig"]["caBundle"] for hook in configuration["webhooks"]}
    assert len(bundles) == 1
    return base64.b64decode(bundles.pop()).decode()


def test_render_with_a_data_dir_trusts_the_root_the_control_plane_will_use(
    tmp_path: Path,
) -> None:
    result = install("--render", "--data-dir", str(tmp_path))
    found = documents(result)
    assert result.stdout.startswith("# Trellis ")
    assert "Istio" in result.stdout.splitlines()[1]
    kinds = [d["kind"] for d in found]
    assert kinds[0] == "Namespace" and kinds[-1] == "MutatingWebhookConfiguration"
    assert "Secret" not in kinds
    assert "kubectl create secret generic cacerts -n trellis-system" in result.stderr
    # `trellis control-plane --data-dir` on the same directory signs with this root.
    authority = open_authority(tmp_path, now=now())
    assert webhook_bundle(found) == authority.root_bundle_pem
    # Rendering again reuses the root: byte for byte the same output.
    assert install("--render", "--data-dir", str(tmp_path)).stdout == result.stdout


def test_the_rendered_ca_secret_is_what_the_control_plane_pod_loads(tmp_path: Path) -> None:
    result = install("--render", "--data-dir", str(tmp_path / "data"), "--include-ca-secret")
    found = documents(result)
    assert "warning: the output holds the CA's private key" in result.stderr
    secret = next(d for d in found if d["kind"] == "Secret")
    assert secret["metadata"] == {
        "name": "cacerts",
        "namespace": "trellis-system",
        "labels": secret["metadata"]["labels"],
    }
    mounted = tmp_path / "etc-cacerts"
    mounted.mkdir()
    for name, value in secret["data"].items():
        (mounted / name).write_bytes(base64.b64decode(value))
    # The Deployment's own flags, pointed at the files the Secret holds.
    deployment = next(d for d in found if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]

    def flag(name: str) -> Path:
        return mounted / Path(args[args.index(name) + 1]).name

    authority = load_plugged(flag("--ca-cert"), flag("--ca-key"), flag("--ca-chain"), now=now())
    assert authority.root_bundle_pem == webhook_bundle(found)
    assert (mounted / "root-cert.pem").read_text() == authority.root_bundle_pem


def _certificate(is_ca: bool) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now() - datetime.timedelta(days=1))
        .not_valid_after(now() + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    return to_pem(builder.sign(key, hashes.SHA256()))


def test_render_with_an_operator_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "root.pem"
    bundle.write_text(_certificate(is_ca=True))
    result = install("--render", "--ca-bundle", str(bundle), "--revision", "canary", "-n", "mesh")
    found = documents(result)
    assert webhook_bundle(found) == bundle.read_text()
    assert "Secret mesh/cacerts" in result.stderr
    deployment = next(d for d in found if d["kind"] == "Deployment")
    assert deployment["metadata"] == {**deployment["metadata"], "name": "trellis-canary"}
    assert deployment["metadata"]["namespace"] == "mesh"


def test_bad_flags_are_named(tmp_path: Path) -> None:
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(_certificate(is_ca=False))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    cases = [
        ((), "give --data-dir DIR"),
        (("--data-dir", str(tmp_path), "--ca-bundle", str(leaf)), "not both"),
        (("--ca-bundle", str(leaf)), "--ca-bundle"),
        (("--ca-bundle", str(garbage)), "not PEM certificates"),
        (("--data-dir", str(tmp_path), "--replicas", "0"), "--replicas"),
        (("--data-dir", str(tmp_path), "-n", "Not_A_Label"), "--namespace"),
        (("--data-dir", str(tmp_path), "--revision", "x.y"), "--revision"),
        (("--ca-bundle", str(leaf), "--include-ca-secret"), "--include-ca-secret"),
    ]
    for args, message in cases:
        result = install("--render", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    leaf_message = install("--render", "--ca-bundle", str(leaf)).stderr
    assert "is not a CA certificate" in leaf_message
    not_rendering = install("--data-dir", str(tmp_path), "--include-ca-secret")
    assert not_rendering.exit_code == 2 and "only with --render" in not_rendering.stderr
