"""`trellis proxy-status` and `trellis proxy-config`: what each proxy has, like istioctl's.

Only click is imported at module level (see `config_commands`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from trellis.cli.options import api_client, fail, server_options

_TYPES = ("CDS", "LDS", "EDS", "RDS")
# A VHDS client's virtual hosts are part of its routes: RDS shows the worse state.
_ALSO_SHOWN_AS = {"RDS": "VHDS"}
_WORST_FIRST = ("STALE", "NOT SENT", "SYNCED")


def _state(proxy: dict[str, Any], short_name: str) -> str:
    types = proxy.get("types") or {}
    entry = types.get(short_name)
    state = str(entry.get("state")) if isinstance(entry, dict) else "NOT SENT"
    part = types.get(_ALSO_SHOWN_AS.get(short_name, ""))
    if isinstance(part, dict) and state in _WORST_FIRST:
        other = str(part.get("state"))
        if other in _WORST_FIRST and _WORST_FIRST.index(other) < _WORST_FIRST.index(state):
            return other
    return state


def _last_nack(proxy: dict[str, Any]) -> str:
    latest: tuple[float, str] | None = None
    for short_name, entry in (proxy.get("types") or {}).items():
        nack = entry.get("lastNack") if isinstance(entry, dict) else None
        if isinstance(nack, dict):
            at = float(nack.get("at") or 0.0)
            if latest is None or at > latest[0]:
                latest = (at, f"{short_name}: {nack.get('message', '')}")
    if latest is None:
        return ""
    return " ".join(latest[1].split())


@click.command("proxy-status")
@click.option("-o", "--output", type=click.Choice(["json"]), default=None, help="Raw JSON.")
@server_options
def proxy_status(output: str | None, server: str, token: str | None) -> None:
    """Each connected proxy's sync state per xDS type (SYNCED, STALE, NOT SENT)."""
    from trellis.cli.client import ApiError  # noqa: PLC0415
    from trellis.cli.render import table  # noqa: PLC0415

    with api_client(server, token) as client:
        try:
            proxies = client.proxies()
        except ApiError as exc:
            fail(exc)
    if output == "json":
        click.echo(json.dumps(proxies, indent=2))
        return
    if not proxies:
        click.echo("No proxies connected.", err=True)
        return
    rows = [
        (
            str(proxy.get("id", "")),
            *(_state(proxy, short_name) for short_name in _TYPES),
            str(proxy.get("snapshotVersion") or "-"),
            _last_nack(proxy),
        )
        for proxy in proxies
    ]
    click.echo(table(("NAME", *_TYPES, "VERSION", "LAST NACK"), rows))


def _config_dump(
    proxy: str, admin: str | None, file: Path | None, server: str, token: str | None
) -> dict[str, Any]:
    from trellis.cli.client import ApiError, fetch_admin_config_dump  # noqa: PLC0415

    if file is not None:
        try:
            loaded: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise click.FileError(str(file), hint=str(exc)) from None
        return loaded
    try:
        if admin is not None:
            return fetch_admin_config_dump(admin)
        with api_client(server, token) as client:
            return client.config_dump(proxy)
    except ApiError as exc:
        fail(exc)


@click.command("proxy-config")
@click.argument("proxy")
@click.argument(
    "section", type=click.Choice(["listeners", "routes", "clusters", "endpoints", "secrets"])
)
@click.option("-o", "--output", type=click.Choice(["json"]), default=None, help="Raw resources.")
@click.option(
    "--admin",
    metavar="HOST:PORT",
    help="Read the config dump from this admin address instead of through the control plane.",
)
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read a saved config dump (JSON) instead.",
)
@server_options
def proxy_config(
    proxy: str,
    section: str,
    output: str | None,
    admin: str | None,
    file: Path | None,
    server: str,
    token: str | None,
) -> None:
    """Show a proxy's listeners, routes, clusters, endpoints or secrets (from /config_dump).

    PROXY is the proxy's node id (or its workload name); the control plane fetches
    the dump when it knows the proxy's admin address, otherwise use --admin.
    """
    from trellis.cli.proxy_config_view import VIEWS, rejected, resources  # noqa: PLC0415
    from trellis.cli.render import table  # noqa: PLC0415

    dump = _config_dump(proxy, admin, file, server, token)
    if output == "json":
        click.echo(json.dumps(resources(dump, section), indent=2))
        return
    view = VIEWS[section](dump)
    click.echo(table(view.headers, view.rows))
    for line in rejected(dump, section):
        click.echo(f"Warning: rejected update: {line}", err=True)
