"""`trellis run`: start an application with its sidecar injected (the local platform).

Only click is imported at module level; the launcher (`trellis.platform`) is
imported when the command runs, so `trellis proxy` never loads it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from trellis.cli.options import server_options
from trellis.proxy.cli import control_plane_address

XDS_PORT = 15010


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--label")
        labels[key] = value
    return labels


def _default_xds(server: str) -> str:
    """The control plane's default xDS port on the API's host."""
    host = urlsplit(server if "://" in server else f"http://{server}").hostname or "127.0.0.1"
    return f"[{host}]:{XDS_PORT}" if ":" in host else f"{host}:{XDS_PORT}"


def _check_xds(value: str) -> str:
    try:
        address = control_plane_address(value, "--xds")
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--xds: "), param_hint="--xds") from None
    return f"unix:{address}" if value.startswith("unix:") else value


@click.command(
    "run",
    context_settings={"allow_interspersed_args": False},
    epilog="Example: trellis run --name web --port 8000 -- python3 -m http.server 8000",
)
@click.option("--name", required=True, help="The workload's name (its WorkloadEntry).")
@click.option(
    "--namespace", "-n", default="default", show_default=True, help="The workload's namespace."
)
@click.option("--service", default=None, help="The service it serves (label app) [default: NAME].")
@click.option("--version", "version", default=None, help="Its version label, e.g. v1.")
@click.option(
    "--service-account",
    default=None,
    help="Its identity: spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT [default: NAME].",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="The port the application listens on (127.0.0.1), also given to it as PORT "
    "[default: a free port; 8080 with --capture transparent].",
)
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Another workload label.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="The port (127.0.0.1) where the application serves Prometheus metrics: the "
    "sidecar's /stats/prometheus then includes them (Istio's metrics merging).",
)
@click.option(
    "--metrics-path",
    default="/metrics",
    show_default=True,
    help="The path of the application's metrics (with --metrics-port).",
)
@click.option(
    "--capture",
    type=click.Choice(["explicit", "transparent"]),
    default="explicit",
    show_default=True,
    help="explicit: the application gets HTTP_PROXY. transparent (root on Linux): it runs "
    "in a network namespace of its own, where iptables sends its TCP to the sidecar and "
    "service names resolve to virtual IPs.",
)
@click.option(
    "--xds",
    envvar="TRELLIS_XDS_ADDRESS",
    default=None,
    metavar="HOST:PORT|unix:PATH",
    help="The control plane's xDS address [env: TRELLIS_XDS_ADDRESS; default: the --server "
    "host, port 15010; with --capture transparent the control plane's Unix socket].",
)
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the sidecar may take to be ready.",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="When the launcher stops the application: SIGTERM, then SIGKILL after this.",
)
@click.option(
    "--drain-time",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the sidecar drains after the application exited.",
)
@click.option(
    "--sidecar-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append the sidecar's log to this file [default: a file removed at exit].",
)
@click.option(
    "--sidecar-log-level",
    type=click.Choice(("debug", "info", "warning", "error")),
    default="info",
    show_default=True,
)
@click.option(
    "--log-level",
    "-l",
    type=click.Choice(("debug", "info", "warning", "error")),
    default="info",
    show_default=True,
    help="The launcher's own log (stderr).",
)
@server_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    name: str,
    namespace: str,
    service: str | None,
    version: str | None,
    service_account: str | None,
    port: int | None,
    label: tuple[str, ...],
    metrics_port: int | None,
    metrics_path: str,
    capture: str,
    xds: str | None,
    ready_timeout: float,
    stop_timeout: float,
    drain_time: float,
    sidecar_log: Path | None,
    sidecar_log_level: str,
    log_level: str,
    server: str,
    token: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with a sidecar injected: register it, start its proxy, then COMMAND.

    The application gets HTTP_PROXY (its sidecar), NO_PROXY (loopback) and PORT, or
    with --capture transparent a network namespace where its TCP goes to the sidecar;
    peers reach it as http://SERVICE/ through their own sidecars, over mTLS.
    Exits with the application's status, 125 when the launch failed.
    """
    import logging  # noqa: PLC0415 - keep `trellis proxy` lean

    from trellis.errors import ConfigError  # noqa: PLC0415
    from trellis.platform.launch_settings import LaunchSettings  # noqa: PLC0415
    from trellis.platform.launcher import run as launch  # noqa: PLC0415
    from trellis.platform.spec import WorkloadSpec  # noqa: PLC0415

    try:
        spec = WorkloadSpec(
            name=name,
            namespace=namespace,
            service=service or "",
            version=version or "",
            service_account=service_account or "",
            app_port=port,
            extra_labels=_labels(label),
            metrics_port=metrics_port,
            metrics_path=metrics_path,
        )
    except ConfigError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint=exc.path) from None
    settings = LaunchSettings(
        workload=spec,
        command=command,
        server=server,
        token=token,
        xds=_check_xds(xds) if xds else _default_xds(server),
        ready_timeout=ready_timeout,
        stop_timeout=stop_timeout,
        drain_time=drain_time,
        sidecar_log=sidecar_log,
        sidecar_log_level=sidecar_log_level,
        capture=capture,
    )
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call otherwise
    sys.exit(launch(settings))
