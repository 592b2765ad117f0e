"""`trellis control-plane`: run the control plane on this machine (the local platform)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from trellis.cli.controlplane_settings import control_plane_settings, webhook_certificate_names
from trellis.cli.inject_command import injection_options, injection_settings, serve_beside_webhook
from trellis.cli.inject_command import webhook_address as parse_webhook_address

if TYPE_CHECKING:  # imported when the command runs: `trellis proxy` must not pay for them
    from trellis.controlplane.ads import AdsServer
    from trellis.controlplane.api_mesh import MeshInfo


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
@click.option(
    "--xds-socket",
    metavar="PATH",
    help="Also serve xDS and the CA on this Unix socket (mode 0600), which sidecars in other "
    "network namespaces reach as --xds unix:PATH; an empty string disables it. "
    "[default: DATA_DIR/xds.sock]",
)
@click.option(
    "--xds-tls-address",
    metavar="HOST:PORT",
    help="Also serve xDS and the CA over TLS here (15012 on Kubernetes), with a certificate "
    "from the mesh CA for --xds-tls-names, renewed in place. [default: not served]",
)
@click.option(
    "--xds-tls-names",
    metavar="NAME,...",
    help="The DNS names of the --xds-tls-address certificate (what sidecars dial). "
    "[default: trellis.trellis-system.svc,trellis.trellis-system.svc.cluster.local]",
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
    "--api-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Read the REST API token from FILE, one all replicas share (the install mounts the "
    "trellis-api-token Secret there); while FILE does not exist, DATA_DIR/api-token is used. "
    "[default: DATA_DIR/api-token]",
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
    "--tracing-otlp-address",
    metavar="HOST:PORT|unix:PATH|self",
    help="Every sidecar records spans and sends them over OTLP/gRPC to this collector "
    "(an IP address the sidecars reach: Jaeger or an OpenTelemetry collector; or `self`: "
    "this control plane, which keeps recent traces for the dashboard, reached on its xDS "
    "Unix socket, else its xDS address). Default: no tracing.",
)
@click.option(
    "--tracing-sampling",
    type=click.FloatRange(0, 100),
    default=1.0,
    show_default=True,
    metavar="PERCENT",
    help="Percentage of new traces the sidecars sample (Istio's mesh default is 1; the demo "
    "uses 100). An incoming trace's own decision is always honoured.",
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
    "--service-vip-range",
    default="240.240.0.0/16",
    show_default=True,
    metavar="CIDR",
    help="IPv4 block services' virtual IPs come from (transparent capture: service names "
    "resolve to them inside workload namespaces); kept across restarts in DATA_DIR.",
)
@click.option(
    "--scrape-interval",
    default="5s",
    show_default=True,
    metavar="DURATION",
    help="How often the dashboard's metrics are read from every connected proxy's "
    "/stats/prometheus (the last 15 minutes are kept in memory).",
)
@click.option(
    "--monitoring-address",
    metavar="HOST:PORT",
    help="Serve the control plane's own metrics (istiod's names: connected proxies, xDS "
    "pushes and rejections, certificates issued...) as GET /metrics here (0.0.0.0:15014 in a "
    "cluster). Default: not served.",
)
@click.option(
    "--webhook-address",
    metavar="HOST:PORT",
    help="Serve the Kubernetes sidecar injection webhook over HTTPS here (0.0.0.0:15017 in a "
    "cluster), with a certificate from the mesh CA; the --inject-* flags set what it adds "
    "(see `trellis inject --help`). Default: off (the local platform has no API server).",
)
@click.option(
    "--webhook-service",
    default="trellis-webhook.trellis-system",
    show_default=True,
    metavar="NAME.NAMESPACE",
    help="The Service the API server calls the webhook through: its serving certificate names "
    "NAME, NAME.NAMESPACE, NAME.NAMESPACE.svc and NAME.NAMESPACE.svc.cluster.local "
    "(`trellis install` passes its own).",
)
@injection_options("inject-")
@click.option(
    "--ca-authentication",
    type=click.Choice(("join-token", "token-review")),
    default="join-token",
    show_default=True,
    help="How the CA checks a proxy's credential: join tokens this control plane issued "
    "(local platform), or Kubernetes TokenReview of the pod's projected service-account token "
    "(audience trellis-ca), with the in-cluster service account or the file in $KUBECONFIG.",
)
@click.option(
    "--leader-lease",
    metavar="NAME",
    help="Elect a leader among the replicas with this coordination.k8s.io Lease in "
    "$POD_NAMESPACE, as $POD_NAME (needs --ca-authentication token-review; the install "
    "uses trellis-leader). Default: no election.",
)
@click.option(
    "--platform",
    type=click.Choice(("local", "kubernetes")),
    default="local",
    show_default=True,
    help="local: config in SQLite under DATA_DIR, services as ServiceEntries and "
    "WorkloadEntries. kubernetes: config in the Istio CRDs, the registry from Services, "
    "EndpointSlices and Pods (the CRDs must be installed: `trellis install`).",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="--platform kubernetes: the cluster of this kubeconfig's current context "
    "[default: $KUBECONFIG, else the in-cluster service account].",
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
    xds_socket: str | None,
    xds_tls_address: str | None,
    xds_tls_names: str | None,
    api_host: str,
    api_port: int,
    api_token_file: Path | None,
    debounce: float,
    trust_domain: str,
    cert_ttl: str,
    ca_cert: Path | None,
    ca_key: Path | None,
    ca_chain: Path | None,
    access_log_file: str | None,
    access_log_encoding: str,
    tracing_otlp_address: str | None,
    tracing_sampling: float,
    orphan_grace: str,
    service_vip_range: str,
    scrape_interval: str,
    monitoring_address: str | None,
    webhook_address: str | None,
    webhook_service: str,
    ca_authentication: str,
    leader_lease: str | None,
    platform: str,
    kubeconfig: Path | None,
    log_level: str,
) -> None:
    """Serve mesh config over xDS, certificates to proxies, and the REST API, from a durable
    store in DATA_DIR."""
    import logging  # noqa: PLC0415 - the proxy command must not pay for these imports

    import uvloop  # noqa: PLC0415

    from trellis.controlplane.api import create_app, serve_api  # noqa: PLC0415
    from trellis.controlplane.api_auth import api_token  # noqa: PLC0415
    from trellis.controlplane.main import ControlPlane, serve  # noqa: PLC0415
    from trellis.controlplane.store import ConfigStore  # noqa: PLC0415
    from trellis.errors import TrellisError  # noqa: PLC0415

    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = control_plane_settings(
        data_dir=data_dir,
        xds_address=xds_address,
        xds_socket=xds_socket,
        xds_tls_address=xds_tls_address,
        xds_tls_names=xds_tls_names,
        api_host=api_host,
        api_port=api_port,
        debounce=debounce,
        trust_domain=trust_domain,
        cert_ttl=cert_ttl,
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_chain=ca_chain,
        access_log_file=access_log_file,
        access_log_encoding=access_log_encoding,
        tracing_otlp_address=tracing_otlp_address,
        tracing_sampling=tracing_sampling,
        orphan_grace=orphan_grace,
        service_vip_range=service_vip_range,
        scrape_interval=scrape_interval,
        monitoring_address=monitoring_address,
        ca_authentication=ca_authentication,
        leader_lease=leader_lease,
        platform=platform,
        kubeconfig=kubeconfig,
    )
    webhook = parse_webhook_address(webhook_address)
    webhook_names = webhook_certificate_names(webhook_service)
    injection = injection_settings()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = api_token(data_dir, api_token_file)

    async def api(store: ConfigStore, plane: ControlPlane) -> None:
        ads = plane.ads
        app = create_app(
            store,
            token=token,
            ads_status=ads.service.status if ads is not None else None,
            proxy_admin=plane.admin_address,
            join_tokens=plane.join_tokens,
            trust_domain=trust_domain,
            mesh=_mesh_info(trust_domain, xds_address, ads),
            service_addresses=plane.service_addresses,
            metrics=plane.metrics,
            traces=plane.traces,
            registry=plane.registry,
        )
        await serve_beside_webhook(
            serve_api(app, api_host, api_port), plane.ca, injection, webhook, webhook_names
        )

    # The control plane holds a large, long-lived heap (parsed config, shared xDS
    # resources, one stream per proxy); with the default thresholds full
    # collections ran during pushes to 1000 proxies, costing seconds (py-spy).
    gc.set_threshold(50_000, 20, 100)
    try:
        sys.exit(uvloop.run(serve(settings, api)))
    except* (TrellisError, OSError, RuntimeError) as group:
        for problem in _leaves(group):
            click.echo(f"trellis control-plane: cannot start: {problem}", err=True)
        sys.exit(1)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions of a group and of the groups nested in it (servers run in task groups)."""
    found: list[BaseException] = []
    for problem in group.exceptions:
        found += _leaves(problem) if isinstance(problem, BaseExceptionGroup) else [problem]
    return found


def _mesh_info(trust_domain: str, xds_address: str, ads: AdsServer | None) -> MeshInfo:
    """`GET /api/v1/mesh`: the port the xDS server really bound (--xds-address may say 0)."""
    from trellis.api.policy_selector import ROOT_NAMESPACES  # noqa: PLC0415
    from trellis.controlplane.api_mesh import MeshInfo  # noqa: PLC0415

    if ads is None:
        return MeshInfo(
            trust_domain=trust_domain, root_namespace=ROOT_NAMESPACES[0], xds_address=xds_address
        )
    host, _, _ = xds_address.rpartition(":")
    socket_path = ads.socket_path
    return MeshInfo(
        trust_domain=trust_domain,
        root_namespace=ROOT_NAMESPACES[0],
        xds_address=f"{host}:{ads.port}",
        xds_socket=str(socket_path) if socket_path is not None else None,
    )
