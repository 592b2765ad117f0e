"""Transparent capture: a listener with `use_original_dst` and one filter chain per
destination port, in a real `trellis proxy`.

Without a redirect (any user) the original destination is the socket's own
address, so the chain naming the listener's port takes the connection. In a
network namespace the test creates (root, iptables), iptables REDIRECTs
connections to ports 8080, 5432 and 7777 to the listener on 15006, and the
proxy's SO_ORIGINAL_DST picks the HTTP chain for 8080, the TCP chain for 5432
(whose RBAC allows destination port 5432 only), and no chain for 7777.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .bootstrap import (
    Json,
    address,
    bootstrap,
    cluster,
    free_port,
    http_listener,
    route,
    tcp_listener,
    virtual_host,
)
from .harness import ProxyFactory
from .proxyproc import metric_sum, proxy_command
from .tcp_upstream import TcpUpstream

RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
PEER = Path(__file__).with_name("netns_peer.py")
INBOUND_PORT = 15006
ADMIN_PORT = 15000
HTTP_PORT, TCP_PORT, UNKNOWN_PORT = 8080, 5432, 7777  # what clients dial
HTTP_APP, TCP_APP = 18080, 15432  # where the applications listen (not redirected)
STEP_TIMEOUT = 30.0


def _chain(port: int, listener: Json, *, name: str) -> Json:
    """The filters of a one-chain `listener`, as the chain of destination `port`."""
    return {
        "name": name,
        "filter_chain_match": {"destination_port": port},
        "filters": listener["filter_chains"][0]["filters"],
    }


def _access_log(path: Path, what: str) -> Json:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_LOG,
            "path": str(path),
            "log_format": {
                "text_format_source": {"inline_string": f"%DOWNSTREAM_LOCAL_ADDRESS% {what}\n"}
            },
        },
    }


def _only_port(port: int) -> Json:
    """Network RBAC that lets in connections to destination `port` only."""
    policy = {"permissions": [{"destination_port": port}], "principals": [{"any": True}]}
    rules = {"action": "ALLOW", "policies": {"port-only": policy}}
    typed = {"@type": RBAC, "stat_prefix": "tcp.", "rules": rules}
    return {"name": "envoy.filters.network.rbac", "typed_config": typed}


def _tcp_echo(port: int) -> tuple[bytes, bool]:
    """Send one byte and half-close; what came back and whether the proxy closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(b"x")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            for _ in range(64):
                chunk = sock.recv(65536)
                if not chunk:
                    return data, True
                data += chunk
        except OSError:  # reset, or closed before our half-close: refused
            return b"", True
    return data, False


# --- without a redirect: the socket's own port -----------------------------------------


def test_without_a_redirect_the_chain_of_the_listeners_own_port_serves(
    start_proxy: ProxyFactory, tcp_upstream_factory: Callable[[str], TcpUpstream]
) -> None:
    own, other = tcp_upstream_factory("reply"), tcp_upstream_factory("reply")
    port, elsewhere, refusing = free_port(), free_port(), free_port()
    virtual = {
        "name": "virtual",
        "address": address(port),
        "use_original_dst": True,
        "filter_chains": [
            _chain(elsewhere, tcp_listener("other", 0, "other"), name="other"),
            _chain(port, tcp_listener("own", 0, "own"), name="own"),
        ],
    }
    nothing = {  # no chain for its own port: every connection is refused
        "name": "nothing",
        "address": address(refusing),
        "filter_chains": [_chain(elsewhere, tcp_listener("none", 0, "other"), name="none")],
    }
    config = bootstrap(
        free_port(),
        [virtual, nothing],
        [cluster("own", [own.port]), cluster("other", [other.port])],
    )
    proxy = start_proxy(config)
    assert _tcp_echo(port) == (b"received 1 bytes", True)
    assert (own.connections_accepted, other.connections_accepted) == (1, 0)
    assert _tcp_echo(refusing) == (b"", True)
    assert other.connections_accepted == 0
    refused = metric_sum(
        proxy.samples(),
        "envoy_listener_no_filter_chain_match_total",  # the parser adds _total
        envoy_listener_address=f"127.0.0.1:{refusing}",
    )
    assert refused == 1


# --- in a network namespace, with iptables -------------------------------------------


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=check)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh network namespace with loopback up, deleted afterwards (which also
    removes its iptables rules)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns and iptables")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    name = f"trellis-odst-{uuid.uuid4().hex[:8]}"
    made = _run("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        for port in (HTTP_PORT, TCP_PORT, UNKNOWN_PORT):
            rule = _run(
                "ip", "netns", "exec", name,
                "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.1",
                "--dport", str(port), "-j", "REDIRECT", "--to-ports", str(INBOUND_PORT),
                check=False,
            )  # fmt: skip
            if rule.returncode != 0:
                pytest.skip(f"iptables REDIRECT is not available: {rule.stderr.strip()}")
        yield name
    finally:
        _run("ip", "netns", "del", name, check=False)


def _virtual_inbound(log: Path) -> Json:
    web = http_listener(
        "web",
        0,
        [virtual_host("app", [route("http-app")])],
        access_log=[_access_log(log, "http")],
    )
    db = tcp_listener("db", 0, "tcp-app", access_log=[_access_log(log, "tcp")])
    db["filter_chains"][0]["filters"].insert(0, _only_port(TCP_PORT))
    listener = {
        "name": "virtualInbound",
        "address": address(INBOUND_PORT, "0.0.0.0"),
        "use_original_dst": True,
        "traffic_direction": "INBOUND",
        "filter_chains": [
            _chain(HTTP_PORT, web, name=f"inbound|{HTTP_PORT}||"),
            _chain(TCP_PORT, db, name=f"inbound|{TCP_PORT}||"),
        ],
    }
    clusters = [cluster("http-app", [HTTP_APP]), cluster("tcp-app", [TCP_APP])]
    return bootstrap(ADMIN_PORT, [listener], clusters)


def _in_namespace(namespace: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_so_original_dst_picks_the_chain_of_the_original_port(
    namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(_virtual_inbound(log)))
    apps = subprocess.Popen(
        _in_namespace(namespace, sys.executable, str(PEER), "serve", str(HTTP_APP), str(TCP_APP)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stderr = tmp_path / "proxy.stderr"
    with stderr.open("wb") as err:
        proxy = subprocess.Popen(
            _in_namespace(namespace, *proxy_command(path)),
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        assert apps.stdout is not None and apps.stdout.readline().strip() == "ready"
        steps = [
            f"http:{HTTP_PORT}",
            f"tcp:{TCP_PORT}",
            f"tcp:{UNKNOWN_PORT}",
            "admin:/stats/prometheus",
        ]
        fetched = _run(
            *_in_namespace(namespace, sys.executable, str(PEER), "fetch", str(ADMIN_PORT), *steps),
            check=False,
        )
        assert fetched.returncode == 0, f"{fetched.stderr}\n{stderr.read_text()[-4000:]}"
        web, db, unknown, stats = json.loads(fetched.stdout)
    finally:
        _stop(proxy)
        if apps.stdin is not None:
            apps.stdin.close()  # the applications exit when their stdin closes
        _stop(apps)
        if apps.stdout is not None:
            apps.stdout.close()
    # 8080: the HTTP chain's connection manager routed it (it adds its own header)
    assert web.get("status") == 200, web
    assert web["body"] == "from-http-app"
    assert "x-envoy-upstream-service-time" in web["headers"]
    # 5432: the TCP chain, allowed by its RBAC on the original destination port
    assert db == {"data": "from-tcp-app\n", "closed": True}
    # 7777: no chain names it and none is port-less: closed, counted
    assert unknown.get("closed") and unknown["data"] == "", unknown
    assert stats["status"] == 200
    counted = [
        line
        for line in stats["body"].splitlines()
        if line.startswith("envoy_listener_no_filter_chain_match{")
    ]
    assert counted and counted[0].endswith(" 1"), counted
    assert "Traceback" not in stderr.read_text()
    deadline = time.monotonic() + 5  # access logs are flushed on the proxy's exit
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    assert sorted(lines) == sorted([f"127.0.0.1:{HTTP_PORT} http", f"127.0.0.1:{TCP_PORT} tcp"])
