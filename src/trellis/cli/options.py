"""Options shared by the commands that talk to the control plane's REST API.

Imports only click: the modules that need httpx, pydantic or rich are imported
inside the commands, so `trellis proxy` never loads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from trellis.cli.client import ApiClient, ApiError

DEFAULT_SERVER = "http://127.0.0.1:8080"

F = TypeVar("F", bound=Callable[..., Any])


def server_options(command: F) -> F:
    """Add --server and --token (also read from TRELLIS_SERVER and TRELLIS_TOKEN)."""
    command = click.option(
        "--server",
        "-s",
        envvar="TRELLIS_SERVER",
        default=DEFAULT_SERVER,
        show_default=True,
        metavar="URL",
        help="The control plane's REST API [env: TRELLIS_SERVER].",
    )(command)
    return click.option(
        "--token",
        envvar="TRELLIS_TOKEN",
        default=None,
        metavar="TOKEN",
        help="Bearer token, needed from other hosts; the control plane keeps it in "
        "DATA_DIR/api-token [env: TRELLIS_TOKEN].",
    )(command)


@contextlib.contextmanager
def api_client(server: str, token: str | None) -> Iterator[ApiClient]:
    """The client to use: one placed in the click context object (tests, embedding), else a
    new one for `server`, closed on exit.
    """
    from trellis.cli.client import ApiClient  # noqa: PLC0415 - keep httpx out of `trellis proxy`

    context = click.get_current_context(silent=True)
    given = context.find_object(ApiClient) if context is not None else None
    if given is not None:
        yield given
        return
    client = ApiClient.connect(server, token)
    try:
        yield client
    finally:
        client.close()


def fail(error: ApiError) -> NoReturn:
    """Print a server error like kubectl (`Error from server (NotFound): ...`) and exit 1."""
    if error.code:
        reason = error.reason or str(error.code)
        click.echo(f"Error from server ({reason}): {error.message}", err=True)
    else:
        click.echo(f"error: {error.message}", err=True)
    raise SystemExit(1)
