"""Two sidecars as a control plane would configure them, from static bootstraps.

The client sidecar (workload `web` in `default`) routes `Host: echo` to the
mesh cluster `outbound|80||echo.demo.svc.cluster.local` over mTLS; the server
sidecar (workload `echo-v2` in `demo`, STRICT mTLS) hands requests to the
application through `inbound|8080||`. Both carry Istio node metadata, so the
metadata exchange and the metric labels can be checked end to end.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bootstrap import Json, bootstrap, cluster, free_port, http_listener, route, virtual_host
from .harness import ProxyFactory
from .pki import Issued, TestCa
from .proxyproc import ProxyProcess

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/web"
SERVER_ID = "spiffe://cluster.local/ns/demo/sa/echo"
SERVICE = "echo.demo.svc.cluster.local"
MESH_CLUSTER = f"outbound|80||{SERVICE}"
CLIENT_NODE: Json = {
    "id": "sidecar~127.0.0.1~web-1.default~default.svc.cluster.local",
    "metadata": {
        "NAME": "web-1",
        "WORKLOAD_NAME": "web",
        "NAMESPACE": "default",
        "SERVICE_ACCOUNT": "web",
        "CLUSTER_ID": "local",
        "LABELS": {"app": "web", "version": "v1"},
    },
}
SERVER_NODE: Json = {
    "id": "sidecar~127.0.0.1~echo-v2-1.demo~demo.svc.cluster.local",
    "metadata": {
        "NAME": "echo-v2-1",
        "WORKLOAD_NAME": "echo-v2",
        "NAMESPACE": "demo",
        "SERVICE_ACCOUNT": "echo",
        "CLUSTER_ID": "local",
        "LABELS": {
            "app": "echo",
            "version": "v2",
            "service.istio.io/canonical-name": "echo-svc",
        },
    },
}


def _secrets(ca: TestCa, name: str, issued: Issued) -> list[Json]:
    return [
        {
            "name": name,
            "tls_certificate": {
                "certificate_chain": {"inline_string": issued.chain_pem},
                "private_key": {"inline_string": issued.key_pem},
            },
        },
        {"name": "root", "validation_context": {"trusted_ca": {"inline_string": ca.root_pem}}},
    ]


def _validation(matcher: Json) -> Json:
    return {
        "default_validation_context": {
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": matcher}]
        },
        "validation_context_sds_secret_config": {"name": "root"},
    }


def server_bootstrap(ca: TestCa, app_port: int, port: int) -> Json:
    """The server's sidecar: STRICT mTLS inbound on `port` to the application."""
    listener = http_listener(
        "virtualInbound", port, [virtual_host("inbound", [route("inbound|8080||")])],
        direction="INBOUND",
    )  # fmt: skip
    chain = listener["filter_chains"][0]
    chain["filter_chain_match"] = {"transport_protocol": "tls"}
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS + "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "server-cert"}],
                "combined_validation_context": _validation({"prefix": "spiffe://cluster.local/"}),
            },
        },
    }
    listener["listener_filters"] = [
        {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR}}
    ]
    config = bootstrap(
        free_port(), [listener], [cluster("inbound|8080||", [app_port])], node=SERVER_NODE
    )
    config["static_resources"]["secrets"] = _secrets(ca, "server-cert", ca.issue(SERVER_ID))
    return config


def client_bootstrap(ca: TestCa, server_port: int, port: int) -> Json:
    """The client's sidecar: `Host: echo` on `port` to the server's sidecar over mTLS."""
    upstream_tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS + "UpstreamTlsContext",
            "sni": f"outbound_.80_._.{SERVICE}",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "client-cert"}],
                "combined_validation_context": _validation({"exact": SERVER_ID}),
            },
        },
    }
    vhost = virtual_host("echo", [route(MESH_CLUSTER)], ["echo", "echo.demo", SERVICE])
    listener = http_listener("virtualOutbound", port, [vhost], direction="OUTBOUND")
    clusters = [cluster(MESH_CLUSTER, [server_port], transport_socket=upstream_tls)]
    config = bootstrap(free_port(), [listener], clusters, node=CLIENT_NODE)
    config["static_resources"]["secrets"] = _secrets(ca, "client-cert", ca.issue(CLIENT_ID))
    return config


@dataclass(frozen=True)
class MeshPair:
    client: ProxyProcess
    server: ProxyProcess
    client_port: int  # where the client application sends its requests

    @property
    def proxies(self) -> tuple[ProxyProcess, ProxyProcess]:
        return self.client, self.server


def start_pair(start_proxy: ProxyFactory, ca: TestCa, app_port: int) -> MeshPair:
    server_port, client_port = free_port(), free_port()
    server = start_proxy(server_bootstrap(ca, app_port, server_port), name="echo-sidecar")
    client = start_proxy(client_bootstrap(ca, server_port, client_port), name="web-sidecar")
    return MeshPair(client, server, client_port)
