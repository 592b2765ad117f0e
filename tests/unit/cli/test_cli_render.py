"""Tables, ages and kind names as the CLI prints and reads them."""

from __future__ import annotations

import httpx
import pytest

from trellis.cli.client import ApiClient, ApiError
from trellis.cli.render import age, human_duration, table
from trellis.controlplane.api_kinds import KINDS, UnknownKindError, resolve_kind


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (330, "5m30s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (7 * 3600 + 59 * 60, "7h59m"),
        (47 * 3600, "47h"),
        (2 * 86400 + 4 * 3600, "2d4h"),
        (9 * 86400, "9d"),
        (400 * 86400, "400d"),
        (3 * 365 * 86400 + 12 * 86400, "3y12d"),
        (10 * 365 * 86400, "10y"),
    ],
)
def test_human_duration_like_kubectl(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_age_of_a_timestamp() -> None:
    assert age("2024-01-01T00:00:00Z", now=1704067200 + 90) == "90s"
    assert age("not a time", now=0) == "<unknown>"


def test_table_keeps_long_cells_on_one_line_without_trailing_space() -> None:
    long_host = "a-very-long-host-name.with-many.labels.svc.cluster.local," * 5
    text = table(["NAME", "HOSTS", "AGE"], [["x", long_host, "1d"], ["yy", "", "2s"]])
    assert text.splitlines() == [
        "NAME   HOSTS" + " " * (len(long_host) - 2) + "AGE",
        f"x      {long_host}   1d",
        "yy" + " " * (len(long_host) + 8) + "2s",
    ]
    markup = table(["NAME"], [["[bold]x[/bold]"]])
    assert markup.splitlines()[1] == "[bold]x[/bold]"  # cells are text, never rich markup


@pytest.mark.parametrize(
    ("typed", "kind"),
    [
        ("vs", "VirtualService"),
        ("VirtualServices", "VirtualService"),
        ("virtualservice.networking.istio.io", "VirtualService"),
        ("dr", "DestinationRule"),
        ("destinationrules", "DestinationRule"),
        ("se", "ServiceEntry"),
        ("serviceentries", "ServiceEntry"),
        ("serviceentry", "ServiceEntry"),
        ("we", "WorkloadEntry"),
        ("workloadentries", "WorkloadEntry"),
        ("pa", "PeerAuthentication"),
        ("peerauthentications.security.istio.io", "PeerAuthentication"),
        ("ap", "AuthorizationPolicy"),
        ("AuthorizationPolicy", "AuthorizationPolicy"),
    ],
)
def test_kind_names(typed: str, kind: str) -> None:
    assert resolve_kind(typed).kind == kind


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(UnknownKindError, match=r"virtualservices \(vs\)"):
        resolve_kind("gateway")
    with pytest.raises(UnknownKindError):
        resolve_kind("vs.security.istio.io")
    assert {info.plural for info in KINDS} == {
        "virtualservices", "destinationrules", "serviceentries", "workloadentries",
        "peerauthentications", "authorizationpolicies", "telemetries",
    }  # fmt: skip


def test_client_sends_the_token_and_reads_status_errors() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"kind": "Status", "message": 'x "y" not found', "reason": "NotFound", "code": 404}
        return httpx.Response(404, json=body)

    http = httpx.Client(
        base_url="http://cp:8080",
        headers={"authorization": "Bearer s3cret"},
        transport=httpx.MockTransport(handler),
    )
    with ApiClient(http) as client, pytest.raises(ApiError) as caught:
        client.get(resolve_kind("vs"), "shop", "y")
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert seen[0].url.path == "/apis/networking.istio.io/v1/namespaces/shop/virtualservices/y"
    assert (caught.value.code, caught.value.reason) == (404, "NotFound")
    assert caught.value.message == 'x "y" not found'
