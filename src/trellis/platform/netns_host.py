"""The commands behind workload networks: `ip` and `iptables`, run as subprocesses.

Each function does one step and says what failed in a `NetworkError`. The
removal steps are idempotent: they skip what is already gone, so a half-made
network (a launcher that crashed half-way) is removed by the same calls.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trellis.platform.netns_rules import (
    FORWARD_CHAIN_PREFIX,
    INNER_IFNAME,
    RESOLV_CONF,
    NetworkError,
    NetworkSettings,
    forward_rules,
    hosts_file,
)

COMMAND_TIMEOUT = 30.0
ETC_NETNS = Path("/etc/netns")
"""`ip netns exec NAME` bind-mounts each file of /etc/netns/NAME over its /etc twin."""
UNLINK_ATTEMPTS = 10


def run(
    args: Sequence[str], *, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one command to its end (bounded); NetworkError naming it when it fails and `check`."""
    try:
        done = subprocess.run(
            list(args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise NetworkError(f"{args[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise NetworkError(f"`{' '.join(args)}` took over {COMMAND_TIMEOUT:.0f} s") from None
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"status {done.returncode}"
        raise NetworkError(f"`{' '.join(args)}` failed: {detail}")
    return done


def _ip_json(args: Sequence[str]) -> list[dict[str, Any]]:
    done = run(["ip", "-j", *args], check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return []
    data = json.loads(done.stdout)
    return data if isinstance(data, list) else []


# The bridge, on the host.


def check_subnet_free(settings: NetworkSettings) -> None:
    """Refuse a subnet that overlaps a route of the host on another interface."""
    network = settings.network
    for route in _ip_json(["-4", "route", "show"]):
        destination = str(route.get("dst", ""))
        if destination == "default" or route.get("dev") == settings.bridge:
            continue
        try:
            other = ipaddress.IPv4Network(destination, strict=False)
        except ValueError:
            continue
        if network.overlaps(other):
            raise NetworkError(
                f"subnet: {settings.subnet} overlaps the host's route to {destination} "
                f"on {route.get('dev', '?')}; choose another subnet (TRELLIS_NET_SUBNET)"
            )


def ensure_bridge(settings: NetworkSettings) -> None:
    """Make the bridge with the gateway address, or check the one that is there."""
    gateway = f"{settings.gateway}/{settings.network.prefixlen}"
    found = _ip_json(["-d", "-4", "addr", "show", "dev", settings.bridge])
    if not found:
        check_subnet_free(settings)
        run(["ip", "link", "add", settings.bridge, "type", "bridge"])
        run(["ip", "addr", "add", gateway, "dev", settings.bridge])
    else:
        kind = found[0].get("linkinfo", {}).get("info_kind")
        addresses = [
            f"{a.get('local')}/{a.get('prefixlen')}" for a in found[0].get("addr_info", [])
        ]
        if kind != "bridge" or gateway not in addresses:
            raise NetworkError(
                f"bridge: {settings.bridge} exists as a {kind or 'device'} with "
                f"{', '.join(addresses) or 'no IPv4 address'}, not as a bridge with {gateway}; "
                "choose another bridge name (TRELLIS_NET_BRIDGE) or subnet (TRELLIS_NET_SUBNET)"
            )
    run(["ip", "link", "set", settings.bridge, "up"])


def ensure_forward(settings: NetworkSettings) -> None:
    """Accept the bridge's traffic in FORWARD, through a chain of ours jumped to first.

    With `br_netfilter`, frames between two ports of a bridge go through the
    host's FORWARD chain, whose policy Docker sets to DROP.
    """
    chain = settings.forward_chain
    run(["iptables", "-w", "-N", chain], check=False)  # fails when it exists already
    run(["iptables", "-w", "-F", chain])
    for rule in forward_rules(settings.bridge, chain):
        run(["iptables", "-w", *rule])
    if run(["iptables", "-w", "-C", "FORWARD", "-j", chain], check=False).returncode != 0:
        run(["iptables", "-w", "-I", "FORWARD", "1", "-j", chain])


def bridge_exists(bridge: str) -> bool:
    return bool(_ip_json(["link", "show", "dev", bridge]))


def remove_bridge(bridge: str) -> None:
    """Delete the bridge and its FORWARD chain (what is left of them)."""
    chain = FORWARD_CHAIN_PREFIX + bridge
    for _ in range(UNLINK_ATTEMPTS):
        if run(["iptables", "-w", "-D", "FORWARD", "-j", chain], check=False).returncode != 0:
            break
    run(["iptables", "-w", "-F", chain], check=False)
    run(["iptables", "-w", "-X", chain], check=False)
    if bridge_exists(bridge):
        run(["ip", "link", "del", bridge])


# One workload's namespace.


def etc_dir(namespace: str) -> Path:
    return ETC_NETNS / namespace


def write_etc(namespace: str, hosts_text: str) -> None:
    """The namespace's /etc/hosts and /etc/resolv.conf (before anything enters it)."""
    ETC_NETNS.mkdir(mode=0o755, exist_ok=True)
    folder = etc_dir(namespace)
    folder.mkdir(mode=0o755, exist_ok=True)
    (folder / "resolv.conf").write_text(RESOLV_CONF)
    (folder / "hosts").write_text(hosts_file(hosts_text))
    for name in ("hosts", "resolv.conf"):
        (folder / name).chmod(0o644)


def rewrite_in_place(path: Path, text: str) -> None:
    """Replace a file's content keeping its inode: it is bind-mounted into the namespace."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def create_namespace(
    settings: NetworkSettings, namespace: str, host_veth: str, address: str, rules: str
) -> None:
    """The namespace with eth0 on the bridge (address, default route), lo up, and `rules`."""
    prefix_length = settings.network.prefixlen
    run(["ip", "netns", "add", namespace])
    run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", INNER_IFNAME,
         "netns", namespace])  # fmt: skip
    run(["ip", "link", "set", host_veth, "master", settings.bridge, "up"])
    inside = (
        "link set lo up\n"
        f"addr add {address}/{prefix_length} dev {INNER_IFNAME}\n"
        f"link set {INNER_IFNAME} up\n"
        f"route add default via {settings.gateway}\n"
    )
    run(["ip", "-n", namespace, "-batch", "-"], stdin=inside)
    run(["ip", "netns", "exec", namespace, "iptables-restore"], stdin=rules)


def namespace_exists(namespace: str) -> bool:
    return namespace in list_namespaces()


def list_namespaces() -> list[str]:
    """The names `ip netns` knows."""
    done = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def list_veths() -> list[str]:
    return [str(link.get("ifname")) for link in _ip_json(["link", "show", "type", "veth"])]


def remove_namespace(namespace: str, host_veth: str | None) -> None:
    """Delete the namespace, the host end of its veth if it outlives it, and its /etc dir.

    A namespace still holding processes lives on after `ip netns del`, with
    its veth; deleting the host end takes the pair away.
    """
    if namespace_exists(namespace):
        run(["ip", "netns", "del", namespace])
    if host_veth and _ip_json(["link", "show", "dev", host_veth]):
        run(["ip", "link", "del", host_veth], check=False)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(etc_dir(namespace))
