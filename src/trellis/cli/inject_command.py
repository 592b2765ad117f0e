"""`trellis inject -f FILE`: add the sidecar to workload manifests offline.

Like `istioctl kube-inject`: reads multi-document YAML (or JSON), injects
every Pod and pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet,
Job, CronJob), passes other kinds through, and prints the result. It injects
regardless of namespace labels; a pod's `sidecar.trellis.io/inject: "false"`
still opts it out. The injection settings are flags here and, prefixed with
`--inject-`, on `trellis control-plane` for the webhook (`injection_options`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from trellis.controlplane.ca import CertificateAuthority
    from trellis.kube.settings import InjectionSettings

F = TypeVar("F", bound=Callable[..., Any])

_META_KEY = "trellis.injection"
_FIELDS = {
    "image": "image",
    "control-plane": "control_plane",
    "native-sidecar": "native_sidecar",
    "cni": "cni",
    "image-pull-policy": "image_pull_policy",
    "proxy-log-level": "log_level",
}


def _remember(field: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(context: click.Context, parameter: click.Parameter, value: Any) -> Any:
        options = context.meta.setdefault(_META_KEY, {})
        options[field] = (value, parameter.opts[0])
        return value

    return callback


def injection_options(prefix: str = "") -> Callable[[F], F]:
    """Add the injection settings as flags `--{prefix}image`, ... (read them with
    `injection_settings()`); they do not become parameters of the command."""
    from trellis.kube.settings import DEFAULT_CONTROL_PLANE, DEFAULT_IMAGE  # noqa: PLC0415

    def option(name: str, **kwargs: Any) -> Callable[[F], F]:
        return click.option(
            f"--{prefix}{name}",
            expose_value=False,
            callback=_remember(_FIELDS[name]),
            show_default=True,
            **kwargs,
        )

    def decorate(command: F) -> F:
        for add in reversed(
            (
                option("image", default=DEFAULT_IMAGE, help="The Trellis image of the sidecar."),
                option(
                    "control-plane",
                    default=DEFAULT_CONTROL_PLANE,
                    metavar="HOST:PORT",
                    help="The control plane's xDS and CA address over TLS, as pods reach it "
                    "(HOST must be a name on its certificate; the proxy trusts the root in "
                    "the namespace's trellis-ca-root-cert ConfigMap).",
                ),
                click.option(
                    f"--{prefix}native-sidecar/--{prefix}no-native-sidecar",
                    default=True,
                    show_default=True,
                    expose_value=False,
                    callback=_remember("native_sidecar"),
                    help="The proxy as a native sidecar (init container with restartPolicy "
                    "Always, Kubernetes >= 1.29), or a regular container for older clusters.",
                ),
                click.option(
                    f"--{prefix}cni",
                    is_flag=True,
                    expose_value=False,
                    callback=_remember("cni"),
                    help="A CNI plugin installs the capture rules: no trellis-init container.",
                ),
                option(
                    "image-pull-policy",
                    default="IfNotPresent",
                    type=click.Choice(("Always", "IfNotPresent", "Never")),
                    help="The injected containers' imagePullPolicy.",
                ),
                option(
                    "proxy-log-level",
                    default="info",
                    type=click.Choice(("debug", "info", "warning", "error", "critical")),
                    help="The sidecar's --log-level.",
                ),
            )
        ):
            command = add(command)
        return command

    return decorate


def injection_settings() -> InjectionSettings:
    """The settings the current command's injection flags give; BadParameter names the flag."""
    from trellis.kube.settings import InjectionError, InjectionSettings  # noqa: PLC0415

    options: dict[str, tuple[Any, str]] = click.get_current_context().meta.get(_META_KEY, {})
    values = {field: value for field, (value, _) in options.items()}
    try:
        return InjectionSettings(**values)
    except InjectionError as exc:
        field = str(exc).partition(":")[0]
        flag = options[field][1] if field in options else None
        raise click.BadParameter(str(exc).partition(": ")[2] or str(exc), param_hint=flag) from None


@click.command()
@click.option(
    "-f",
    "--filename",
    required=True,
    metavar="FILE",
    help="Kubernetes YAML or JSON (several documents allowed), or - for stdin.",
)
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Write the injected manifests here instead of standard output.",
)
@injection_options()
def inject(filename: str, output: str | None) -> None:
    """Add the Trellis sidecar to the Pods and workloads in a manifest and print it.

    Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and
    Pods are injected (unless labelled or annotated sidecar.trellis.io/inject:
    "false"); other kinds pass through unchanged. Injecting an injected
    manifest changes nothing.
    """
    import yaml  # noqa: PLC0415

    from trellis.kube.settings import InjectionError  # noqa: PLC0415
    from trellis.kube.workload import inject_document  # noqa: PLC0415

    settings = injection_settings()
    text = _read(filename)
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{filename}: not YAML: {exc}") from None
    injected: list[Any] = []
    try:
        for index, document in enumerate(documents):
            if not isinstance(document, dict):
                raise click.ClickException(
                    f"{filename}: document {index + 1} is not a Kubernetes object"
                )
            injected.append(_inject_object(document, settings, inject_document))
    except InjectionError as exc:
        raise click.ClickException(f"{filename}: {exc}") from None
    rendered = yaml.safe_dump_all(injected, sort_keys=False, default_flow_style=False)
    if output is None:
        click.echo(rendered, nl=False)
    else:
        with click.open_file(output, "w") as stream:
            stream.write(rendered)


def _inject_object(
    document: dict[str, Any],
    settings: InjectionSettings,
    inject_document: Callable[..., tuple[dict[str, Any], object]],
) -> dict[str, Any]:
    """One document injected; a `List` (what `kubectl get -o yaml` prints) item by item."""
    if document.get("kind") == "List" and isinstance(document.get("items"), list):
        items = [
            _inject_object(item, settings, inject_document) if isinstance(item, dict) else item
            for item in document["items"]
        ]
        return {**document, "items": items}
    result, _ = inject_document(document, settings)
    return result


def _read(filename: str) -> str:
    if filename == "-":
        return sys.stdin.read()
    try:
        with open(filename, encoding="utf-8") as stream:
            return stream.read()
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {filename}: {exc.strerror or exc}", param_hint="-f"
        ) from None


def webhook_address(value: str | None) -> tuple[str, int] | None:
    """`--webhook-address HOST:PORT` as a pair (None: no webhook); BadParameter otherwise."""
    from trellis.cli.controlplane_settings import host_port  # noqa: PLC0415

    return host_port(value, "--webhook-address")


async def serve_beside_webhook(
    main: Coroutine[Any, Any, None],
    ca: CertificateAuthority | None,
    settings: InjectionSettings,
    address: tuple[str, int] | None,
    dns_names: Sequence[str] = (),
) -> None:
    """Run `main` (the REST API) and, when `address` is given, the injection webhook.

    `dns_names` are what the webhook's certificate names (empty: the default Service's).
    """
    if address is None:
        await main
        return
    import asyncio  # noqa: PLC0415

    from trellis.controlplane.webhook import serve_webhook  # noqa: PLC0415
    from trellis.kube.webhook_config import webhook_dns_names  # noqa: PLC0415

    assert ca is not None, "the CA is opened before the API starts"
    webhook = serve_webhook(ca, settings, *address, dns_names=dns_names or webhook_dns_names())
    async with asyncio.TaskGroup() as group:
        group.create_task(main, name="rest api")
        group.create_task(webhook, name="injection webhook")
