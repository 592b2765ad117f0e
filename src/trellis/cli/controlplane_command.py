"""`trellis control-plane`: run the control plane on this machine (the local platform)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("control-plane")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the config database and the API token live (created if missing).",
)
@click.option(
    "--xds-address",
    default="127.0.0.1:15010",
    show_default=True,
    metavar="HOST:PORT",
    help="The xDS (ADS) gRPC address proxies connect to.",
)
@click.option("--api-host", default="127.0.0.1", show_default=True, help="REST API address.")
@click.option(
    "--api-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="REST API port.",
)
@click.option(
    "--debounce",
    type=click.FloatRange(min=0, max=5),
    default=0.1,
    show_default=True,
    help="Seconds to wait for a burst of config changes to settle before pushing.",
)
@click.option(
    "--log-level",
    "-l",
    type=click.Choice(("debug", "info", "warning", "error")),
    default="info",
    show_default=True,
)
def control_plane(
    data_dir: Path, xds_address: str, api_host: str, api_port: int, debounce: float, log_level: str
) -> None:
    """Serve mesh config over xDS and the REST API, from a durable store in DATA_DIR."""
    import logging  # noqa: PLC0415 - the proxy command must not pay for these imports

    import uvloop  # noqa: PLC0415

    from trellis.controlplane.api import create_app, serve_api  # noqa: PLC0415
    from trellis.controlplane.api_auth import load_or_create_token  # noqa: PLC0415
    from trellis.controlplane.main import (  # noqa: PLC0415
        ControlPlane,
        ControlPlaneSettings,
        serve,
    )
    from trellis.controlplane.store import ConfigStore  # noqa: PLC0415
    from trellis.errors import TrellisError  # noqa: PLC0415

    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = ControlPlaneSettings(data_dir, xds_address, api_host, api_port, debounce)
    data_dir.mkdir(parents=True, exist_ok=True)
    token = load_or_create_token(data_dir)

    async def api(store: ConfigStore, plane: ControlPlane) -> None:
        ads = plane.ads
        app = create_app(
            store,
            token=token,
            ads_status=ads.service.status if ads is not None else None,
            proxy_admin=plane.admin_address,
        )
        await serve_api(app, api_host, api_port)

    try:
        sys.exit(uvloop.run(serve(settings, api)))
    except* (TrellisError, OSError, RuntimeError) as group:
        for problem in group.exceptions:
            click.echo(f"trellis control-plane: cannot start: {problem}", err=True)
        sys.exit(1)
