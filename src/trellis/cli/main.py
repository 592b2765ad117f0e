"""The `trellis` command."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from trellis import __version__
from trellis.cli.config_commands import analyze, apply, delete, get
from trellis.cli.controlplane_command import control_plane
from trellis.cli.join_token_command import join_token
from trellis.cli.proxy_commands import proxy_config, proxy_status

_LEVELS = ("debug", "info", "warning", "error", "critical")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trellis")
def cli() -> None:
    """Trellis: a service mesh written in Python."""


def _host_port(value: str | None, flag: str = "--xds") -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint=flag)
    return host.strip("[]"), int(port)


def _node(
    node_id: str | None, cluster: str | None, metadata: tuple[str, ...], labels: tuple[str, ...]
) -> dict[str, object]:
    node: dict[str, object] = {}
    if node_id:
        node["id"] = node_id
    if cluster:
        node["cluster"] = cluster
    meta: dict[str, object] = {}
    workload_labels: dict[str, str] = {}
    for flag, items in (("--metadata", metadata), ("--label", labels)):
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
            if flag == "--label":
                workload_labels[key] = value
            else:
                meta[key] = value
    if workload_labels:
        meta["LABELS"] = workload_labels
    if meta:
        node["metadata"] = meta
    return node


@cli.command()
@click.option(
    "--bootstrap",
    "-c",
    "bootstrap",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Envoy v3 Bootstrap (YAML or JSON). Required unless --xds is given.",
)
@click.option(
    "--xds",
    metavar="HOST:PORT",
    help="Take listeners and clusters from this control plane over ADS.",
)
@click.option("--node-id", help="The node id sent to the control plane.")
@click.option("--node-cluster", help="The node cluster (Envoy's service cluster).")
@click.option(
    "--metadata",
    multiple=True,
    metavar="KEY=VALUE",
    help="Node metadata, e.g. WORKLOAD_NAME=web NAMESPACE=shop SERVICE_ACCOUNT=web.",
)
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Workload label (LABELS).")
@click.option("--admin-port", type=click.IntRange(0, 65535), help="Admin port on 127.0.0.1.")
@click.option(
    "--ca-address",
    metavar="HOST:PORT",
    help="The CA's certificate service [default: the --xds address].",
)
@click.option(
    "--join-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TRELLIS_JOIN_TOKEN_FILE",
    help="Join token (from `trellis join-token`) to obtain the workload certificate with; "
    "read on every renewal. Or the token itself in TRELLIS_JOIN_TOKEN. "
    "[env: TRELLIS_JOIN_TOKEN_FILE]",
)
@click.option(
    "--drain-time-s",
    "drain_time",
    type=click.FloatRange(min=0),
    default=None,
    help="How long SIGTERM waits for in-flight requests "
    "[default: the longest HCM drain_timeout, 5s if none].",
)
@click.option("--log-level", "-l", type=click.Choice(_LEVELS), default="info", show_default=True)
def proxy(
    bootstrap: Path | None,
    xds: str | None,
    node_id: str | None,
    node_cluster: str | None,
    metadata: tuple[str, ...],
    label: tuple[str, ...],
    admin_port: int | None,
    ca_address: str | None,
    join_token_file: Path | None,
    drain_time: float | None,
    log_level: str,
) -> None:
    """Run the sidecar proxy from a bootstrap file and/or a control plane."""
    if bootstrap is None and xds is None:
        raise click.UsageError("give --bootstrap FILE, --xds HOST:PORT, or both")
    control_plane = _host_port(xds)
    ca = _host_port(ca_address, "--ca-address") or control_plane
    join_token = os.environ.get("TRELLIS_JOIN_TOKEN") if join_token_file is None else None
    if (join_token_file is not None or join_token) and ca is None:
        raise click.UsageError("a join token needs --ca-address HOST:PORT (or --xds)")
    node = _node(node_id, node_cluster, metadata, label)
    _configure_logging(log_level)
    from trellis.proxy.main import run  # noqa: PLC0415 - keep other commands' imports out of the proxy

    sys.exit(
        run(
            bootstrap,
            drain_time=drain_time,
            xds=control_plane,
            node=node,
            admin_port=admin_port,
            ca=ca,
            join_token_file=join_token_file,
            join_token=join_token,
        )
    )


cli.add_command(control_plane)
cli.add_command(apply)
cli.add_command(get)
cli.add_command(delete)
cli.add_command(analyze)
cli.add_command(proxy_status)
cli.add_command(proxy_config)
cli.add_command(join_token)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
