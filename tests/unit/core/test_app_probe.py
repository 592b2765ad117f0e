"""The probes the injector hands the sidecar: parsing, validation and encoding."""

from __future__ import annotations

import json

import pytest

from trellis.core.app_probe import (
    APP_PROBERS_ENV,
    AppProbe,
    GrpcCheck,
    HttpGetCheck,
    TcpCheck,
    encode_app_probes,
    parse_app_probes,
    probe_path,
)
from trellis.errors import ConfigError


def test_istio_shaped_json_parses_into_checks() -> None:
    text = json.dumps(
        {
            "/app-health/web/livez": {
                "httpGet": {
                    "path": "healthz?full=1",
                    "port": 8080,
                    "scheme": "HTTPS",
                    "host": "web.local",
                    "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}],
                },
                "timeoutSeconds": 3,
            },
            "/app-health/web/readyz": {"tcpSocket": {"port": 9000}},
            "/app-health/grpc/startupz": {"grpc": {"port": 7070, "service": "shop"}},
        }
    )
    probes = parse_app_probes(text)
    assert probes["/app-health/web/livez"] == AppProbe(
        HttpGetCheck(8080, "/healthz?full=1", "HTTPS", "web.local", (("X-Probe", "kubelet"),)),
        3,
    )
    # Without timeoutSeconds, the kubelet's default of one second.
    assert probes["/app-health/web/readyz"] == AppProbe(TcpCheck(9000), 1)
    assert probes["/app-health/grpc/startupz"] == AppProbe(GrpcCheck(7070, "shop"), 1)


def test_encoding_round_trips_and_is_stable() -> None:
    probes = {
        probe_path("web", "readinessProbe"): AppProbe(TcpCheck(9000), 2),
        probe_path("web", "livenessProbe"): AppProbe(HttpGetCheck(8080, "/l"), 1),
    }
    text = encode_app_probes(probes)
    assert parse_app_probes(text) == probes
    assert text == encode_app_probes(dict(reversed(probes.items())))
    assert list(json.loads(text)) == ["/app-health/web/livez", "/app-health/web/readyz"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("{not json", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"/healthz": {"tcpSocket": {"port": 1}}}', "/healthz: the key must be"),
        ('{"/app-health/web/deadz": {"tcpSocket": {"port": 1}}}', "/app-health/web/deadz"),
        ('{"/app-health/web/livez": {}}', "/app-health/web/livez: expected exactly one"),
        (
            '{"/app-health/web/livez": {"tcpSocket": {"port": 1}, "grpc": {"port": 2}}}',
            "expected exactly one",
        ),
        ('{"/app-health/web/livez": {"exec": {}}}', "/app-health/web/livez: unknown field 'exec'"),
        ('{"/app-health/web/livez": {"tcpSocket": {"port": "http"}}}', "livez.tcpSocket.port"),
        ('{"/app-health/web/livez": {"tcpSocket": {"port": 70000}}}', "livez.tcpSocket.port"),
        (
            '{"/app-health/web/livez": {"tcpSocket": {"port": 1}, "timeoutSeconds": 0}}',
            "livez.timeoutSeconds",
        ),
        ('{"/app-health/web/livez": {"httpGet": {"port": 1, "scheme": "ftp"}}}', "httpGet.scheme"),
        ('{"/app-health/web/livez": {"httpGet": {"port": 1, "path": "/a b"}}}', "httpGet.path"),
        (
            '{"/app-health/web/livez": {"httpGet": {"port": 1, '
            '"httpHeaders": [{"name": "X", "value": "a\\r\\nEvil: 1"}]}}}',
            "httpGet.httpHeaders[0].value",
        ),
        (
            '{"/app-health/web/livez": {"httpGet": {"port": 1, '
            '"httpHeaders": [{"name": "X Y", "value": "a"}]}}}',
            "httpGet.httpHeaders[0].name",
        ),
    ],
)
def test_a_malformed_value_names_the_variable_and_the_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_app_probes(text)
    message = str(caught.value)
    assert message.startswith(f"{APP_PROBERS_ENV}: "), message
    assert where in message
