"""Who may call the API: loopback freely, others with the token from the data dir."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from trellis.controlplane.api_auth import TOKEN_FILE, api_token, is_loopback, load_or_create_token
from trellis.errors import ConfigError

from .api_helpers import GROUP, TOKEN, in_process

LIST = f"{GROUP}/virtualservices"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1"])
def test_loopback_callers_need_no_token(host: str) -> None:
    assert in_process(client_host=host).get(LIST).status_code == 200


def test_other_callers_need_the_token() -> None:
    client = in_process(client_host="10.1.2.3")
    missing = client.get(LIST)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["reason"] == "Unauthorized"
    assert "api-token" in missing.json()["message"]
    wrong = client.get(LIST, headers={"authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    basic = client.get(LIST, headers={"authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    right = client.get(LIST, headers={"authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200
    post = client.post("/api/v1/apply", json=[], headers={"authorization": "Bearer nope"})
    assert post.status_code == 401


def test_health_is_open_to_everyone() -> None:
    assert in_process(client_host="10.1.2.3").get("/healthz").status_code == 200


def test_loopback_with_a_foreign_host_name_needs_the_token() -> None:
    """A page that rebinds its DNS name to 127.0.0.1 sends its own name as Host."""
    client = in_process()
    rebound = client.get(LIST, headers={"host": "attacker.example:8080"})
    assert rebound.status_code == 403
    assert client.get(LIST, headers={"host": "localhost:8080"}).status_code == 200
    authorized = client.get(
        LIST, headers={"host": "cp.example", "authorization": f"Bearer {TOKEN}"}
    )
    assert authorized.status_code == 200


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    for other in ("10.0.0.1", "::ffff:10.0.0.1", "0.0.0.0", "testclient", "", None):
        assert not is_loopback(other), other


def test_token_file_created_once_with_mode_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "data"
    token = load_or_create_token(data_dir)
    path = data_dir / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token and len(token) >= 40
    assert load_or_create_token(data_dir) == token
    assert load_or_create_token(tmp_path / "other") != token
    assert token not in caplog.text


def test_unusable_token_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).write_text("short\n")
    with pytest.raises(ConfigError, match="api-token"):
        load_or_create_token(tmp_path)


def test_a_shared_token_file_wins_and_its_absence_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "secret" / "token"
    own = api_token(tmp_path / "data", shared)
    assert "no API token file" in caplog.text
    assert own == (tmp_path / "data" / TOKEN_FILE).read_text().strip()
    shared.parent.mkdir()
    shared.write_text("shared-token-of-every-replica\n")
    shared.chmod(0o440)  # as Kubernetes mounts a Secret: not a reason to refuse or warn
    caplog.clear()
    assert api_token(tmp_path / "data", shared) == "shared-token-of-every-replica"
    assert "readable" not in caplog.text
    shared.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        api_token(tmp_path / "data", shared)
