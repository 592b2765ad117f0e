"""Transparent capture's outbound listener: which services get chains by address and
port, which ports go to the routes, and what is left to the passthrough."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from mesh_support import load_config

from trellis.xds.mesh import CaptureMode, ProxyIdentity, TranslateOptions, Translator
from trellis.xds.mesh.registry import Registry
from trellis.xds.mesh.virtual_outbound import OutboundPorts, TcpServicePort, outbound_ports
from trellis.xds.protos import listener_pb2

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cache, namespace: default}
spec:
  hosts: [cache.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 6379, name: redis, protocol: TCP}, {number: 8080, name: http-admin}]
  endpoints: [{address: 10.0.0.4}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  addresses: [10.96.0.20, 10.96.0.20/32, 10.97.0.0/16]
  resolution: STATIC
  ports: [{number: 5432, name: tcp}]
  endpoints: [{address: 10.0.0.5}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-copy, namespace: default}
spec:
  hosts: [db-copy.example.com]
  addresses: [10.96.0.20, 10.96.0.21]
  resolution: STATIC
  ports: [{number: 5432, name: tcp}]
  endpoints: [{address: 10.0.0.6}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: anywhere, namespace: default}
spec:
  hosts: [anywhere.example.com]
  resolution: NONE
  ports: [{number: 9042, name: tcp-cql}, {number: 15001, name: http-odd}]
"""
VIPS = {"cache.default.svc.cluster.local": "240.240.0.3"}
PROXY = ProxyIdentity(node_id="n", workload_name="client", namespace="default")


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_tcp_services_are_matched_by_their_addresses_and_http_by_port() -> None:
    config = replace(load_config(CONFIG), service_vips=VIPS)
    ports = outbound_ports(Registry(config, "default", {}).services, VIPS)
    assert ports == OutboundPorts(
        http=(8080, 15001),
        tcp=(
            # the control plane's VIP for a host without addresses of its own
            TcpServicePort(
                6379, (_net("240.240.0.3/32"),), "outbound|6379||cache.default.svc.cluster.local"
            ),
            # its own addresses, each once; services come in host order and an address
            # and port taken by an earlier one stays with it (db-copy < db)
            TcpServicePort(
                5432,
                (_net("10.96.0.20/32"), _net("10.96.0.21/32")),
                "outbound|5432||db-copy.example.com",
            ),
            TcpServicePort(5432, (_net("10.97.0.0/16"),), "outbound|5432||db.example.com"),
            # `anywhere` has no address: left to the passthrough
        ),
    )


def _virtual_outbound(vips: dict[str, str]) -> listener_pb2.Listener:
    config = replace(load_config(CONFIG), service_vips=vips)
    options = TranslateOptions(capture_mode=CaptureMode.TRANSPARENT)
    parts = Translator(config).translate_parts(PROXY, options)
    listener = parts.listeners["virtualOutbound"]
    assert isinstance(listener, listener_pb2.Listener)
    assert {"PassthroughCluster", "BlackHoleCluster"} <= parts.inbound_clusters.keys()
    return listener


def test_the_capture_port_is_a_blackhole_and_tcp_ports_keep_a_passthrough() -> None:
    chains = {chain.name: chain for chain in _virtual_outbound(VIPS).filter_chains}
    assert chains["virtualOutbound-blackhole"].filter_chain_match.destination_port.value == 15001
    assert "0.0.0.0_15001" not in chains  # an HTTP service on the capture port loses it
    assert "0.0.0.0_8080" in chains
    # 5432 and 6379 have address chains only: unknown addresses there pass through
    for port in (5432, 6379):
        chain = chains[f"PassthroughFilterChain_{port}"]
        assert chain.filter_chain_match.destination_port.value == port
    assert not chains["PassthroughFilterChain"].HasField("filter_chain_match")


def test_a_host_without_a_vip_gets_no_address_chain() -> None:
    names = [chain.name for chain in _virtual_outbound({}).filter_chains]
    assert "outbound|6379||cache.default.svc.cluster.local" not in names
    assert "outbound|5432||db.example.com" in names


def test_explicit_capture_has_no_passthrough() -> None:
    config = replace(load_config(CONFIG), service_vips=VIPS)
    parts = Translator(config).translate_parts(PROXY, TranslateOptions())
    assert "PassthroughCluster" not in parts.inbound_clusters
    assert list(parts.listeners) == ["outbound"]
