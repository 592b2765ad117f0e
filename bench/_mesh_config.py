"""What the mesh benchmark generates: a throwaway PKI, the sidecars' bootstraps, the pacing script.

Pure functions over plain data (no sockets, no processes), so tests can check them.
The bootstraps use the JSON shapes Istio sends a sidecar: the client's cluster
originates mTLS with a client certificate and checks the server's SPIFFE URI SAN;
the server's inbound listener requires a client certificate. Secrets are static
(`static_resources.secrets`, inline PEM) instead of coming over SDS.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Json = dict[str, object]

TRUST_DOMAIN = "cluster.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/server"
SERVER_SNI = "outbound_.80_._.server.bench.svc.cluster.local"

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_HCM = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
_ROUTE_TIMEOUT = "5s"
_CERT_LIFETIME = datetime.timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A workload certificate chain (leaf + root) and its private key, PEM."""

    chain_pem: str
    key_pem: str


@dataclass(frozen=True, slots=True)
class Pki:
    """A root certificate and one workload certificate per sidecar."""

    root_pem: str
    client: KeyPair
    server: KeyPair


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, text)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_pki(now: datetime.datetime) -> Pki:
    """A fresh ECDSA P-256 root (kept in memory only) and SPIFFE certificates for both sidecars."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    start, end = now - datetime.timedelta(minutes=5), now + _CERT_LIFETIME
    root = (
        x509.CertificateBuilder()
        .subject_name(_name("trellis bench root"))
        .issuer_name(_name("trellis bench root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(root_key, hashes.SHA256())
    )

    def issue(spiffe_id: str) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                critical=True,  # the subject is empty, so the SAN must be critical
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return KeyPair(_pem(leaf) + _pem(root), key_pem)

    return Pki(_pem(root), client=issue(CLIENT_ID), server=issue(SERVER_ID))


def _address(port: int) -> Json:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _node(name: str) -> Json:
    return {
        "id": f"sidecar~127.0.0.1~{name}-0.bench~bench.svc.cluster.local",
        "cluster": name,
        "metadata": {
            "WORKLOAD_NAME": name,
            "NAMESPACE": "bench",
            "SERVICE_ACCOUNT": name,
            "LABELS": {"app": name},
        },
    }


def _secrets(pki: Pki, cert_name: str, pair: KeyPair) -> list[Json]:
    return [
        {
            "name": cert_name,
            "tls_certificate": {
                "certificate_chain": {"inline_string": pair.chain_pem},
                "private_key": {"inline_string": pair.key_pem},
            },
        },
        {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": pki.root_pem}}},
    ]


def _http_filter_chain(name: str, cluster: str) -> Json:
    hcm = {
        "@type": _HCM,
        "stat_prefix": name,
        "route_config": {
            "name": name,
            "virtual_hosts": [
                {
                    "name": cluster,
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": cluster, "timeout": _ROUTE_TIMEOUT},
                        }
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    hcm_filter = {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
    return {"filters": [hcm_filter]}


def _static_cluster(name: str, port: int, transport_socket: Json | None) -> Json:
    endpoint = {"endpoint": {"address": _address(port)}}
    cluster: Json = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    if transport_socket is not None:
        cluster["transport_socket"] = transport_socket
    return cluster


def server_sidecar_bootstrap(
    *, listen_port: int, admin_port: int, upstream_port: int, pki: Pki | None
) -> Json:
    """The server sidecar: an INBOUND listener (mTLS required when `pki` is given) to the app."""
    chain = _http_filter_chain("inbound", "inbound|80||")
    listener: Json = {
        "name": "virtualInbound",
        "address": _address(listen_port),
        "traffic_direction": "INBOUND",
        "filter_chains": [chain],
    }
    static: Json = {
        "listeners": [listener],
        "clusters": [_static_cluster("inbound|80||", upstream_port, None)],
    }
    if pki is not None:
        chain["filter_chain_match"] = {"transport_protocol": "tls"}
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TLS + "DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": "default"}],
                    "validation_context_sds_secret_config": {"name": "ROOTCA"},
                },
            },
        }
        listener["listener_filters"] = [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": _TLS_INSPECTOR},
            }
        ]
        static["secrets"] = _secrets(pki, "default", pki.server)
    return {
        "node": _node("server"),
        "admin": {"address": _address(admin_port)},
        "static_resources": static,
    }


def client_sidecar_bootstrap(
    *, listen_port: int, admin_port: int, server_port: int, pki: Pki | None
) -> Json:
    """The client sidecar: an OUTBOUND listener to a cluster that is the server sidecar.

    With `pki` the cluster originates mTLS with the client's certificate and
    accepts only a server whose URI SAN is `SERVER_ID`.
    """
    transport: Json | None = None
    if pki is not None:
        transport = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TLS + "UpstreamTlsContext",
                "sni": SERVER_SNI,
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": "default"}],
                    "combined_validation_context": {
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [
                                {"san_type": "URI", "matcher": {"exact": SERVER_ID}}
                            ]
                        },
                        "validation_context_sds_secret_config": {"name": "ROOTCA"},
                    },
                    "alpn_protocols": ["istio-peer-exchange", "istio"],
                },
            },
        }
    cluster_name = "outbound|80||server.bench.svc.cluster.local"
    listener: Json = {
        "name": "outbound",
        "address": _address(listen_port),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [_http_filter_chain("outbound", cluster_name)],
    }
    static: Json = {
        "listeners": [listener],
        "clusters": [_static_cluster(cluster_name, server_port, transport)],
    }
    if pki is not None:
        static["secrets"] = _secrets(pki, "default", pki.client)
    return {
        "node": _node("client"),
        "admin": {"address": _address(admin_port)},
        "static_resources": static,
    }


def pacing_script(rate_per_thread: float) -> str:
    """A wrk Lua script that sends requests on a fixed schedule: `rate_per_thread` per second.

    wrk calls `delay()` before every request of a connection; each call takes the
    next free slot of the thread's schedule (slots are 1/rate apart) and waits
    until it. A slot in the past is sent at once, so the schedule catches up after
    a stall, as in wrk2. wrk's timers have 1 ms resolution: single requests are
    off by up to 0.5 ms, the rate over the run is exact while a connection is free.
    """
    if rate_per_thread <= 0:
        raise ValueError(f"rate per thread must be > 0, got {rate_per_thread}")
    interval_ms = 1000.0 / rate_per_thread
    return f"""\
-- Generated by bench/mesh_bench.py: {rate_per_thread:g} requests/s per wrk thread.
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local interval_ms = {interval_ms!r}
local ts = ffi.new("bench_timespec")
local next_slot = nil

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

function delay()
  local now = now_ms()
  if next_slot == nil then
    next_slot = now
  end
  local wait = next_slot - now
  next_slot = next_slot + interval_ms
  if wait <= 0 then
    return 0
  end
  return math.floor(wait + 0.5)
end
"""


def paced_wrk_argv(
    url: str, *, script: str, threads: int, connections: int, duration_s: int
) -> list[str]:
    """wrk with a Lua script (`-s`) and the latency distribution."""
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        script,
        url,
    ]
