"""`trellis install`: put the control plane on a Kubernetes cluster, or print its manifests.

The CA comes from one of two places. `--data-dir DIR`: the self-signed root in
`DIR/ca/` (created there on first use, exactly as `trellis control-plane
--data-dir DIR` would), whose key goes into the cluster as the `cacerts`
Secret; `--ca-bundle FILE`: the root of an operator's own CA, whose `cacerts`
Secret the operator creates. Only click is imported at module level.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from trellis import __version__

if TYPE_CHECKING:
    from trellis.kube.install import CaFiles

MIN_NATIVE_SIDECAR_VERSION = (1, 29)


@click.command("install")
@click.option(
    "--render", is_flag=True, help="Print the manifests (multi-document YAML) instead of applying."
)
@click.option(
    "--namespace",
    "-n",
    default="trellis-system",
    show_default=True,
    help="The control plane's namespace.",
)
@click.option(
    "--image",
    default=f"trellis:{__version__}",
    show_default=True,
    help="The Trellis image the control plane runs.",
)
@click.option(
    "--image-pull-policy",
    type=click.Choice(("Always", "IfNotPresent", "Never")),
    default="IfNotPresent",
    show_default=True,
)
@click.option("--replicas", type=int, default=2, show_default=True, help="Control-plane replicas.")
@click.option(
    "--revision",
    default="",
    metavar="NAME",
    help="Install a second control plane beside the default one (Istio's revisions): its "
    "objects are suffixed -NAME and it injects namespaces labelled trellis.io/rev=NAME.",
)
@click.option(
    "--trust-domain",
    default="cluster.local",
    show_default=True,
    help="SPIFFE trust domain of workload identities.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Use (or create) the self-signed CA root in DIR/ca and the REST API token in "
    "DIR/api-token, as `trellis control-plane --data-dir DIR` does; installing also creates "
    "the cacerts and trellis-api-token Secrets from them.",
)
@click.option(
    "--ca-bundle",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The root certificate(s) (PEM) of your own CA, which you put into the cacerts "
    "Secret yourself (Istio's plug-in CA layout).",
)
@click.option(
    "--include-ca-secret",
    is_flag=True,
    help="With --render and --data-dir: also print the cacerts Secret, which holds the CA's "
    "private key, and the trellis-api-token Secret (DATA_DIR/api-token).",
)
@click.option(
    "--kubectl",
    "kubectl_name",
    default="kubectl",
    show_default=True,
    metavar="PATH",
    help="The kubectl to apply with.",
)
@click.option("--context", default=None, help="The kubeconfig context to install into.")
def install(
    render: bool,
    namespace: str,
    image: str,
    image_pull_policy: str,
    replicas: int,
    revision: str,
    trust_domain: str,
    data_dir: Path | None,
    ca_bundle: Path | None,
    include_ca_secret: bool,
    kubectl_name: str,
    context: str | None,
) -> None:
    """Install Trellis on Kubernetes: CRDs, RBAC, the control plane and its webhook.

    Trellis defines Istio's CRDs (networking.istio.io, security.istio.io,
    telemetry.istio.io), so it cannot share a cluster with Istio.
    """
    from trellis.cli.kubectl import Kubectl, KubectlError  # noqa: PLC0415
    from trellis.controlplane.api_kinds import KINDS  # noqa: PLC0415
    from trellis.kube.install import render_manifests, render_yaml  # noqa: PLC0415
    from trellis.kube.install_settings import InstallError, InstallSettings  # noqa: PLC0415

    if include_ca_secret and not render:
        raise click.BadParameter("only with --render", param_hint="--include-ca-secret")
    if include_ca_secret and data_dir is None:
        raise click.BadParameter(
            "needs --data-dir (the CA key is there)", param_hint="--include-ca-secret"
        )
    bundle, ca_files = _certificate_authority(data_dir, ca_bundle, trust_domain)
    try:
        settings = InstallSettings(
            ca_bundle_pem=bundle,
            namespace=namespace,
            image=image,
            image_pull_policy=image_pull_policy,
            replicas=replicas,
            revision=revision,
            trust_domain=trust_domain,
        )
    except InstallError as exc:
        raise click.BadParameter(exc.reason, param_hint=exc.option) from None
    with_secrets = include_ca_secret or not render
    secret = ca_files if with_secrets else None
    token = _api_token(data_dir) if with_secrets and data_dir is not None else None
    manifests = render_manifests(settings, KINDS, secret, token)
    text = render_yaml(manifests, _header(settings.namespace))
    if render:
        click.echo(text, nl=False)
        _advise(settings.namespace, data_dir, ca_bundle, include_ca_secret)
        return
    try:
        kubectl = Kubectl.find(kubectl_name, context)
        version = kubectl.server_version()
        if version < MIN_NATIVE_SIDECAR_VERSION:
            click.echo(
                f"warning: the cluster runs Kubernetes {version[0]}.{version[1]}; native "
                "sidecars (the injector's default) need 1.29 or later",
                err=True,
            )
        click.echo(kubectl.apply(text), nl=False)
    except KubectlError as exc:
        raise click.ClickException(str(exc)) from None
    if ca_bundle is not None:
        _advise(settings.namespace, None, ca_bundle, False)


def _certificate_authority(
    data_dir: Path | None, ca_bundle: Path | None, trust_domain: str
) -> tuple[str, CaFiles | None]:
    """(the caBundle PEM, the CA's files for the Secret when its key is at hand)."""
    if data_dir is not None and ca_bundle is not None:
        raise click.UsageError("give --data-dir or --ca-bundle, not both")
    if ca_bundle is not None:
        return _read_bundle(ca_bundle), None
    if data_dir is None:
        raise click.UsageError(
            "the webhook needs the mesh CA's root: give --data-dir DIR (a CA root is created "
            "there, or the one there reused) or --ca-bundle FILE (your own CA's root)"
        )
    from trellis.controlplane.ca import CaError  # noqa: PLC0415
    from trellis.controlplane.ca_files import (  # noqa: PLC0415
        CA_DIR,
        CERT_FILE,
        KEY_FILE,
        load_or_create_root,
    )
    from trellis.kube.install import CaFiles  # noqa: PLC0415

    try:
        authority = load_or_create_root(
            data_dir, trust_domain=trust_domain, now=datetime.datetime.now(datetime.UTC)
        )
        cert_pem = (data_dir / CA_DIR / CERT_FILE).read_text("ascii")
        key_pem = (data_dir / CA_DIR / KEY_FILE).read_text("ascii")
    except (CaError, OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--data-dir") from None
    root = authority.root_bundle_pem
    return root, CaFiles(cert_pem=cert_pem, key_pem=key_pem, chain_pem=cert_pem, root_pem=root)


def _api_token(data_dir: Path) -> str:
    """The REST API token in DATA_DIR (created if missing), the one `trellis --token` sends."""
    from trellis.controlplane.api_auth import load_or_create_token  # noqa: PLC0415
    from trellis.errors import ConfigError  # noqa: PLC0415

    try:
        return load_or_create_token(data_dir)
    except (ConfigError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="--data-dir") from None


def _read_bundle(path: Path) -> str:
    from cryptography import x509  # noqa: PLC0415

    try:
        text = path.read_text("ascii")
        certificates = x509.load_pem_x509_certificates(text.encode("ascii"))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"{path}: not PEM certificates: {exc}", param_hint="--ca-bundle"
        ) from None
    for certificate in certificates:
        try:
            is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise click.BadParameter(
                f"{path}: {certificate.subject.rfc4514_string()} is not a CA certificate",
                param_hint="--ca-bundle",
            )
    return text


def _header(namespace: str) -> str:
    return (
        f"Trellis {__version__}: the control plane in namespace {namespace}.\n"
        "Trellis defines Istio's CRDs: do not install it in a cluster that runs Istio."
    )


def _advise(namespace: str, data_dir: Path | None, ca_bundle: Path | None, included: bool) -> None:
    if included:
        click.echo(
            f"warning: the output holds the CA's private key (Secret {namespace}/cacerts) "
            f"and the REST API token (Secret {namespace}/trellis-api-token); keep it out of "
            "version control and logs",
            err=True,
        )
        return
    if data_dir is not None:
        ca = data_dir / "ca"
        files = " ".join(
            f"--from-file={key}={ca / name}"
            for key, name in (
                ("ca-cert.pem", "ca-cert.pem"),
                ("ca-key.pem", "ca-key.pem"),
                ("cert-chain.pem", "ca-cert.pem"),
                ("root-cert.pem", "ca-cert.pem"),
            )
        )
        click.echo(
            f"note: the control plane reads its CA from the Secret {namespace}/cacerts: "
            f"kubectl create secret generic cacerts -n {namespace} {files} "
            "(or render it with --include-ca-secret)",
            err=True,
        )
    elif ca_bundle is not None:
        click.echo(
            f"note: the control plane reads its CA from the Secret {namespace}/cacerts "
            "(ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem, as Istio's plug-in CA); "
            f"its root must be the one in {ca_bundle}",
            err=True,
        )
