"""Rejected config: every problem names file, document, kind/name and field path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from trellis.api.loader import load_documents, parse_resource
from trellis.api.problem import ResourceError
from trellis.errors import ConfigError, TrellisError

HEAD = "shop.yaml: document 2 (VirtualService default/payment): "


def _vs(http: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "payment"},
        "spec": {"hosts": ["payment"], "http": http, **spec},
    }


def _route(*weights: int | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, weight in enumerate(weights):
        item: dict[str, Any] = {"destination": {"host": "payment", "subset": f"v{index}"}}
        if weight is not None:
            item["weight"] = weight
        out.append(item)
    return out


def _errors_of(document: dict[str, Any]) -> list[str]:
    text = yaml.safe_dump_all(
        [
            {
                "kind": "WorkloadEntry",
                "apiVersion": "networking.istio.io/v1",
                "metadata": {"name": "ok"},
                "spec": {"address": "10.0.0.1"},
            },
            document,
        ]
    )
    with pytest.raises(ResourceError) as caught:
        load_documents(text, "shop.yaml")
    return [str(problem) for problem in caught.value.problems]


VS_CASES = [
    pytest.param(
        _vs([{"route": _route(None), "foo": 1}]),
        "spec.http[0].foo: unknown field",
        id="unknown-field",
    ),
    pytest.param(
        _vs([{"route": _route(None), "mirror": {"host": "shadow"}}]),
        "spec.http[0].mirror: field not supported by Trellis",
        id="mirror",
    ),
    pytest.param(
        _vs([{"route": _route(None), "fault": {"abort": {"httpStatus": 500}}}]),
        "spec.http[0].fault: field not supported by Trellis",
        id="fault",
    ),
    pytest.param(
        _vs([{"route": _route(None)}], tls=[{"match": [{"sniHosts": ["a"]}]}]),
        "spec.tls: field not supported by Trellis",
        id="tls-routes",
    ),
    pytest.param(
        _vs([{"route": _route(None), "match": [{"scheme": {"exact": "https"}}]}]),
        "spec.http[0].match[0].scheme: field not supported by Trellis",
        id="match-scheme",
    ),
    pytest.param(
        _vs([{"route": _route(None), "timeout": "3x"}]),
        "spec.http[0].timeout: invalid duration '3x': expected numbers with units ns, us, ms, "
        "s, m or h, like '10s', '0.5s', '100ms' or '1h30m'",
        id="bad-duration",
    ),
    pytest.param(
        _vs([{"route": _route(None), "retries": {"attempts": 2, "perTryTimeout": 5}}]),
        "spec.http[0].retries.perTryTimeout: expected a duration string like '10s', '0.5s', "
        "'100ms' or '1m', got 5",
        id="duration-not-string",
    ),
    pytest.param(
        _vs([{"route": _route(110, -10)}]),
        "spec.http[0].route[1].weight: must be >= 0",
        id="negative-weight",
    ),
    pytest.param(
        _vs([{"route": _route(90, 20)}]),
        "spec.http[0].route: weights of the destinations must add up to 100 (they add up to 110)",
        id="weights-not-100",
    ),
    pytest.param(
        _vs([{"route": _route(None, None)}]),
        "spec.http[0].route: weights of the destinations must add up to 100 (they add up to 0)",
        id="weights-missing",
    ),
    pytest.param(
        _vs([{"route": _route(None)}], gateways=["istio-system/ingress"]),
        "spec.gateways: gateway 'istio-system/ingress' is not supported by Trellis "
        "(only 'mesh': the sidecars)",
        id="gateway",
    ),
    pytest.param(
        _vs([{"route": _route(None), "redirect": {"uri": "/x"}}]),
        "spec.http[0]: exactly one of route, redirect and directResponse is required "
        "(found: route, redirect)",
        id="route-and-redirect",
    ),
    pytest.param(
        _vs([{"route": _route(None), "match": [{"uri": {"exact": "/a", "prefix": "/b"}}]}]),
        "spec.http[0].match[0].uri: only one of exact, prefix and regex may be set "
        "(got ['exact', 'prefix'])",
        id="string-match-two",
    ),
    pytest.param(
        _vs([{"route": _route(None), "match": [{"uri": {"regex": "(unclosed"}}]}]),
        "spec.http[0].match[0].uri: regex '(unclosed' is invalid: missing ), unterminated "
        "subpattern at position 0",
        id="bad-regex",
    ),
    pytest.param(
        _vs([{"route": _route(None), "retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}]),
        "spec.http[0].retries.retryOn: 'sometimes' is not a retry condition or HTTP status code",
        id="retry-on",
    ),
    pytest.param(
        _vs([{"directResponse": {"status": 99}}]),
        "spec.http[0].directResponse.status: must be >= 200",
        id="direct-response-status",
    ),
    pytest.param(
        _vs([{"route": [{"destination": {"host": "Payment_Svc"}}]}]),
        "spec.http[0].route[0].destination.host: host 'Payment_Svc' is not a valid DNS name "
        "(lowercase letters, digits, '-' and '.'; a wildcard only as a leading '*.')",
        id="bad-host",
    ),
    pytest.param(
        _vs([]),
        "spec: at least one http or tcp route is required",
        id="no-routes",
    ),
]


@pytest.mark.parametrize(("document", "expected"), VS_CASES)
def test_virtual_service_errors(document: dict[str, Any], expected: str) -> None:
    assert _errors_of(document) == [HEAD + expected]


def _dr(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "payment", "namespace": "shop"},
        "spec": {"host": "payment", **spec},
    }


DR_HEAD = "shop.yaml: document 2 (DestinationRule shop/payment): "

DR_CASES = [
    pytest.param(
        {"trafficPolicy": {"tls": {"mode": "SIMPLE"}}},
        "spec.trafficPolicy.tls.mode: value SIMPLE is not supported by Trellis "
        "(supported: DISABLE, ISTIO_MUTUAL)",
        id="tls-simple",
    ),
    pytest.param(
        {"trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}},
        "spec.trafficPolicy.loadBalancer.simple: value PASSTHROUGH is not supported by Trellis "
        "(supported: UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST, RANDOM)",
        id="lb-passthrough",
    ),
    pytest.param(
        {"trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}},
        "spec.trafficPolicy.loadBalancer.simple: unknown value 'FASTEST' "
        "(expected one of UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST, RANDOM)",
        id="lb-unknown",
    ),
    pytest.param(
        {"trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}},
        "spec.trafficPolicy.loadBalancer.consistentHash: field not supported by Trellis",
        id="consistent-hash",
    ),
    pytest.param(
        {"subsets": [{"name": "v1", "trafficPolicy": {"outlierDetection": {"interval": "10"}}}]},
        "spec.subsets[0].trafficPolicy.outlierDetection.interval: invalid duration '10': "
        "expected numbers with units ns, us, ms, s, m or h, like '10s', '0.5s', '100ms' or "
        "'1h30m'",
        id="duration-without-unit",
    ),
    pytest.param(
        {"trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 101}}},
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be <= 100",
        id="percent",
    ),
    pytest.param(
        {"trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "0s"}}}},
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout: must be at least 1ms",
        id="zero-timeout",
    ),
    pytest.param(
        {"subsets": [{"name": "v1"}, {"name": "v1"}]},
        "spec.subsets: subset 'v1' is defined more than once",
        id="duplicate-subset",
    ),
    pytest.param(
        {"trafficPolicy": {"portLevelSettings": [{"tls": {"mode": "DISABLE"}}]}},
        "spec.trafficPolicy.portLevelSettings[0].port: required field is missing",
        id="port-level-without-port",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), DR_CASES)
def test_destination_rule_errors(spec: dict[str, Any], expected: str) -> None:
    assert _errors_of(_dr(spec)) == [DR_HEAD + expected]


def _se(spec: dict[str, Any]) -> dict[str, Any]:
    base = {"hosts": ["db.example.com"], "ports": [{"number": 5432, "name": "tcp"}]}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "db"},
        "spec": {**base, **spec},
    }


SE_HEAD = "shop.yaml: document 2 (ServiceEntry default/db): "

SE_CASES = [
    pytest.param(
        {"resolution": "STATIC", "endpoints": [{"address": "db.internal"}]},
        "spec: endpoints[0].address 'db.internal' must be an IP address when resolution is STATIC",
        id="static-hostname",
    ),
    pytest.param(
        {"resolution": "DNS_ROUND_ROBIN"},
        "spec.resolution: value DNS_ROUND_ROBIN is not supported by Trellis "
        "(supported: NONE, STATIC, DNS)",
        id="dns-round-robin",
    ),
    pytest.param(
        {"ports": [{"number": 70000, "name": "tcp"}]},
        "spec.ports[0].number: must be <= 65535",
        id="port-range",
    ),
    pytest.param(
        {"ports": [{"number": 53, "name": "dns", "protocol": "UDP"}]},
        "spec.ports[0].protocol: protocol UDP is not supported by Trellis",
        id="udp",
    ),
    pytest.param(
        {"subjectAltNames": ["spiffe://x"]},
        "spec.subjectAltNames: field not supported by Trellis",
        id="san",
    ),
    pytest.param(
        {"addresses": ["not-an-ip"]},
        "spec.addresses: 'not-an-ip' is not an IP address or CIDR block",
        id="address",
    ),
    pytest.param(
        {"resolution": "STATIC", "endpoints": [{"address": "10.0.0.1", "ports": {"web": 80}}]},
        "spec: endpoints[0].ports: 'web' is not the name of a port of this ServiceEntry",
        id="endpoint-port-name",
    ),
    pytest.param(
        {
            "workloadSelector": {"labels": {"app": "db"}},
            "resolution": "STATIC",
            "endpoints": [{"address": "10.0.0.1"}],
        },
        "spec: only one of endpoints and workloadSelector may be set",
        id="selector-and-endpoints",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), SE_CASES)
def test_service_entry_errors(spec: dict[str, Any], expected: str) -> None:
    assert _errors_of(_se(spec)) == [SE_HEAD + expected]


def test_envelope_errors() -> None:
    documents = [
        {
            "apiVersion": "networking.istio.io/v2",
            "kind": "WorkloadEntry",
            "metadata": {"name": "a"},
            "spec": {"address": "10.0.0.1"},
        },
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}},
        {"apiVersion": "networking.istio.io/v1", "metadata": {"name": "nokind"}},
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"namespace": "shop"},
            "spec": {"address": "10.0.0.1"},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": "Bad_Name"},
            "spec": {"address": "10.0.0.1"},
        },
        "not a mapping",
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": "x", "selfLink": "/x"},
            "spec": {"address": "10.0.0.1"},
            "status": {},
        },
    ]
    text = yaml.safe_dump_all(documents)
    with pytest.raises(ResourceError) as caught:
        load_documents(text, "mixed.yaml")
    assert [str(problem) for problem in caught.value.problems] == [
        "mixed.yaml: document 1 (WorkloadEntry default/a): apiVersion: apiVersion "
        "'networking.istio.io/v2' is not served for this kind (expected one of "
        "networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3)",
        "mixed.yaml: document 2 (Gateway default/gw): kind: kind Gateway is not supported by "
        "Trellis yet",
        "mixed.yaml: document 3 (Service default/svc): kind: unknown kind 'Service' "
        "(supported: AuthorizationPolicy, DestinationRule, PeerAuthentication, ServiceEntry, "
        "Telemetry, VirtualService, WorkloadEntry)",
        "mixed.yaml: document 4 (default/nokind): kind: required field is missing",
        "mixed.yaml: document 5 (WorkloadEntry shop/<no name>): metadata.name: required field "
        "is missing",
        "mixed.yaml: document 6 (WorkloadEntry default/Bad_Name): metadata.name: name "
        "'Bad_Name' must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
        "starting and ending with a letter or digit, at most 253 characters",
        "mixed.yaml: document 7: expected a mapping with apiVersion and kind, got str",
        "mixed.yaml: document 8 (WorkloadEntry default/x): metadata.selfLink: unknown field",
        "mixed.yaml: document 8 (WorkloadEntry default/x): status: unknown field",
    ]


def test_error_is_a_config_error_and_carries_the_first_place() -> None:
    with pytest.raises(ResourceError) as caught:
        parse_resource(_vs([{"route": _route(-1)}]), "api", 3)
    error = caught.value
    assert isinstance(error, ConfigError) and isinstance(error, TrellisError)
    assert error.source == "api"
    assert error.path == "spec.http[0].route[0].weight"
    assert str(error) == (
        "api: document 3 (VirtualService default/payment): spec.http[0].route[0].weight: "
        "must be >= 0"
    )
