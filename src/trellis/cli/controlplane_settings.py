"""`trellis control-plane`'s flags as `ControlPlaneSettings`: parsed and checked, a bad
value rejected with the flag's name (`click.BadParameter`).

Only click is imported at module level, like the command itself: what checks
the flags is imported when the command runs, so `trellis proxy` never loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from trellis.controlplane.kube_ca import KubeIdentitySettings
    from trellis.controlplane.main import ControlPlaneSettings
    from trellis.controlplane.xds_tls import XdsTlsSettings

SELF_COLLECTOR = "self"
"""`--tracing-otlp-address self`: the control plane's own OTLP receiver."""


def control_plane_settings(
    *,
    data_dir: Path,
    xds_address: str,
    xds_socket: str | None,
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
    tracing_otlp_address: str | None,
    tracing_sampling: float,
    orphan_grace: str,
    service_vip_range: str,
    scrape_interval: str,
    ca_authentication: str,
    leader_lease: str | None,
    platform: str,
    kubeconfig: Path | None,
    xds_tls_address: str | None = None,
    xds_tls_names: str | None = None,
    monitoring_address: str | None = None,
) -> ControlPlaneSettings:
    """The command's flags (by their parameter names) as the control plane's settings."""
    from trellis.api.duration import DurationSyntaxError, parse_duration  # noqa: PLC0415
    from trellis.controlplane.ca import check_trust_domain  # noqa: PLC0415
    from trellis.controlplane.main import ControlPlaneSettings  # noqa: PLC0415
    from trellis.errors import TrellisError  # noqa: PLC0415
    from trellis.xds.mesh.tracing import MeshTracing  # noqa: PLC0415
    from trellis.xds.mesh.vips import VipRange  # noqa: PLC0415

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
        scrape_every = parse_duration(scrape_interval)
    except DurationSyntaxError as exc:
        raise click.BadParameter(str(exc), param_hint="--scrape-interval") from None
    if not 0.5 <= scrape_every <= 300:
        raise click.BadParameter("must be between 500ms and 5m", param_hint="--scrape-interval")
    try:
        check_trust_domain(trust_domain)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trust-domain") from None
    tracing = None
    socket = _xds_socket(xds_socket, data_dir)
    if tracing_otlp_address == SELF_COLLECTOR:
        tracing_otlp_address = f"unix:{socket}" if socket is not None else xds_address
    if tracing_otlp_address:
        try:
            tracing = MeshTracing.parse(tracing_otlp_address, tracing_sampling)
        except TrellisError as exc:
            raise click.BadParameter(str(exc), param_hint="--tracing-otlp-address") from None
    try:
        VipRange.parse(service_vip_range, "range")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--service-vip-range") from None
    return ControlPlaneSettings(
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
        tracing=tracing,
        orphan_grace=grace,
        xds_socket=socket,
        vip_range=service_vip_range,
        scrape_interval=scrape_every,
        kube_identity=_kube_identity(ca_authentication, leader_lease, kubeconfig),
        xds_tls=_xds_tls(xds_tls_address, xds_tls_names),
        monitoring_address=host_port(monitoring_address, "--monitoring-address"),
        **_platform_settings(platform, kubeconfig),
    )


def _xds_tls(address: str | None, names: str | None) -> XdsTlsSettings | None:
    """--xds-tls-address and --xds-tls-names as settings (None: TLS not served)."""
    from trellis.controlplane.xds_tls import DEFAULT_XDS_TLS_NAMES, XdsTlsSettings  # noqa: PLC0415

    if not address:
        if names is not None:
            raise click.BadParameter("needs --xds-tls-address", param_hint="--xds-tls-names")
        return None
    host_port(address, "--xds-tls-address")
    dns_names: tuple[str, ...] = DEFAULT_XDS_TLS_NAMES
    if names is not None:
        dns_names = tuple(name.strip() for name in names.split(","))
    try:
        return XdsTlsSettings(address, dns_names)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--xds-tls-names") from None


def host_port(value: str | None, flag: str) -> tuple[str, int] | None:
    """A `HOST:PORT` flag as a pair (None or "": not given); BadParameter naming `flag`."""
    from trellis.core.addresses import SocketAddress  # noqa: PLC0415

    if not value:
        return None
    try:
        address = SocketAddress.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None
    return address.host, address.port


def webhook_certificate_names(value: str) -> tuple[str, ...]:
    """--webhook-service NAME.NAMESPACE as the names the webhook's certificate carries."""
    from trellis.kube.webhook_config import parse_webhook_service, webhook_dns_names  # noqa: PLC0415

    try:
        return webhook_dns_names(*parse_webhook_service(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--webhook-service") from None


def _kube_identity(
    ca_authentication: str, leader_lease: str | None, kubeconfig: Path | None
) -> KubeIdentitySettings | None:
    """--ca-authentication token-review and --leader-lease as settings (None: join tokens),
    against the same API server as --platform kubernetes (--kubeconfig, else $KUBECONFIG,
    else in-cluster)."""
    import os  # noqa: PLC0415

    from trellis.controlplane.kube_ca import KubeIdentitySettings  # noqa: PLC0415
    from trellis.errors import ConfigError  # noqa: PLC0415

    if ca_authentication != "token-review":
        if leader_lease:
            raise click.BadParameter(
                "needs --ca-authentication token-review (a Kubernetes API server)",
                param_hint="--leader-lease",
            )
        return None
    if kubeconfig is None and os.environ.get("KUBECONFIG"):
        kubeconfig = Path(os.environ["KUBECONFIG"])
    try:
        return KubeIdentitySettings.from_environment(leader_lease or None, kubeconfig)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--leader-lease") from None


def _platform_settings(platform: str, kubeconfig: Path | None) -> dict[str, Any]:
    """--platform and --kubeconfig as ControlPlaneSettings fields."""
    import os  # noqa: PLC0415

    from trellis.controlplane.kube_platform import Platform  # noqa: PLC0415

    if platform != Platform.KUBERNETES:
        if kubeconfig is not None:
            raise click.BadParameter("needs --platform kubernetes", param_hint="--kubeconfig")
        return {}
    if kubeconfig is None and os.environ.get("KUBECONFIG"):
        kubeconfig = Path(os.environ["KUBECONFIG"])
    return {"platform": Platform.KUBERNETES, "kubeconfig": kubeconfig}


def _xds_socket(value: str | None, data_dir: Path) -> Path | None:
    """The Unix socket to serve xDS on: --xds-socket made absolute, None when it is "".

    The default, DATA_DIR/xds.sock, is skipped with a warning when its path is
    too long for a socket address; a path given explicitly must fit.
    """
    import logging  # noqa: PLC0415

    from trellis.controlplane.ads_socket import SocketPathError, check_socket_path  # noqa: PLC0415

    if value == "":
        return None
    path = Path(value or data_dir / "xds.sock").absolute()
    try:
        check_socket_path(path)
    except SocketPathError as exc:
        if value is not None:
            raise click.BadParameter(str(exc), param_hint="--xds-socket") from None
        logging.getLogger("trellis.controlplane").warning(
            "not serving xDS on a Unix socket: %s (give --xds-socket a shorter path)", exc
        )
        return None
    return path
