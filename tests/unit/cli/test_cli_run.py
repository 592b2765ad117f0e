"""`trellis run`'s command line: what is refused before anything starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from trellis.cli.main import cli
from trellis.cli.run_command import _default_xds


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--name", "web", "--capture", "sideways", "--", "true"], "Invalid value for '--capture'"),
        (["--name", "web", "--xds", "unix:", "--", "true"], "unix: needs a socket path"),
        (["--name", "web"], "Missing argument 'COMMAND...'"),
        (["--", "true"], "Missing option '--name'"),
        (["--name", "Web", "--", "true"], "Invalid value for --name"),
        (["--name", "web", "--label", "tier", "--", "true"], "expected KEY=VALUE"),
        (["--name", "web", "--port", "70000", "--", "true"], "70000 is not in the range"),
        (["--name", "web", "--xds", "nowhere", "--", "true"], "expected HOST:PORT"),
    ],
)
def test_bad_command_lines_are_usage_errors(args: list[str], text: str) -> None:
    result = CliRunner().invoke(cli, ["run", *args])
    assert result.exit_code == 2, result.output
    assert text in result.output


def test_options_after_the_command_belong_to_it() -> None:
    # `--port` after COMMAND is the application's: click must stop parsing at COMMAND,
    # so the only problem here is the label, found before anything starts.
    result = CliRunner().invoke(
        cli, ["run", "--name", "w", "--label", "tier", "echo", "--port", "x"]
    )
    assert result.exit_code == 2
    assert "expected KEY=VALUE" in result.output
    assert "--port" not in result.output


def test_xds_address_defaults_to_the_api_host() -> None:
    assert _default_xds("http://127.0.0.1:17080") == "127.0.0.1:15010"
    assert _default_xds("cp.example:8080") == "cp.example:15010"
    assert _default_xds("http://[::1]:8080") == "[::1]:15010"
