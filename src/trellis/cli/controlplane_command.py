"""`trellis control-plane`: run the control plane on this machine (the local platform)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import click


@click.command("control-plane")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the config database, the API token, the CA's self-signed root and the "
    "join token key live (created if missing).",
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
    "--trust-domain",
    default="cluster.local",
    show_default=True,
    help="SPIFFE trust domain of workload identities (spiffe://DOMAIN/ns/NS/sa/SA).",
)
@click.option(
    "--cert-ttl",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="Lifetime of workload certificates, and the most a proxy may ask for "
    "(Go syntax: 24h, 30m, 5s).",
)
@click.option(
    "--ca-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Plug-in CA: the signing certificate (PEM), root or intermediate. "
    "Default: a self-signed root created in DATA_DIR/ca.",
)
@click.option(
    "--ca-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Plug-in CA: the signing certificate's private key (unencrypted PEM).",
)
@click.option(
    "--ca-chain",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Plug-in CA: the certificates from the signing certificate's issuer up to the root "
    "(PEM, like Istio's cert-chain.pem).",
)
@click.option(
    "--access-log-file",
    metavar="PATH",
    help="Every sidecar logs each request and TCP connection here (Istio's "
    "meshConfig.accessLogFile; /dev/stdout for its standard output). Default: no access log.",
)
@click.option(
    "--access-log-encoding",
    type=click.Choice(("json", "text")),
    default="json",
    show_default=True,
    help="JSON lines with Istio's fields plus peer identities and the authorization decision, "
    "or Envoy's default text format.",
)
@click.option(
    "--orphan-grace",
    default="60s",
    show_default=True,
    metavar="DURATION",
    help="Remove a `trellis run` workload's registration when its sidecar has been "
    "disconnected this long (its launcher died without deregistering).",
)
@click.option(
    "--log-level",
    "-l",
    type=click.Choice(("debug", "info", "warning", "error")),
    default="info",
    show_default=True,
)
def control_plane(
    data_dir: Path,
    xds_address: str,
    api_host: str,
    api_port: int,
    debounce: float,
    trust_domain: str,
    cert_ttl: str,
    ca_cert: Path | None,
    ca_key: Path | None,
    ca_chain: Path | None,
    access_log_file: str | None,
    access_log_encoding: str,
    orphan_grace: str,
    log_level: str,
) -> None:
    """Serve mesh config over xDS, certificates to proxies, and the REST API, from a durable
    store in DATA_DIR."""
    import logging  # noqa: PLC0415 - the proxy command must not pay for these imports

    import uvloop  # noqa: PLC0415

    from trellis.api.duration import DurationSyntaxError, parse_duration  # noqa: PLC0415
    from trellis.controlplane.api import create_app, serve_api  # noqa: PLC0415
    from trellis.controlplane.api_auth import load_or_create_token  # noqa: PLC0415
    from trellis.controlplane.ca import check_trust_domain  # noqa: PLC0415
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
    try:
        ttl = parse_duration(cert_ttl)
    except DurationSyntaxError as exc:
        raise click.BadParameter(str(exc), param_hint="--cert-ttl") from None
    if ttl < 1:
        raise click.BadParameter("must be at least 1s", param_hint="--cert-ttl")
    try:
        grace = parse_duration(orphan_grace)
    except DurationSyntaxError as exc:
        raise click.BadParameter(str(exc), param_hint="--orphan-grace") from None
    if grace < 1:
        raise click.BadParameter("must be at least 1s", param_hint="--orphan-grace")
    try:
        check_trust_domain(trust_domain)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trust-domain") from None
    settings = ControlPlaneSettings(
        data_dir,
        xds_address,
        api_host,
        api_port,
        debounce,
        trust_domain=trust_domain,
        cert_ttl=ttl,
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_chain=ca_chain,
        access_log_file=access_log_file or None,
        access_log_json=access_log_encoding == "json",
        orphan_grace=grace,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    token = load_or_create_token(data_dir)

    async def api(store: ConfigStore, plane: ControlPlane) -> None:
        ads = plane.ads
        app = create_app(
            store,
            token=token,
            ads_status=ads.service.status if ads is not None else None,
            proxy_admin=plane.admin_address,
            join_tokens=plane.join_tokens,
            trust_domain=trust_domain,
        )
        await serve_api(app, api_host, api_port)

    # The control plane holds a large, long-lived heap (parsed config, shared xDS
    # resources, one stream per proxy); with the default thresholds full
    # collections ran during pushes to 1000 proxies, costing seconds (py-spy).
    gc.set_threshold(50_000, 20, 100)
    try:
        sys.exit(uvloop.run(serve(settings, api)))
    except* (TrellisError, OSError, RuntimeError) as group:
        for problem in group.exceptions:
            click.echo(f"trellis control-plane: cannot start: {problem}", err=True)
        sys.exit(1)
