"""`trellis iptables`: install transparent capture in the current network namespace.

What the injected `trellis-init` container runs in a pod, like Istio's
`istio-iptables`: the nat rules of `trellis.platform.netns_rules.capture_rules`
(outbound TCP to 15001, inbound to 15006, the proxy's group and the given
ports and ranges left alone), applied with `iptables-restore`. Needs
NET_ADMIN (and NET_RAW for iptables); `--dry-run` prints the rules instead.
"""

from __future__ import annotations

import ipaddress

import click


def _ports(value: str, flag: str) -> tuple[int, ...]:
    ports: list[int] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        if not item.isdigit() or not 0 < int(item) <= 65535:
            raise click.BadParameter(f"{item!r} is not a port (1-65535)", param_hint=flag)
        ports.append(int(item))
    return tuple(dict.fromkeys(ports))


def _ranges(value: str) -> tuple[str, ...]:
    ranges: list[str] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            ranges.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError:
            raise click.BadParameter(
                f"{item!r} is not an IPv4 CIDR range", param_hint="--exclude-outbound-ip-ranges"
            ) from None
    return tuple(dict.fromkeys(ranges))


@click.command()
@click.option(
    "--proxy-gid",
    type=click.IntRange(0, 2**32 - 2),
    default=1337,
    show_default=True,
    help="The sidecar's group: its own traffic is never captured.",
)
@click.option(
    "--outbound-port",
    type=click.IntRange(1, 65535),
    default=15001,
    show_default=True,
    help="Where the application's outbound TCP is redirected.",
)
@click.option(
    "--inbound-port",
    type=click.IntRange(1, 65535),
    default=15006,
    show_default=True,
    help="Where inbound TCP is redirected.",
)
@click.option(
    "--exclude-inbound-ports",
    default="15000,15020,15021,15090",
    show_default=True,
    metavar="PORT,...",
    help="Inbound ports reached directly (the sidecar's own, probes).",
)
@click.option(
    "--exclude-outbound-ports",
    default="",
    metavar="PORT,...",
    help="Destination ports the application reaches without its sidecar.",
)
@click.option(
    "--exclude-outbound-ip-ranges",
    default="",
    metavar="CIDR,...",
    help="IPv4 ranges the application reaches without its sidecar.",
)
@click.option("--dry-run", is_flag=True, help="Print the rules, change nothing.")
def iptables(
    proxy_gid: int,
    outbound_port: int,
    inbound_port: int,
    exclude_inbound_ports: str,
    exclude_outbound_ports: str,
    exclude_outbound_ip_ranges: str,
    dry_run: bool,
) -> None:
    """Redirect this network namespace's TCP to the sidecar (the pod's init step)."""
    from trellis.platform import netns_host  # noqa: PLC0415
    from trellis.platform.netns_rules import CaptureRules, NetworkError, capture_rules  # noqa: PLC0415

    if outbound_port == inbound_port:
        raise click.BadParameter("must differ from --inbound-port", param_hint="--outbound-port")
    rules = capture_rules(
        CaptureRules(
            proxy_gid=proxy_gid,
            outbound_port=outbound_port,
            inbound_port=inbound_port,
            exclude_inbound_ports=_ports(exclude_inbound_ports, "--exclude-inbound-ports"),
            exclude_outbound_ports=_ports(exclude_outbound_ports, "--exclude-outbound-ports"),
            exclude_outbound_ip_ranges=_ranges(exclude_outbound_ip_ranges),
        )
    )
    if dry_run:
        click.echo(rules, nl=False)
        return
    try:
        netns_host.run(["iptables-restore"], stdin=rules)
    except NetworkError as exc:
        raise click.ClickException(f"cannot install the capture rules: {exc}") from None
    click.echo("trellis iptables: capture rules installed", err=True)
