"""The `trellis` command."""

from __future__ import annotations

import click

from trellis import __version__
from trellis.cli.config_commands import analyze, apply, delete, get
from trellis.cli.controlplane_command import control_plane
from trellis.cli.inject_command import inject
from trellis.cli.install_command import install
from trellis.cli.iptables_command import iptables
from trellis.cli.join_token_command import join_token
from trellis.cli.proxy_commands import proxy_config, proxy_status
from trellis.cli.run_command import run
from trellis.cli.top_command import dashboard, top


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trellis")
def cli() -> None:
    """Trellis: a service mesh written in Python."""


@cli.command(
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def proxy(args: tuple[str, ...]) -> None:
    """Run the sidecar proxy from a bootstrap file and/or a control plane."""
    # One parser for `trellis proxy`, without click: see trellis.proxy.cli.
    from trellis.cli.entry import run_proxy  # noqa: PLC0415

    run_proxy(args)


cli.add_command(control_plane)
cli.add_command(apply)
cli.add_command(get)
cli.add_command(delete)
cli.add_command(analyze)
cli.add_command(proxy_status)
cli.add_command(proxy_config)
cli.add_command(join_token)
cli.add_command(run)
cli.add_command(install)
cli.add_command(inject)
cli.add_command(iptables)
cli.add_command(top)
cli.add_command(dashboard)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
