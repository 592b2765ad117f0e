"""`trellis top` (a live per-edge traffic table, like `linkerd viz top/stat`) and
`trellis dashboard` (where the control plane's dashboard is).

Both read the control plane's REST API; only click is imported at module level
(see `config_commands`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from trellis.cli.options import api_client, fail, server_options

if TYPE_CHECKING:
    from rich.table import Table

HEADERS = ("SOURCE", "DESTINATION", "SERVICE", "VERSION", "REQ/S", "SUCCESS", "P50 MS")
HEADERS_TAIL = ("P90 MS", "P99 MS", "MTLS")
_FOREVER = 10**9  # `top` refreshes until Ctrl-C; a bound all the same


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    number = float(value)
    return f"{number:.1f}" if number < 100 else f"{number:.0f}"


def _name(row: dict[str, Any], key: str) -> str:
    return f"{row.get(key, '')}.{row.get(key + 'Namespace', '')}"


def edge_cells(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One line per edge (caller -> workload through a service), busiest first."""
    ordered = sorted(rows, key=lambda row: (-float(row.get("rps") or 0), _name(row, "source")))
    return [
        (
            _name(row, "source"),
            _name(row, "destination"),
            _name(row, "service"),
            str(row.get("version") or "-"),
            f"{float(row.get('rps') or 0):.1f}",
            _percent(row.get("success")),
            _ms(row.get("p50")),
            _ms(row.get("p90")),
            _ms(row.get("p99")),
            str(row.get("mtls") or "-"),
        )
        for row in ordered
    ]


def _styled_table(graph: dict[str, Any], title: str) -> Table:
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    grid = Table(title=title, title_justify="left", box=None, header_style="bold")
    for header in (*HEADERS, *HEADERS_TAIL):
        numeric = header in ("REQ/S", "SUCCESS", "P50 MS", "P90 MS", "P99 MS")
        grid.add_column(header, justify="right" if numeric else "left", no_wrap=True)
    for cells in edge_cells(graph.get("rows") or []):
        success = cells[5]
        style = "" if success == "-" else "green" if float(success[:-1]) >= 99 else "red"
        mtls = "green" if cells[9] == "yes" else "red" if cells[9] in ("no", "partly") else ""
        grid.add_row(
            *cells[:5], Text(success, style=style), *cells[6:9], Text(cells[9], style=mtls)
        )
    return grid


def _title(graph: dict[str, Any], server: str) -> str:
    scrapes = graph.get("scrapes") or []
    failed = sum(1 for scrape in scrapes if not scrape.get("ok"))
    note = f", {failed} not answering" if failed else ""
    seconds = float(graph.get("seconds") or 0)
    return (
        f"{server} - last {seconds:.0f}s, {len(scrapes)} proxies scraped{note} "
        f"- {time.strftime('%H:%M:%S')}"
    )


@click.command("top")
@click.option("-n", "--namespace", help="Only edges with an end (or the service) here.")
@click.option(
    "--window",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="Rates over this much of the past (Go syntax: 10s, 1m).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.5, max=300),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print one table and exit.")
@click.option("-o", "--output", type=click.Choice(["json"]), default=None, help="Raw JSON rows.")
@server_options
def top(
    namespace: str | None,
    window: str,
    interval: float,
    once: bool,
    output: str | None,
    server: str,
    token: str | None,
) -> None:
    """Live requests/s, success rate, latency and mTLS of each edge of the mesh, from the
    metrics the control plane scrapes off every sidecar (Ctrl-C to stop)."""
    from trellis.cli.client import ApiError  # noqa: PLC0415
    from trellis.cli.render import table  # noqa: PLC0415

    with api_client(server, token) as client:

        def fetch() -> dict[str, Any]:
            try:
                return client.graph(window, namespace)
            except ApiError as exc:
                if exc.code == 400:
                    raise click.BadParameter(exc.message, param_hint="--window") from None
                fail(exc)

        if once or output == "json":
            graph = fetch()
            if output == "json":
                click.echo(json.dumps(graph.get("rows") or [], indent=2))
            elif not graph.get("rows"):
                click.echo("No traffic seen yet (the control plane scrapes every few seconds).")
            else:
                click.echo(table((*HEADERS, *HEADERS_TAIL), edge_cells(graph["rows"])))
            return
        _live(fetch, interval, server)


def _live(fetch: Callable[[], dict[str, Any]], interval: float, server: str) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    console = Console()
    graph = fetch()
    try:
        with Live(_styled_table(graph, _title(graph, server)), console=console) as live:
            for _ in range(_FOREVER):
                time.sleep(interval)
                graph = fetch()
                live.update(_styled_table(graph, _title(graph, server)))
    except KeyboardInterrupt:
        sys.exit(0)


@click.command("dashboard")
@click.option(
    "--open", "open_browser", is_flag=True, help="Open it in a web browser if one is available."
)
@server_options
def dashboard(open_browser: bool, server: str, token: str | None) -> None:
    """Print the URL of the control plane's dashboard (service graph, golden signals,
    traces, proxies, config). From another host, append `#token=TOKEN` to it."""
    import webbrowser  # noqa: PLC0415

    from trellis.cli.client import ApiError  # noqa: PLC0415

    base = server if "://" in server else f"http://{server}"
    url = base.rstrip("/") + "/dashboard"
    with api_client(server, token) as client:
        try:
            client.proxies()
        except ApiError as exc:
            if exc.code == 0:
                click.echo(f"warning: {exc.message}", err=True)
    click.echo(url)
    if not open_browser:
        return
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        click.echo("no web browser found here: open the URL above yourself", err=True)
        return
    if not browser.open(url):
        click.echo("the web browser did not start: open the URL above yourself", err=True)
