"""Transparent capture's namespaces, bridge and iptables rules, for real (root on Linux).

Each test gets its own prefix, bridge and /24 (`tt<random>`, 10.214.N.0/24),
so it never touches a user's `trellis0` or another test's networks. Probes
(`apps/capture_probe.py`) run inside the namespaces and report where each
connection landed and what its original destination was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from trellis.platform import netns_host
from trellis.platform.child import spawn
from trellis.platform.netns import (
    NetworkError,
    NetworkSettings,
    WorkloadNetwork,
    create_workload_network,
    remove_stale,
    transparent_unavailable,
)

UNAVAILABLE = transparent_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

APPS = Path(__file__).parent / "apps"
PROBE = str(APPS / "capture_probe.py")
HOLDER = str(APPS / "netns_holder.py")
WAIT = 10.0
EXCLUDED = 9000
"""An inbound port the test settings exclude besides the sidecar's own."""


def unique_settings(tmp_path: Path, **overrides: object) -> NetworkSettings:
    prefix = "tt" + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
    fields: dict[str, object] = {
        "bridge": f"{prefix}br",
        "subnet": f"10.214.{random.randrange(256)}.0/24",
        "prefix": prefix,
        "state_dir": tmp_path / "net-state",
        "exclude_inbound_ports": (EXCLUDED,),
    }
    fields.update(overrides)
    return NetworkSettings(**fields)  # type: ignore[arg-type]


def leftovers(settings: NetworkSettings) -> list[str]:
    """Everything of these settings' prefix still on the machine."""
    found = [n for n in netns_host.list_namespaces() if settings.owns_namespace(n)]
    found += [v for v in netns_host.list_veths() if settings.owns_veth(v)]
    if netns_host.ETC_NETNS.is_dir():
        found += [str(p) for p in netns_host.ETC_NETNS.iterdir() if settings.owns_namespace(p.name)]
    if netns_host.bridge_exists(settings.bridge):
        found.append(f"bridge {settings.bridge}")
    chains = subprocess.run(["iptables", "-S"], check=False, capture_output=True, text=True).stdout
    if settings.forward_chain in chains:
        found.append(f"chain {settings.forward_chain}")
    if settings.state_dir.is_dir():
        found += [p.name for p in settings.state_dir.iterdir() if p.name != "lock"]
    return found


@dataclass
class Nets:
    settings: NetworkSettings
    make: Callable[..., WorkloadNetwork]


@pytest.fixture
def nets(tmp_path: Path) -> Iterator[Nets]:
    settings = unique_settings(tmp_path)
    made: list[WorkloadNetwork] = []

    def make(name: str = "w", hosts_text: str = "", **overrides: object) -> WorkloadNetwork:
        chosen = unique_settings(tmp_path, **overrides) if overrides else settings
        network = create_workload_network(name, chosen, hosts_text)
        made.append(network)
        return network

    try:
        yield Nets(settings, make)
    finally:
        for network in made:
            network.close()
        remove_stale(settings)
        assert leftovers(settings) == []


@pytest.fixture
def serve() -> Iterator[Callable[[list[str], str, list[int]], None]]:
    """serve(prefix, name, ports): a probe listening inside a namespace until the test ends."""
    started: list[subprocess.Popen[str]] = []

    def start(prefix: list[str], name: str, ports: list[int]) -> None:
        command = [*prefix, sys.executable, PROBE, "serve", name, *map(str, ports)]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], WAIT)
        assert ready and process.stdout.readline().strip() == "ready", f"probe {name} did not start"

    try:
        yield start
    finally:
        for process in started:
            process.terminate()
            finish(process)


def finish(process: subprocess.Popen[str]) -> int:
    """Wait for a child we started, then close our ends of its pipes."""
    try:
        return process.wait(WAIT)
    finally:
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def reach(prefix: list[str], host: str, port: int, timeout: float = 5.0) -> str:
    """Connect from inside a namespace; the reply (`NAME PORT ORIGINAL PEER`) or `failed: ...`."""
    command = [*prefix, sys.executable, PROBE, "connect", host, str(port), str(timeout)]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=timeout + WAIT
    )
    return done.stdout.strip() if done.returncode == 0 else f"failed: {done.stderr.strip()}"


def reach_from_host(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5.0) as conn:
        return conn.makefile("r").readline().strip()


def landed(reply: str) -> tuple[str, int, str]:
    """(probe name, port accepted on, original destination) of a reply."""
    name, port, original, _peer = reply.split()
    return name, int(port), original


SIDECAR_LISTENERS = [15001, 15006, 15000, 15021, 8080, EXCLUDED]


def test_inbound_tcp_goes_to_the_inbound_port_except_excluded_ports(
    nets: Nets, serve: Callable[[list[str], str, list[int]], None]
) -> None:
    b = nets.make("b")
    serve(b.exec_prefix(), "B", SIDECAR_LISTENERS)
    assert landed(reach_from_host(b.address, 8080)) == ("B", 15006, f"{b.address}:8080")
    assert landed(reach_from_host(b.address, 12345)) == ("B", 15006, f"{b.address}:12345")
    for port in (15000, 15021, EXCLUDED):
        assert landed(reach_from_host(b.address, port)) == ("B", port, f"{b.address}:{port}")


def test_the_applications_outbound_tcp_goes_to_its_outbound_port(
    nets: Nets, serve: Callable[[list[str], str, list[int]], None]
) -> None:
    a, b = nets.make("a"), nets.make("b")
    serve(a.exec_prefix(), "A", SIDECAR_LISTENERS)
    serve(b.exec_prefix(), "B", SIDECAR_LISTENERS)
    app = a.exec_prefix()
    assert landed(reach(app, "203.0.113.9", 80)) == ("A", 15001, "203.0.113.9:80")
    assert landed(reach(app, b.address, 8080)) == ("A", 15001, f"{b.address}:8080")
    assert landed(reach(app, b.address, 15000)) == ("A", 15001, f"{b.address}:15000")


def test_the_proxy_group_is_not_captured_outbound(
    nets: Nets, serve: Callable[[list[str], str, list[int]], None]
) -> None:
    a, b = nets.make("a"), nets.make("b")
    serve(a.exec_prefix(), "A", SIDECAR_LISTENERS)
    serve(b.exec_prefix(), "B", SIDECAR_LISTENERS)
    proxy = a.proxy_prefix()
    # A's sidecar reaches B, where inbound capture takes it (B's admin port is excluded).
    assert landed(reach(proxy, b.address, 8080)) == ("B", 15006, f"{b.address}:8080")
    assert landed(reach(proxy, b.address, 15000)) == ("B", 15000, f"{b.address}:15000")
    assert not reach(proxy, "203.0.113.9", 80, timeout=1.0).startswith("A 15001")


def test_loopback_rules_follow_istio(
    nets: Nets, serve: Callable[[list[str], str, list[int]], None]
) -> None:
    a = nets.make("a")
    serve(a.exec_prefix(), "A", SIDECAR_LISTENERS)
    app, proxy = a.exec_prefix(), a.proxy_prefix()
    assert landed(reach(app, "127.0.0.1", 8080))[:2] == ("A", 8080)
    assert landed(reach(app, a.address, 8080))[:2] == ("A", 8080)  # the app calling itself
    assert landed(reach(proxy, "127.0.0.1", 8080))[:2] == ("A", 8080)  # proxy -> its app
    # The proxy calling its own workload's address goes through inbound capture.
    assert landed(reach(proxy, a.address, 8080)) == ("A", 15006, f"{a.address}:8080")


def test_service_names_resolve_from_the_hosts_text(nets: Nets) -> None:
    a = nets.make("a", hosts_text="10.99.0.5 payment payment.shop.svc.cluster.local")

    def resolve(name: str) -> tuple[str, float]:
        code = f"import socket; print(socket.gethostbyname({name!r}))"
        started = time.monotonic()
        done = subprocess.run(
            [*a.exec_prefix(), sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        took = time.monotonic() - started
        return (done.stdout.strip() if done.returncode == 0 else "unresolved"), took

    assert resolve("payment.shop.svc.cluster.local")[0] == "10.99.0.5"
    assert resolve("localhost")[0] == "127.0.0.1"
    unknown, took = resolve("nowhere.example.invalid")
    assert unknown == "unresolved"
    assert took < 3.0, f"an unknown name took {took:.1f} s to fail"
    inode = os.stat(a.hosts_path).st_ino
    a.update_hosts("10.99.0.7 payment payment.shop.svc.cluster.local\n10.99.0.8 cart\n")
    assert os.stat(a.hosts_path).st_ino == inode
    assert resolve("payment")[0] == "10.99.0.7"
    assert resolve("cart")[0] == "10.99.0.8"


def test_the_proxy_prefix_sets_the_group_and_keeps_the_parent_death_signal(nets: Nets) -> None:
    a = nets.make("a")
    code = (
        "import ctypes, os; c = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(c)); "
        "print(c.value, os.getuid(), os.getgid(), os.getegid(), os.getgroups())"
    )

    async def run() -> str:
        command = [*a.proxy_prefix(), sys.executable, "-c", code]
        process = await spawn(command, dict(os.environ), stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(process.communicate(), WAIT)
        return out.decode().strip()

    assert asyncio.run(run()) == f"{int(signal.SIGTERM)} 0 1337 1337 []"


def test_close_removes_everything_and_the_bridge_with_the_last(nets: Nets) -> None:
    settings = nets.settings
    a, b = nets.make("a"), nets.make("b")
    assert a.address != b.address
    assert len(a.host_veth) <= 15 and len(b.host_veth) <= 15
    a.close()
    a.close()  # twice is fine
    assert a.namespace not in netns_host.list_namespaces()
    assert a.host_veth not in netns_host.list_veths()
    assert not netns_host.etc_dir(a.namespace).exists()
    assert netns_host.bridge_exists(settings.bridge)  # b still uses it
    assert b.namespace in netns_host.list_namespaces()
    b.close()
    assert leftovers(settings) == []


def test_a_subnet_in_use_and_a_clashing_bridge_are_refused(nets: Nets) -> None:
    a = nets.make("a")
    tmp_path = nets.settings.state_dir.parent
    other = unique_settings(tmp_path, bridge=nets.settings.bridge, subnet="10.215.0.0/24")
    with pytest.raises(NetworkError, match=r"subnet: bridge \S+ is in use with subnet"):
        create_workload_network("c", other)
    clash = unique_settings(tmp_path / "elsewhere", subnet=nets.settings.subnet)
    with pytest.raises(NetworkError, match="overlaps the host's route"):
        create_workload_network("c", clash)
    assert leftovers(clash) == []
    assert a.namespace in netns_host.list_namespaces()


def start_holder(
    settings: NetworkSettings, count: int, wrap: list[str] | None = None
) -> tuple[subprocess.Popen[str], list[dict[str, object]]]:
    fields = {**asdict(settings), "state_dir": str(settings.state_dir)}
    command = [*(wrap or []), sys.executable, HOLDER, json.dumps(fields), str(count)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    records: list[dict[str, object]] = []
    watchdog = threading.Timer(30.0, process.kill)  # bounds the blocking reads below
    watchdog.start()
    try:
        for line in process.stdout:  # bounded: the holder prints `held` or is killed
            if line.strip() == "held":
                return process, records
            records.append(json.loads(line))
    finally:
        watchdog.cancel()
    process.kill()
    finish(process)
    raise AssertionError(f"holder did not make its networks (status {process.poll()})")


def release_holder(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        process.stdin.write("close\n")
        process.stdin.flush()
    assert finish(process) == 0


def test_remove_stale_removes_a_crashed_launchers_networks_and_unowned_names(
    nets: Nets, serve: Callable[[list[str], str, list[int]], None]
) -> None:
    settings = nets.settings
    alive = nets.make("alive")
    holder, records = start_holder(settings, 2)
    holder.kill()  # the launcher crashes
    finish(holder)
    dead = [str(r["namespace"]) for r in records]
    assert set(dead) <= set(netns_host.list_namespaces())
    orphan = settings.namespace_name("abcdef")  # a namespace with no record
    netns_host.run(["ip", "netns", "add", orphan])
    stranger = NetworkSettings(prefix="ttother", state_dir=settings.state_dir).namespace_name(
        "abcdef"
    )
    netns_host.run(["ip", "netns", "add", stranger])
    try:
        removed = remove_stale(settings)
        remaining = netns_host.list_namespaces()
        assert stranger in remaining  # another prefix: not ours to remove
    finally:
        netns_host.run(["ip", "netns", "del", stranger], check=False)
    assert not set(dead) & set(remaining)
    assert orphan not in remaining
    assert all(str(r["host_veth"]) not in netns_host.list_veths() for r in records)
    assert any("left by launcher pid" in line for line in removed), removed
    assert any(orphan in line for line in removed), removed
    # The live network is untouched and still works.
    assert alive.namespace in remaining
    serve(alive.exec_prefix(), "L", [15006])
    assert landed(reach_from_host(alive.address, 80))[:2] == ("L", 15006)


def test_concurrent_launchers_get_distinct_addresses(tmp_path: Path) -> None:
    settings = unique_settings(tmp_path)
    holders = [start_holder(settings, 3) for _ in range(4)]
    try:
        addresses = [str(r["address"]) for _, records in holders for r in records]
        assert len(addresses) == 12
        assert len(set(addresses)) == 12
    finally:
        for process, _ in holders:
            release_holder(process)
        remove_stale(settings)
    assert leftovers(settings) == []


def test_bridged_traffic_passes_a_dropping_forward_chain(
    tmp_path: Path, serve: Callable[[list[str], str, list[int]], None]
) -> None:
    """The host here is a scratch network namespace whose FORWARD policy is DROP."""
    if not shutil.which("nsenter"):
        pytest.skip("needs nsenter (util-linux)")
    settings = unique_settings(tmp_path)
    script = 'ip link set lo up && iptables -P FORWARD DROP && exec "$@"'
    outer = ["unshare", "--net", "sh", "-c", script, "-"]
    holder, records = start_holder(settings, 2, wrap=outer)
    try:
        in_outer = ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
        bridge_nf = subprocess.run(
            [*in_outer, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
            check=False,
            capture_output=True,
            text=True,
        )
        if bridge_nf.stdout.strip() != "1":
            pytest.skip("br_netfilter is not loaded: bridged traffic skips FORWARD here")
        a, b = (str(r["namespace"]) for r in records)
        b_address = str(records[1]["address"])
        serve(["ip", "netns", "exec", b], "B", [15000])
        proxy_in_a = ["ip", "netns", "exec", a, "setpriv", "--regid", "1337", "--clear-groups"]
        assert landed(reach(proxy_in_a, b_address, 15000))[:2] == ("B", 15000)
        # Without the jump to our chain, the policy drops it: the chain is what lets it pass.
        netns_host.run([*in_outer, "iptables", "-D", "FORWARD", "-j", settings.forward_chain])
        assert reach(proxy_in_a, b_address, 15000, timeout=1.0).startswith("failed:")
    finally:
        release_holder(holder)
    remove_stale(settings)
    assert leftovers(settings) == []
