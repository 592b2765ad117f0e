"""Translation rules outside the golden files: names, lookups, errors, options, consistency."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from mesh_support import load_case, load_config

from trellis.errors import ConfigError
from trellis.xds.mesh import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    InconsistentSnapshotError,
    MeshConfig,
    ProxyIdentity,
    TranslateOptions,
    Translator,
    UnsupportedConfigError,
    check_consistent,
    inbound_cluster,
    outbound_cluster,
    parse_cluster,
    referenced_names,
    to_dicts,
    translate,
)
from trellis.xds.mesh.names import ClusterKey, Direction

SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc, namespace: default}
spec:
  hosts: [svc.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.1}]
"""
CLIENT = ProxyIdentity(node_id="client", workload_name="client", namespace="default")


def _virtual_service(http: str, name: str = "svc", hosts: str = "[svc]") -> str:
    return (
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"spec:\n  hosts: {hosts}\n  http:\n" + textwrap.indent(textwrap.dedent(http), "  ")
    )


def _outbound_routes(config: MeshConfig, proxy: ProxyIdentity = CLIENT) -> list[object]:
    resources = translate(config, proxy)
    route_config = resources[ROUTE_TYPE]["outbound"]
    return list(route_config.virtual_hosts)  # type: ignore[attr-defined]


# --- names ------------------------------------------------------------------------


def test_cluster_names_are_istios() -> None:
    assert outbound_cluster("a.b.svc.cluster.local", 80) == "outbound|80||a.b.svc.cluster.local"
    assert outbound_cluster("a.b", 9080, "v1") == "outbound|9080|v1|a.b"
    assert inbound_cluster(8080) == "inbound|8080||"
    assert parse_cluster("outbound|80|v1|a.b") == ClusterKey(Direction.OUTBOUND, 80, "v1", "a.b")
    assert parse_cluster("inbound|8080||") == ClusterKey(Direction.INBOUND, 8080)
    for bad in ("outbound|x||a", "sideways|80||a", "outbound|80|a", "static-cluster"):
        assert parse_cluster(bad) is None


# --- lookups ----------------------------------------------------------------------


def test_exact_virtual_service_host_beats_wildcard() -> None:
    text = SERVICE + _virtual_service(
        """
        - route: [{destination: {host: svc}}]
          timeout: 1s
        """,
        name="wild",
        hosts='["*.default.svc.cluster.local"]',
    )
    text += _virtual_service(
        """
        - route: [{destination: {host: svc}}]
          timeout: 2s
        """,
        name="exact",
    )
    (host,) = _outbound_routes(load_config(text))
    assert host.routes[0].route.timeout.seconds == 2  # type: ignore[attr-defined]


def test_virtual_service_without_applicable_match_falls_back_to_default_route() -> None:
    text = SERVICE + _virtual_service(
        """
        - match: [{port: 8080}]
          route: [{destination: {host: svc}}]
        """
    )
    (host,) = _outbound_routes(load_config(text))
    assert [route.name for route in host.routes] == ["default"]  # type: ignore[attr-defined]


def test_proxy_identity_from_workload_entry() -> None:
    case = load_case("inbound")
    proxy = case.proxy
    assert (proxy.workload_name, proxy.namespace, proxy.service_account) == (
        "reviews-v1",
        "default",
        "reviews",
    )
    assert dict(proxy.labels) == {"app": "reviews", "version": "v1"}
    assert dict(proxy.ports) == {"http": 18080, "tcp-admin": 19090}


# --- config the proxy cannot carry out ----------------------------------------------


@pytest.mark.parametrize(
    ("http", "path", "message"),
    [
        (
            """
            - match: [{queryParams: {q: {exact: x}}}]
              route: [{destination: {host: svc}}]
            """,
            "spec.http[0].match[0].queryParams",
            "query parameter",
        ),
        (
            """
            - route: [{destination: {host: svc}}]
              retries: {attempts: 2, retryOn: "retriable-4xx"}
            """,
            "spec.http[0].retries.retryOn",
            "retriable-4xx",
        ),
        (
            """
            - route: [{destination: {host: svc}}]
              headers: {request: {set: {x-client: "%DOWNSTREAM_REMOTE_ADDRESS%"}}}
            """,
            "spec.http[0].headers.request.set.x-client",
            "formatters",
        ),
        (
            """
            - directResponse: {status: 200, body: {string: "%s"}}
            """
            % ("x" * 5000),
            "spec.http[0].directResponse.body",
            "limit",
        ),
    ],
)
def test_unsupported_virtual_service_fields_name_resource_and_path(
    http: str, path: str, message: str
) -> None:
    config = load_config(SERVICE + _virtual_service(http))
    with pytest.raises(UnsupportedConfigError, match=message) as caught:
        translate(config, CLIENT)
    assert caught.value.source == "VirtualService default/svc"
    assert caught.value.path == path


def test_retries_on_grpc_conditions_only_are_dropped() -> None:
    text = SERVICE + _virtual_service(
        """
        - route: [{destination: {host: svc}}]
          retries: {attempts: 4, retryOn: "unavailable,cancelled"}
        """
    )
    (host,) = _outbound_routes(load_config(text))
    assert not host.routes[0].route.HasField("retry_policy")  # type: ignore[attr-defined]


def test_dns_endpoints_are_rejected_until_the_proxy_resolves_names() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: default}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
"""
    with pytest.raises(UnsupportedConfigError, match="resolution DNS") as caught:
        translate(load_config(text), CLIENT)
    assert caught.value.source == "ServiceEntry default/external"
    assert caught.value.path == "spec.ports[0]"


def test_max_requests_per_connection_is_rejected() -> None:
    text = (
        SERVICE
        + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc, namespace: default}
spec:
  host: svc
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}
"""
    )
    with pytest.raises(UnsupportedConfigError) as caught:
        translate(load_config(text), CLIENT)
    assert caught.value.path == "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection"


# --- options ----------------------------------------------------------------------


def test_inbound_listener_may_not_be_the_application_or_the_outbound_port() -> None:
    case = load_case("inbound")
    with pytest.raises(ConfigError, match="application address"):
        translate(case.config, case.proxy, TranslateOptions())  # app port = workload port
    with pytest.raises(ConfigError, match="overlaps the outbound listener"):
        translate(
            case.config,
            case.proxy,
            TranslateOptions(outbound_port=18080, app_ports={18080: 8080, 19090: 9090}),
        )


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        TranslateOptions(outbound_address="localhost")
    with pytest.raises(ConfigError, match="1-65535"):
        TranslateOptions(outbound_port=0)


# --- consistency ------------------------------------------------------------------


def test_referenced_names_and_consistency() -> None:
    case = load_case("weighted_subsets")
    resources = translate(case.config, case.proxy, case.options)
    routes, endpoints = referenced_names(resources)
    assert routes == {"outbound"}
    assert endpoints == set(resources[ENDPOINT_TYPE])
    assert "outbound|9080|v3|reviews.default.svc.cluster.local" in endpoints  # empty but present
    check_consistent(resources)

    no_routes = {**resources, ROUTE_TYPE: {}}
    with pytest.raises(InconsistentSnapshotError) as caught:
        check_consistent(no_routes)
    assert caught.value.missing_routes == ("outbound",)

    cla = dict(resources[ENDPOINT_TYPE])
    del cla["outbound|9080|v1|reviews.default.svc.cluster.local"]
    with pytest.raises(InconsistentSnapshotError, match=r"outbound\|9080\|v1") as caught:
        check_consistent({**resources, ENDPOINT_TYPE: cla})
    assert caught.value.missing_endpoints == ("outbound|9080|v1|reviews.default.svc.cluster.local",)


def test_an_empty_mesh_still_gives_a_consistent_outbound_listener() -> None:
    resources = translate(MeshConfig(), CLIENT)
    assert list(resources[LISTENER_TYPE]) == ["outbound"]
    assert list(resources[ROUTE_TYPE]) == ["outbound"]
    assert resources[CLUSTER_TYPE] == {}
    check_consistent(resources)


# --- layering ---------------------------------------------------------------------


def test_the_proxy_does_not_import_the_translator() -> None:
    code = (
        "import sys, trellis.proxy.main, trellis.xds.compile; "
        "bad = sorted(m for m in sys.modules if m.startswith(('trellis.xds.mesh', 'trellis.api', "
        "'pydantic'))); print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- sharing between proxies ----------------------------------------------------------


def test_translator_shares_outbound_resources_within_a_namespace() -> None:
    case = load_case("match_order")
    translator = Translator(case.config)
    web = translator.translate(case.proxy)
    other = ProxyIdentity(node_id="other", workload_name="other", namespace="shop")
    second = translator.translate(other)
    cluster = "outbound|80|v1|api.shop.svc.cluster.local"
    assert second[CLUSTER_TYPE][cluster] is web[CLUSTER_TYPE][cluster]
    assert to_dicts(second) == to_dicts(translate(case.config, other))
    elsewhere = translator.translate(
        ProxyIdentity(node_id="x", workload_name="x", namespace="default")
    )
    assert to_dicts(elsewhere) == to_dicts(
        translate(case.config, ProxyIdentity(node_id="x", workload_name="x", namespace="default"))
    )


def test_source_labels_give_proxies_their_own_routes() -> None:
    case = load_case("match_order")
    translator = Translator(case.config)
    batch = ProxyIdentity(node_id="b", workload_name="b", namespace="shop", labels={"app": "batch"})
    web_routes = translator.translate(case.proxy)[ROUTE_TYPE]["outbound"]
    batch_routes = translator.translate(batch)[ROUTE_TYPE]["outbound"]
    paths = [r.match.path for r in batch_routes.virtual_hosts[0].routes]  # type: ignore[attr-defined]
    assert "/for-batch" in paths
    assert "/for-batch" not in [
        r.match.path
        for r in web_routes.virtual_hosts[0].routes  # type: ignore[attr-defined]
    ]
    assert to_dicts(translator.translate(batch)) == to_dicts(translate(case.config, batch))


def test_inbound_listeners_need_an_ip_address() -> None:
    case = load_case("inbound")
    proxy = ProxyIdentity(
        node_id="n",
        workload_name="reviews-v1",
        namespace="default",
        labels={"app": "reviews"},
        address="reviews.local",
    )
    options = TranslateOptions(app_ports={18080: 8080, 9080: 8081, 9090: 8082, 8080: 8083})
    with pytest.raises(ConfigError, match="not an IP address"):
        translate(case.config, proxy, options)
    listeners = translate(
        case.config, proxy, TranslateOptions(inbound_address="127.0.0.2", app_ports={8080: 18080})
    )[LISTENER_TYPE]
    assert sorted(listeners) == ["inbound_8080", "inbound_9090", "outbound"]
