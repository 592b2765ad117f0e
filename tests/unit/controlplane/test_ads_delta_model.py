"""The delta session against a model client: whatever the sequence of snapshots and
subscription changes, once every response is applied the client holds exactly the
subscribed resources, in their current content (seeded random sequences)."""

from __future__ import annotations

import random

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.service.discovery.v3 import discovery_pb2

from trellis.controlplane.ads_delta import DeltaSession
from trellis.controlplane.ads_status import ProxyNode
from trellis.controlplane.snapshot import ENDPOINT_TYPE, Resource, ResourceSet, Snapshot
from trellis.xds.vhds import VIRTUAL_HOST_TYPE, route_config_of

NAMES = [f"r{i}" for i in range(12)]
CONFIGS = ["a", "b", "c"]


def _assignment(name: str, version: int) -> Resource:
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    message.endpoints.add().load_balancing_weight.value = version + 1
    return Resource.of(message)


def _host(name: str, version: int) -> Resource:
    message = route_components_pb2.VirtualHost(name=name, domains=[f"d{version}"])
    return Resource.of(message)


def _random_set(rng: random.Random, type_url: str) -> ResourceSet:
    if type_url == VIRTUAL_HOST_TYPE:
        names = [f"{c}/h{i}" for c in CONFIGS for i in range(4)]
        build = _host
    else:
        names, build = NAMES, _assignment
    chosen = [n for n in names if rng.random() < 0.7]
    return ResourceSet.of(type_url, [build(n, rng.randrange(3)) for n in chosen])


def _covered(type_url: str, wildcard: bool, names: set[str], name: str) -> bool:
    key = route_config_of(name) if type_url == VIRTUAL_HOST_TYPE else name
    return wildcard or key in names


@pytest.mark.parametrize("type_url", [ENDPOINT_TYPE, VIRTUAL_HOST_TYPE])
@pytest.mark.parametrize("seed", range(40))
def test_the_client_ends_up_with_exactly_what_it_subscribed(type_url: str, seed: int) -> None:
    rng = random.Random(seed)
    pool = CONFIGS if type_url == VIRTUAL_HOST_TYPE else NAMES
    session = DeltaSession(ProxyNode(id="p"), clock=lambda: 0.0)
    held: dict[str, str] = {}
    names: set[str] = set()
    wildcard = False
    first = True
    for _ in range(30):
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
        roll = rng.random()
        if first or roll < 0.4:
            added = {n for n in pool if rng.random() < 0.3} - names
            request.resource_names_subscribe.extend(sorted(added))
            names |= added
        elif roll < 0.6:
            dropped = {n for n in names if rng.random() < 0.4}
            request.resource_names_unsubscribe.extend(sorted(dropped))
            names -= dropped
            for name in [n for n in held if not _covered(type_url, wildcard, names, n)]:
                del held[name]  # the client forgets what it unsubscribed
        elif roll < 0.7:
            wildcard = not wildcard
            (
                request.resource_names_subscribe if wildcard else request.resource_names_unsubscribe
            ).append("*")
            if not wildcard:
                for name in [n for n in held if not _covered(type_url, wildcard, names, n)]:
                    del held[name]
        if first and not request.resource_names_subscribe:
            request.resource_names_subscribe.append(pool[0])
            names.add(pool[0])
        first = False
        session.receive(request)
        resources = _random_set(rng, type_url)
        snapshot = Snapshot("v", {type_url: resources})
        for _ in range(4):  # a response, its ACK, and what that lets through
            outgoing = session.responses(snapshot)
            if not outgoing:
                break
            [out] = outgoing
            response = discovery_pb2.DeltaDiscoveryResponse.FromString(out.data)
            for name in response.removed_resources:
                held.pop(name, None)
            for entry in response.resources:
                held[entry.name] = entry.version
            session.receive(
                discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=out.nonce)
            )
        expected = {
            r.name: r.version for r in resources if _covered(type_url, wildcard, names, r.name)
        }
        assert held == expected
