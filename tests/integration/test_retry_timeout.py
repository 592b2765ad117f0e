"""Retries (5xx, gateway-error, status codes, reset, connect-failure) and timeouts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .bootstrap import PREVIOUS_HOSTS, bootstrap, cluster, free_port, http_listener, virtual_host
from .client import request
from .harness import proxy_manager, upstream_manager
from .proxyproc import ProxyProcess, Sample, delta, flags_of
from .upstream import HttpUpstream

CONNECT_ERROR = "upstream connect error or disconnect/reset before headers"


@dataclass(frozen=True, slots=True)
class Env:
    proxy: ProxyProcess
    port: int
    up: HttpUpstream


def _route(
    prefix: str, cluster_name: str, retry: dict[str, Any] | None = None, **action: Any
) -> dict[str, Any]:
    act: dict[str, Any] = {"cluster": cluster_name, "prefix_rewrite": "/", **action}
    if retry is not None:
        act["retry_policy"] = retry
    return {"match": {"prefix": prefix}, "route": act}


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("retry")
    with upstream_manager() as make_up, proxy_manager(request.config, workdir) as start:
        up = make_up("good")
        port, dead = free_port(), free_port()
        routes = [
            _route("/retry2/", "good", {"retry_on": "5xx", "num_retries": 2}),
            _route("/retry1/", "good", {"retry_on": "5xx", "num_retries": 1}),
            _route("/noretry/", "good"),
            _route("/gw/", "good", {"retry_on": "gateway-error", "num_retries": 2}),
            _route(
                "/codes/",
                "good",
                {
                    "retry_on": "retriable-status-codes",
                    "retriable_status_codes": [409],
                    "num_retries": 2,
                },
            ),
            _route("/reset/", "good", {"retry_on": "reset", "num_retries": 1}),
            _route(
                "/pertry/",
                "good",
                {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.3s"},
                timeout="5s",
            ),
            _route("/overall/", "good", timeout="0.5s"),
            _route(
                "/bounded/",
                "good",
                {"retry_on": "5xx", "num_retries": 5, "per_try_timeout": "0.4s"},
                timeout="1s",
            ),
            _route(
                "/refused/",
                "mixed",
                {
                    "retry_on": "connect-failure",
                    "num_retries": 3,
                    "retry_host_predicate": [PREVIOUS_HOSTS],
                    "host_selection_retry_max_attempts": 3,
                },
            ),
            _route("/refused-only/", "dead", {"retry_on": "connect-failure", "num_retries": 2}),
            _route("/dead/", "dead"),
        ]
        clusters = [
            cluster("good", [up.port]),
            cluster("mixed", [dead, up.port]),
            cluster("dead", [dead], connect_timeout="0.5s"),
        ]
        listener = http_listener("retry", port, [virtual_host("all", routes)])
        yield Env(start(bootstrap(free_port(), [listener], clusters), name="retry"), port, up)


@pytest.fixture(autouse=True)
def _clear(env: Env) -> None:
    env.up.clear()


def _key() -> str:
    return uuid.uuid4().hex[:10]


def _flags_for(env: Env, before: list[Sample], code: str) -> set[str]:
    """The response_flags of istio_requests_total samples for `code` that grew since `before`."""
    after = flags_of(env.proxy.samples(), "istio_requests_total", response_code=code)
    old = flags_of(before, "istio_requests_total", response_code=code)
    grown = {flag for flag, value in after.items() if value > old.get(flag, 0.0)}
    return {part for flag in grown for part in flag.split(",")}


def test_retry_on_503_until_success(env: Env) -> None:
    key = _key()
    before = env.proxy.samples()
    resp = request(env.port, "GET", f"/retry2/flaky/{key}/2/status/503")
    assert resp.status == 200, resp
    assert [r.target for r in env.up.requests] == [f"/flaky/{key}/2/status/503"] * 3
    after = env.proxy.samples()
    # one request for the client, however many attempts upstream
    assert delta(before, after, "istio_requests_total") == 1
    assert delta(before, after, "istio_requests_total", response_code="200") == 1


def test_retries_exhausted_returns_last_503_with_urx(env: Env) -> None:
    before = env.proxy.samples()
    resp = request(env.port, "GET", f"/retry1/flaky/{_key()}/5/status/503")
    assert resp.status == 503, resp
    assert len(env.up.requests) == 2, "num_retries: 1 means two attempts"
    assert "URX" in _flags_for(env, before, "503")


def test_no_retry_policy_no_retry(env: Env) -> None:
    assert request(env.port, "GET", "/noretry/status/503").status == 503
    assert len(env.up.requests) == 1


def test_gateway_error_retries_502_not_500(env: Env) -> None:
    assert request(env.port, "GET", f"/gw/flaky/{_key()}/1/status/500").status == 500
    assert len(env.up.requests) == 1
    env.up.clear()
    assert request(env.port, "GET", f"/gw/flaky/{_key()}/1/status/502").status == 200
    assert len(env.up.requests) == 2


def test_retriable_status_codes(env: Env) -> None:
    assert request(env.port, "GET", f"/codes/flaky/{_key()}/1/status/409").status == 200
    assert len(env.up.requests) == 2
    env.up.clear()
    assert request(env.port, "GET", f"/codes/flaky/{_key()}/1/status/503").status == 503
    assert len(env.up.requests) == 1


def test_upstream_close_before_headers_is_503_uc(env: Env) -> None:
    before = env.proxy.samples()
    resp = request(env.port, "GET", "/noretry/close")
    assert resp.status == 503, resp
    assert resp.text.startswith(CONNECT_ERROR), resp
    assert "UC" in _flags_for(env, before, "503")


def test_retry_on_reset(env: Env) -> None:
    resp = request(env.port, "GET", f"/reset/flaky/{_key()}/1/close")
    assert resp.status == 200, resp
    assert len(env.up.requests) == 2


def test_retry_on_connection_refused(env: Env) -> None:
    """Half of the picks hit a port with nothing listening; every request still succeeds."""
    for i in range(20):
        resp = request(env.port, "GET", f"/refused/n/{i}")
        assert resp.status == 200, f"request {i}: {resp}"
        assert resp.elapsed < 2.0, f"request {i} took {resp.elapsed:.2f}s"
    assert len(env.up.requests) == 20


def test_connection_refused_retries_exhausted(env: Env) -> None:
    before = env.proxy.samples()
    resp = request(env.port, "GET", "/refused-only/x")
    assert resp.status == 503, resp
    assert resp.text.startswith(CONNECT_ERROR), resp
    flags = _flags_for(env, before, "503")
    assert {"UF", "URX"} <= flags, flags


def test_connection_refused_without_retry_is_uf(env: Env) -> None:
    before = env.proxy.samples()
    resp = request(env.port, "GET", "/dead/x")
    assert resp.status == 503, resp
    assert resp.text.startswith(CONNECT_ERROR), resp
    assert "connection failure" in resp.text, resp
    assert "UF" in _flags_for(env, before, "503")


def test_per_try_timeout_then_success(env: Env) -> None:
    resp = request(env.port, "GET", f"/pertry/flaky/{_key()}/1/delay/3")
    assert resp.status == 200, resp
    assert 0.28 <= resp.elapsed < 1.5, f"took {resp.elapsed:.2f}s with per_try_timeout 0.3s"
    assert len(env.up.requests) == 2


def test_per_try_timeout_exhausted_is_504_ut(env: Env) -> None:
    before = env.proxy.samples()
    resp = request(env.port, "GET", "/pertry/delay/3")
    assert resp.status == 504, resp
    assert resp.text == "upstream request timeout", resp
    # three tries of 0.3 s plus two jittered back-offs (< 25 ms and < 50 ms)
    assert 0.85 <= resp.elapsed < 2.0, f"took {resp.elapsed:.2f}s"
    assert len(env.up.requests) == 3
    assert "UT" in _flags_for(env, before, "504")


def test_overall_timeout_is_504_ut(env: Env) -> None:
    before = env.proxy.samples()
    resp = request(env.port, "GET", "/overall/delay/3")
    assert resp.status == 504, resp
    assert resp.text == "upstream request timeout", resp
    assert 0.45 <= resp.elapsed < 1.2, f"took {resp.elapsed:.2f}s with timeout 0.5s"
    assert "UT" in _flags_for(env, before, "504")


def test_overall_timeout_bounds_retries(env: Env) -> None:
    resp = request(env.port, "GET", "/bounded/delay/3")
    assert resp.status == 504, resp
    assert 0.95 <= resp.elapsed < 1.6, f"took {resp.elapsed:.2f}s with timeout 1s"
    assert 2 <= len(env.up.requests) <= 3
