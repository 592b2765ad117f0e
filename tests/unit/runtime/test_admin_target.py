"""The admin's request-target split, which replaced `urlsplit` on every admin request."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from trellis.runtime.admin import parse_query, split_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ready", ("/ready", "")),
        ("/logging?level=debug", ("/logging", "level=debug")),
        (
            "/config_dump?resource=dynamic_listeners#top",
            ("/config_dump", "resource=dynamic_listeners"),
        ),
        ("/stats#x?y", ("/stats", "")),
        ("http://127.0.0.1:15000/clusters?format=json", ("/clusters", "format=json")),
    ],
)
def test_split_target_matches_urlsplit(target: str, expected: tuple[str, str]) -> None:
    url = urlsplit(target)
    assert split_target(target) == expected == (url.path, url.query)


def test_parse_query() -> None:
    assert parse_query("") == {}
    assert parse_query("level=debug&a=1&a=2") == {"level": ["debug"], "a": ["1", "2"]}
