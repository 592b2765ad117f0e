"""The `trellis` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from trellis import __version__

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


@cli.command()
@click.option(
    "--bootstrap",
    "-c",
    "bootstrap",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Envoy v3 Bootstrap (YAML or JSON).",
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
def proxy(bootstrap: Path, drain_time: float | None, log_level: str) -> None:
    """Run the sidecar proxy from a bootstrap file."""
    _configure_logging(log_level)
    from trellis.proxy.main import run  # noqa: PLC0415 - keep other commands' imports out of the proxy

    sys.exit(run(bootstrap, drain_time=drain_time))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
