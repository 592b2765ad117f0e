"""The admin server's route sets: the agent ports (15020, 15021) offer only their
read-only routes, never the admin's config dump or quit."""

from __future__ import annotations

import pytest

from trellis.runtime.admin import HEALTH_ROUTES, STATS_ROUTES, AdminServer, PrometheusSources


class _Target:
    def state(self) -> str:
        return "LIVE"

    def prometheus(self) -> str:
        return "proxy 1\n"

    def stats_text(self) -> str:
        return ""

    def config_dump(self) -> dict[str, object]:
        return {}

    def clusters_text(self) -> str:
        return ""

    def server_info(self) -> dict[str, object]:
        return {}

    def quit(self) -> None:
        raise AssertionError("quit reached")

    def drain(self) -> None:
        raise AssertionError("drain reached")


def _routes(server: AdminServer) -> set[tuple[str, str]]:
    return set(server._routes)


def test_the_agent_ports_serve_only_their_routes() -> None:
    assert _routes(AdminServer(_Target(), STATS_ROUTES)) == {
        ("GET", "/stats/prometheus"),
        ("GET", "/healthz/ready"),
    }
    assert _routes(AdminServer(_Target(), HEALTH_ROUTES)) == {("GET", "/healthz/ready")}
    full = _routes(AdminServer(_Target()))
    assert {("POST", "/quitquitquit"), ("GET", "/config_dump")} <= full


def test_a_restricted_server_ignores_added_routes() -> None:
    server = AdminServer(_Target(), HEALTH_ROUTES)
    server.add_json_route("/certs", dict)
    assert ("GET", "/certs") not in _routes(server)


def test_an_unknown_route_is_refused() -> None:
    with pytest.raises(ValueError, match="/nope"):
        AdminServer(_Target(), {("GET", "/nope")})


def test_sources_are_shared_by_the_servers_given_them() -> None:
    sources = PrometheusSources()
    admin = AdminServer(_Target(), sources=sources)
    stats = AdminServer(_Target(), STATS_ROUTES, sources)
    admin.add_prometheus_source(lambda: "cert 1\n")
    assert stats._prometheus() == admin._prometheus() == "proxy 1\ncert 1\n"
