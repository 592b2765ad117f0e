"""Transparent capture: each workload in a network namespace of its own, on a bridge.

`create_workload_network` makes, for one workload, a namespace whose `eth0`
has a free address of the bridge's subnet, whose `/etc/hosts` the caller
writes (service names → virtual IPs), and whose nat table sends the
application's TCP to its sidecar: outbound to 15001, inbound to 15006 (the
rules: `netns_rules.capture_rules`). The sidecar runs in the same namespace
with the proxy's group id (1337), which the rules let through, and recovers
each connection's destination with `SO_ORIGINAL_DST`.

Commands enter the namespace through `WorkloadNetwork.exec_prefix()` (the
application) and `proxy_prefix()` (the sidecar). `close()` removes what was
made; `remove_stale` (at each launcher's start) removes what launchers that
died left behind. Everything here is synchronous and quick (a few `ip`
commands): an asyncio caller runs it with `asyncio.to_thread`.

A prefix (`NetworkSettings.prefix`) names what belongs to one state
directory: namespaces `<prefix>-<id>` and host veths `<prefix><id>` without a
live record there are removed as leftovers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
from pathlib import Path
from types import TracebackType

from trellis.core.sidecar_ports import (
    PROXY_GID,
)
from trellis.platform import netns_host as host
from trellis.platform import netns_state as state
from trellis.platform.netns_rules import (
    CaptureRules,
    NetworkError,
    NetworkRecord,
    NetworkSettings,
    capture_rules,
    free_address,
    hosts_file,
)
from trellis.platform.paths import release

__all__ = [
    "NetworkError",
    "NetworkSettings",
    "WorkloadNetwork",
    "create_workload_network",
    "remove_stale",
    "transparent_unavailable",
]

TOOLS = (
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("iptables-save", "iptables"),
    ("setpriv", "util-linux"),
    ("unshare", "util-linux"),
)
ID_ATTEMPTS = 20


def transparent_unavailable(settings: NetworkSettings | None = None) -> str | None:
    """Why transparent capture cannot work here, or None when it can.

    Beyond the platform, the user and the tools, the capture rules are
    applied once in a scratch network namespace (which vanishes with its
    process), as the sidecar's group: that proves the nat table, REDIRECT,
    the owner match and `setpriv --pdeathsig`.
    """
    if not sys.platform.startswith("linux"):
        return f"transparent capture needs Linux (namespaces, iptables), not {sys.platform}"
    if os.geteuid() != 0:
        return (
            "transparent capture needs root: it creates network namespaces, a bridge and "
            "iptables rules"
        )
    missing = [
        f"{tool} (Debian package {package})" for tool, package in TOOLS if not shutil.which(tool)
    ]
    if missing:
        return "transparent capture needs " + ", ".join(missing)
    rules = capture_rules(CaptureRules.from_settings(settings or NetworkSettings()))
    gid = str(settings.proxy_gid if settings else PROXY_GID)
    probe = ["unshare", "--net", *_as_proxy(gid), "iptables-restore"]
    try:
        host.run(probe, stdin=rules)
    except NetworkError as error:
        return (
            "transparent capture needs iptables' nat table (REDIRECT, owner match) and "
            f"setpriv --pdeathsig; trying them in a scratch namespace failed: {error}"
        )
    return None


def _as_proxy(gid: str) -> list[str]:
    """Run the rest as group `gid` with no others, keeping uid 0 and the parent-death
    signal (changing the group would clear it: the sidecar must die with its launcher)."""
    return ["setpriv", "--regid", gid, "--clear-groups", "--pdeathsig", "keep", "--"]


class WorkloadNetwork:
    """One workload's namespace, held by this process until `close()`."""

    def __init__(self, settings: NetworkSettings, record: NetworkRecord, lock_fd: int) -> None:
        self.settings = settings
        self.record = record
        self._lock_fd: int | None = lock_fd

    @property
    def namespace(self) -> str:
        return self.record.namespace

    @property
    def address(self) -> str:
        """The workload's own IP (the pod IP): where peers reach it."""
        return self.record.address

    @property
    def gateway(self) -> str:
        """The bridge's address: where processes in the namespace reach the host."""
        return str(self.settings.gateway)

    @property
    def host_veth(self) -> str:
        return self.record.host_veth

    @property
    def hosts_path(self) -> str:
        return str(host.etc_dir(self.namespace) / "hosts")

    def exec_prefix(self) -> list[str]:
        """Put before a command to run it in the namespace (the application)."""
        return ["ip", "netns", "exec", self.namespace]

    def proxy_prefix(self) -> list[str]:
        """Put before the sidecar's command: in the namespace, as the proxy's group."""
        return [*self.exec_prefix(), *_as_proxy(str(self.settings.proxy_gid))]

    def update_hosts(self, text: str) -> None:
        """Replace the namespace's host lines (service VIPs); seen by the next lookup."""
        if self._lock_fd is None:
            raise NetworkError(f"network {self.namespace} is closed")
        host.rewrite_in_place(host.etc_dir(self.namespace) / "hosts", hosts_file(text))

    def iptables_save(self) -> str:
        """The namespace's nat table as `iptables-save` prints it (for debugging)."""
        return host.run([*self.exec_prefix(), "iptables-save", "-t", "nat"]).stdout

    def close(self) -> None:
        """Remove the namespace, its veth, its /etc dir and record; and the bridge when
        no other live network uses it. Safe to call twice."""
        if self._lock_fd is None:
            return
        directory = self.settings.state_dir
        try:
            with state.state_lock(directory):
                host.remove_namespace(self.namespace, self.host_veth)
                state.forget(directory, self.record.network_id)
                _remove_unused_bridge(self.record.bridge, directory)
        finally:
            release(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> WorkloadNetwork:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _remove_unused_bridge(bridge: str, directory: Path) -> bool:
    """Delete `bridge` when no live network uses it (call under the state lock)."""
    if any(s.alive and s.record.bridge == bridge for s in state.read_records(directory)):
        return False
    host.remove_bridge(bridge)
    return True


def create_workload_network(
    workload: str, settings: NetworkSettings, hosts_text: str = ""
) -> WorkloadNetwork:
    """A new namespace for `workload` (a label for records and messages) on the bridge.

    `hosts_text` is the namespace's /etc/hosts after its localhost lines.
    The record is stored (and its lock held) before anything is made, so a
    crash at any point leaves something `remove_stale` finds.
    """
    directory = state.state_dir(settings.state_dir)
    with state.state_lock(directory):
        stored = state.read_records(directory)
        _check_bridge_subnet(settings, stored)
        record = _new_record(workload, settings, stored)
        lock_fd = state.hold_record(directory, record.network_id)
        network = WorkloadNetwork(settings, record, lock_fd)
        try:
            state.write_record(directory, record)
            host.ensure_bridge(settings)
            host.ensure_forward(settings)
            host.write_etc(record.namespace, hosts_text)
            rules = capture_rules(CaptureRules.from_settings(settings))
            host.create_namespace(
                settings, record.namespace, record.host_veth, record.address, rules
            )
        except BaseException:
            with contextlib.suppress(NetworkError):
                host.remove_namespace(record.namespace, record.host_veth)
            state.forget(directory, record.network_id)
            release(lock_fd)
            with contextlib.suppress(NetworkError):
                _remove_unused_bridge(settings.bridge, directory)
            raise
    return network


def _check_bridge_subnet(settings: NetworkSettings, stored: list[state.StoredRecord]) -> None:
    for item in stored:
        record = item.record
        if item.alive and record.bridge == settings.bridge and record.subnet != settings.subnet:
            raise NetworkError(
                f"subnet: bridge {settings.bridge} is in use with subnet {record.subnet} "
                f"(workload {record.workload}), not {settings.subnet}"
            )


def _new_record(
    workload: str, settings: NetworkSettings, stored: list[state.StoredRecord]
) -> NetworkRecord:
    """A record with an unused id and a free address (dead records keep theirs until removed)."""
    on_bridge = [s.record for s in stored if s.record.bridge == settings.bridge]
    address = free_address(settings.network, (r.address for r in on_bridge))
    if address is None:
        raise NetworkError(
            f"subnet: {settings.subnet} has no free address left for another workload"
        )
    taken = {s.record.network_id for s in stored}
    existing = set(host.list_namespaces()) | set(host.list_veths())
    for _ in range(ID_ATTEMPTS):
        network_id = secrets.token_hex(3)
        names = {settings.namespace_name(network_id), settings.veth_name(network_id)}
        if network_id not in taken and not names & existing:
            break
    else:
        raise NetworkError("could not find an unused network id")
    pid = os.getpid()
    return NetworkRecord(
        network_id=network_id,
        workload=workload,
        namespace=settings.namespace_name(network_id),
        host_veth=settings.veth_name(network_id),
        bridge=settings.bridge,
        subnet=settings.subnet,
        address=str(address),
        pid=pid,
        start_time=state.process_start_time(pid),
    )


def remove_stale(settings: NetworkSettings) -> list[str]:
    """Remove what launchers that died left behind; a line per thing removed.

    That is: networks whose record's lock is free (namespace, veth, /etc dir,
    record); namespaces, /etc/netns dirs and host veths named with the
    settings' prefix that no live record owns; bridges no live record uses.
    """
    directory = state.state_dir(settings.state_dir)
    removed: list[str] = []
    with state.state_lock(directory):
        stored = state.read_records(directory)
        live = [s.record for s in stored if s.alive]
        for item in stored:
            if item.alive:
                continue
            record = item.record
            host.remove_namespace(record.namespace, record.host_veth)
            state.forget(directory, record.network_id)
            removed.append(
                f"network {record.namespace} ({record.address}) of workload {record.workload}, "
                f"left by launcher pid {record.pid}"
            )
        removed += _remove_unowned(settings, live)
        bridges = {settings.bridge} | {s.record.bridge for s in stored}
        for bridge in sorted(bridges):
            if host.bridge_exists(bridge) and _remove_unused_bridge(bridge, directory):
                removed.append(f"bridge {bridge}")
    return removed


def _remove_unowned(settings: NetworkSettings, live: list[NetworkRecord]) -> list[str]:
    removed = []
    namespaces = {r.namespace for r in live}
    for name in host.list_namespaces():
        if settings.owns_namespace(name) and name not in namespaces:
            host.remove_namespace(name, host_veth=None)
            removed.append(f"namespace {name} (no record)")
    with contextlib.suppress(FileNotFoundError):
        for folder in sorted(host.ETC_NETNS.iterdir())[: state.SCAN_LIMIT]:
            if settings.owns_namespace(folder.name) and folder.name not in namespaces:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(f"{folder} (no record)")
    veths = {r.host_veth for r in live}
    for name in host.list_veths():
        if settings.owns_veth(name) and name not in veths:
            host.run(["ip", "link", "del", name], check=False)
            removed.append(f"veth {name} (no record)")
    return removed
