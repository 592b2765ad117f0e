"""The control plane's virtual IPs reach translation: a transparent sidecar's outbound
listener matches a TCP service by its VIP, and a new VIP changes the snapshot."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2

from trellis.api.loader import load_documents
from trellis.controlplane.ads_status import ProxyNode
from trellis.controlplane.mesh_state import MeshState
from trellis.controlplane.snapshot import LISTENER_TYPE

DB = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp-pg}]
  endpoints: [{address: 10.0.0.5}]
"""
CLIENT = ProxyNode(
    id="client",
    workload_name="client",
    namespace="shop",
    metadata={"TRELLIS_CAPTURE_MODE": "transparent"},
)
HOST = "db.shop.svc.cluster.local"


def _prefixes(state: MeshState) -> list[str]:
    [resource] = [
        r for r in state.snapshot_for(CLIENT).get(LISTENER_TYPE) if r.name == "virtualOutbound"
    ]
    listener = resource.message
    assert isinstance(listener, listener_pb2.Listener)
    return [
        f"{cidr.address_prefix}/{cidr.prefix_len.value}:{chain.filter_chain_match.destination_port.value}"
        for chain in listener.filter_chains
        for cidr in chain.filter_chain_match.prefix_ranges
    ]


def test_a_vip_given_to_a_tcp_service_reaches_the_outbound_listener() -> None:
    state = MeshState()
    state.set_registry(load_documents(DB, "test.yaml"))
    assert _prefixes(state) == []  # no address yet: passed through
    state.set_service_vips({HOST: "240.240.0.9"})
    assert _prefixes(state) == ["240.240.0.9/32:5432"]
    translator = state.translator
    state.set_service_vips({HOST: "240.240.0.9"})  # the same table: nothing rebuilt
    assert state.translator is translator
    state.set_service_vips({HOST: "240.240.0.10"})
    assert _prefixes(state) == ["240.240.0.10/32:5432"]
