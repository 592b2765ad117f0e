"""The leader's status writer against the stand-in API server (`kube_standin`, a test double).

In process: the writer's rounds over a real `KubeConfigStore` on 127.0.0.1 patch
each CRD object's `status` subresource with the analysis findings, write
nothing when an object's status is already right, stop when leadership goes,
stay within their bound, and survive a refused write.

As subprocesses: two `trellis control-plane --platform kubernetes --leader-lease`
replicas (each with its own bearer token, so the stand-in tells their requests
apart): only the leader patches; a VirtualService routing to an unknown host
gets IST0101 in its status, and loses it once it routes to a Kubernetes
Service; an unchanged object is not patched again, not even by a new leader.
The stand-in refuses what the install's RBAC does not grant (`kube_rbac`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trellis.controlplane.api_kinds import KINDS
from trellis.controlplane.kube_client import connect
from trellis.controlplane.kube_status import RoundResult, StatusWriter
from trellis.controlplane.kube_store import KubeConfigStore
from trellis.controlplane.store import ResourceWrite
from trellis.kube.crds import crd_manifests, crd_names
from trellis.kube.install_rbac import rbac_manifests, service_account
from trellis.kube.install_settings import InstallNames
from trellis.kube.status import CONDITION_TYPE

from ..kube_rbac import RbacAuthorizer
from ..kube_standin import LEASES, Access, ApiStatusError, KubeStandIn, StandInServer
from .mesh_procs import ControlPlane, until

ISTIO = "networking.istio.io"
NS = "shop"
VS_KEY = ("VirtualService", NS, "reviews")
TEST_TIMEOUT = 20.0


def virtual_service(host: str, name: str = "reviews") -> dict[str, Any]:
    return {
        "apiVersion": f"{ISTIO}/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": host}}]}]},
    }


def service_entry(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{ISTIO}/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "hosts": [f"{name}.{NS}.svc.cluster.local"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": "10.0.0.7"}],
        },
    }


@pytest.fixture
def standin() -> Iterator[StandInServer]:
    server = StandInServer(KubeStandIn((LEASES,), bookmark_interval=0.5)).start()
    try:
        yield server
    finally:
        server.stop()


def put(server: StandInServer, plural: str, obj: dict[str, Any], group: str = ISTIO) -> Any:
    return server.call(lambda: server.standin.put(plural, obj, group))


def status_of(server: StandInServer, plural: str, name: str) -> dict[str, Any]:
    found = server.call(lambda: server.standin.get_object(plural, NS, name, ISTIO))
    return dict(found.get("status") or {})


def patches(server: StandInServer, name: str | None = None, token: str | None = None) -> int:
    """How many status PATCHes (of object `name`, by the client with `token`) were made."""
    calls: list[tuple[str, str]] = server.call(lambda: list(server.standin.calls))
    return sum(
        1
        for caller, line in calls
        if line.startswith("PATCH ")
        and line.endswith("/status")
        and (name is None or line.endswith(f"/{name}/status"))
        and (token is None or caller == token)
    )


def vs_version(server: StandInServer) -> str:
    obj = server.call(lambda: server.standin.get_object("virtualservices", NS, "reviews", ISTIO))
    return str(obj["metadata"]["resourceVersion"])


def codes(status: dict[str, Any]) -> list[str]:
    return [message["type"]["code"] for message in status.get("validationMessages", [])]


def run(main: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT))


async def settled(store: KubeConfigStore, check: Callable[[dict[str, Any]], bool]) -> None:
    """Until the store's cache holds statuses (name -> status) that pass `check` (bounded)."""
    for _ in range(100):
        states = {record.name: dict(state.status) for record, state in store.object_states()}
        if check(states):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the store's cache did not settle: {states}")


def test_a_round_writes_the_findings_then_nothing_until_they_change(
    standin: StandInServer, tmp_path: Path
) -> None:
    put(standin, "virtualservices", virtual_service("nowhere"))
    put(standin, "serviceentries", service_entry("ratings"))
    invalid = virtual_service("ratings", name="invalid")
    invalid["spec"]["mirror"] = {"host": "ratings"}  # a field Trellis refuses
    put(standin, "virtualservices", invalid)
    kubeconfig = standin.kubeconfig(tmp_path / "kubeconfig")

    async def main() -> None:
        client = connect(kubeconfig)
        async with await KubeConfigStore.open(client, own_client=True) as store:
            writer = StatusWriter(store, lambda: True)
            events = store.watch()
            assert await writer.write_round() == RoundResult(written=2)
            vs = status_of(standin, "virtualservices", "reviews")
            assert codes(vs) == ["IST0101"] and vs["observedGeneration"] == 1
            assert vs["conditions"][0]["type"] == CONDITION_TYPE
            assert vs["conditions"][0]["status"] == "False"
            se = status_of(standin, "serviceentries", "ratings")
            assert codes(se) == [] and se["conditions"][0]["status"] == "True"
            assert status_of(standin, "virtualservices", "invalid") == {}  # not analysed
            generation = standin.call(
                lambda: standin.standin.get_object("virtualservices", NS, "reviews", ISTIO)
            )["metadata"]["generation"]
            assert generation == 1  # a status write is not a new generation

            # The writes reach the store's cache, but no watcher: they change no config.
            await settled(store, lambda states: codes(states["reviews"]) == ["IST0101"])
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(events), 0.5)
            before = patches(standin)
            assert await writer.write_round() == RoundResult()
            assert patches(standin) == before

            # Fixed through the store, with the resourceVersion it reads now (the status
            # write moved it): routed to the ServiceEntry's host, the finding goes.
            current = await store.get(*VS_KEY)
            assert current is not None and current.resource_version == vs_version(standin)
            fixed = virtual_service("ratings")
            write = ResourceWrite(
                fixed["apiVersion"], *VS_KEY, spec=fixed["spec"],
                expected_version=current.resource_version,
            )  # fmt: skip
            await store.apply([write])
            event = await asyncio.wait_for(anext(events), 5)
            assert event.resource.generation == 2
            assert await writer.write_round() == RoundResult(written=1)
            vs = status_of(standin, "virtualservices", "reviews")
            assert "validationMessages" not in vs and vs["observedGeneration"] == 2
            assert vs["conditions"][0]["status"] == "True"
            assert patches(standin, "ratings") == 1  # unchanged: written once only
            assert patches(standin, "invalid") == 0

    run(main)


def test_rounds_are_bounded_stop_without_leadership_and_survive_failures(
    standin: StandInServer, tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        put(standin, "serviceentries", service_entry(name))
    kubeconfig = standin.kubeconfig(tmp_path / "kubeconfig")
    leading: list[bool] = []  # answers to come; empty: leading

    def is_leader() -> bool:
        return leading.pop(0) if leading else True

    async def main() -> None:
        async with await KubeConfigStore.open(connect(kubeconfig), own_client=True) as store:
            writer = StatusWriter(store, is_leader, max_writes=2)
            assert await writer.write_round() == RoundResult(written=2, left=1)
            await settled(store, lambda states: sum(bool(s) for s in states.values()) == 2)
            assert await writer.write_round() == RoundResult(written=1)
            await settled(store, lambda states: all(states.values()))

            # A write the API server refuses is counted, logged and made in a later round.
            put(standin, "serviceentries", service_entry("d"))
            await settled(store, lambda states: "d" in states)
            standin.call(lambda: setattr(standin.standin, "fail_requests", 1))
            assert await writer.write_round() == RoundResult(failed=1)
            assert await writer.write_round() == RoundResult(written=1)
            await settled(store, lambda states: all(states.values()))

            # Not leading: nothing is written; leadership lost mid-round: the rest waits.
            put(standin, "serviceentries", service_entry("e"))
            put(standin, "serviceentries", service_entry("f"))
            await settled(store, lambda states: {"e", "f"} <= set(states))
            leading[:] = [False]
            assert await writer.write_round() == RoundResult()
            leading[:] = [True, True, False]  # the round's start, the write of e, then f
            assert await writer.write_round() == RoundResult(written=1, left=1)
            assert (patches(standin, "e"), patches(standin, "f")) == (1, 0)

    run(main)


# -- two replicas, as subprocesses --


def replica_kubeconfig(path: Path, server: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": {"server": server}}],
        "users": [{"name": "cp", "user": {"token": token}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "cp"}}],
        "current-context": "standin",
    }
    path.write_text(json.dumps(config))
    return path


def start_replica(
    name: str, server: StandInServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ControlPlane:
    kubeconfig = replica_kubeconfig(tmp_path / f"{name}.kubeconfig", server.url, f"token-{name}")
    monkeypatch.setenv("POD_NAME", name)  # the downward API's, as the Deployment sets them
    monkeypatch.setenv("POD_NAMESPACE", "trellis-system")
    return ControlPlane(
        tmp_path / name,
        "--platform", "kubernetes", "--kubeconfig", str(kubeconfig), "--xds-socket", "",
        "--ca-authentication", "token-review", "--leader-lease", "trellis-leader",
    ).start()  # fmt: skip


def wait_status(
    server: StandInServer, name: str, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """VirtualService `name`'s status, once it passes `check` (bounded wait)."""

    def probe() -> dict[str, Any] | None:
        status = status_of(server, "virtualservices", name)
        return status if check(status) else None

    found = until(probe, what=what)
    assert found is not None
    return found


def holder(server: StandInServer) -> str:
    """Who holds the Lease ("" before it exists)."""

    def read() -> str:
        try:
            lease = server.standin.get_object(
                "leases", "trellis-system", "trellis-leader", LEASES.group
            )
        except ApiStatusError:
            return ""
        return str(lease["spec"].get("holderIdentity") or "")

    result: str = server.call(read)
    return result


def installed_rbac() -> RbacAuthorizer:
    """What the install's RBAC lets the control plane's ServiceAccount do."""
    names = InstallNames("trellis-system")
    manifests = [service_account(names), *rbac_manifests(names, crd_names(crd_manifests(KINDS)))]
    return RbacAuthorizer.for_account(manifests, names.namespace, names.control_plane)


def test_only_the_leader_writes_status_and_only_what_changed(
    standin: StandInServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stand-in answers 403 to whatever the installed RBAC does not grant.
    rbac = installed_rbac()
    standin.call(lambda: setattr(standin.standin, "authorize", rbac.allows))
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    put(standin, "namespaces", namespace, "")
    payment = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "payment", "namespace": NS},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
    }
    put(standin, "services", payment, "")
    put(standin, "virtualservices", virtual_service("nowhere"))
    first = start_replica("cp-0", standin, tmp_path, monkeypatch)
    replicas = [first]
    try:
        until(lambda: holder(standin) == "cp-0", what="cp-0 leading")
        second = start_replica("cp-1", standin, tmp_path, monkeypatch)
        replicas.append(second)

        # The leader reports the unknown host on the object kubectl created.
        status = wait_status(
            standin,
            "reviews",
            lambda s: codes(s) == ["IST0101"],
            f"IST0101 in the status\n{first.log_text()[-2000:]}",
        )
        assert status["observedGeneration"] == 1

        # Routed to the Kubernetes Service (the registry): the message is cleared.
        put(standin, "virtualservices", virtual_service("payment"))
        status = wait_status(
            standin,
            "reviews",
            lambda s: s.get("observedGeneration") == 2,
            "the status of generation 2",
        )
        assert "validationMessages" not in status
        assert status["conditions"][0]["status"] == "True"

        # Another object's change makes a round; the unchanged VirtualService is not patched.
        written = patches(standin, "reviews")
        put(standin, "serviceentries", service_entry("ratings"))
        until(lambda: status_of(standin, "serviceentries", "ratings"), what="ratings' status")
        assert patches(standin, "reviews") == written == 2
        assert patches(standin, token="token-cp-1") == 0  # the follower wrote nothing

        # The leader goes (releasing the Lease); the new one writes only what changed.
        first.stop()
        until(lambda: holder(standin) == "cp-1", timeout=20, what="cp-1 leading")
        until(lambda: "writing the status" in second.log_text(), what="cp-1 writing status")
        put(standin, "virtualservices", virtual_service("ratings", name="details"))
        status = wait_status(standin, "details", bool, "details' status from the new leader")
        assert codes(status) == [] and status["conditions"][0]["status"] == "True"
        assert patches(standin, "details", token="token-cp-1") == 1
        assert patches(standin, "reviews") == 2 and patches(standin, "ratings") == 1
        for replica in replicas:
            assert "Traceback" not in replica.log_text(), replica.log_text()[-3000:]
        accesses = standin.call(lambda: list(standin.standin.accesses))
        assert Access("patch", ISTIO, "virtualservices/status", NS, "reviews") in accesses
        assert standin.call(lambda: list(standin.standin.denied)) == []
    finally:
        for replica in replicas:
            replica.stop()
