"""`trellis join-token`: issue a workload's credential for the CA (local platform).

Prints only the token, so `trellis join-token ... > cart.token` gives the file
`trellis proxy --join-token-file` reads. Only click is imported at module level.
"""

from __future__ import annotations

import json

import click

from trellis.cli.options import api_client, fail, server_options


@click.command("join-token")
@click.option(
    "--namespace", "-n", default="default", show_default=True, help="The workload's namespace."
)
@click.option(
    "--service-account",
    required=True,
    help="The workload's service account: its certificate will be "
    "spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT.",
)
@click.option("--workload", required=True, help="The workload's name (for logs and audit).")
@click.option(
    "--ttl",
    default=None,
    metavar="DURATION",
    help="How long the token is accepted, e.g. 30m, 1h, 168h [default: 1h]. The proxy "
    "presents it on every renewal, so it must outlast the workload or be refreshed.",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["json"]),
    default=None,
    help="The whole answer (token, SPIFFE ID, expiry) as JSON.",
)
@server_options
def join_token(
    namespace: str,
    service_account: str,
    workload: str,
    ttl: str | None,
    output: str | None,
    server: str,
    token: str | None,
) -> None:
    """Issue a join token that lets one workload's proxy obtain its certificate."""
    from trellis.cli.client import ApiError  # noqa: PLC0415

    with api_client(server, token) as client:
        try:
            issued = client.create_join_token(namespace, service_account, workload, ttl)
        except ApiError as exc:
            fail(exc)
    if output == "json":
        click.echo(json.dumps(issued, indent=2))
        return
    click.echo(str(issued.get("token", "")))
    click.echo(
        f"join token for {issued.get('spiffeId')} (workload {workload}), "
        f"expires {issued.get('expiresAt')}",
        err=True,
    )
