"""Transparent capture's outbound listener in a real `trellis proxy`: TCP services by
address and port (`prefix_ranges`), HTTP by port, and the rest passed through to
its original destination (an ORIGINAL_DST cluster, Istio's PassthroughCluster).

Without a redirect (any user) a passthrough has no original destination: the
proxy must refuse rather than connect to itself. In a network namespace the
test creates (root, iptables), the workload's outbound TCP goes to 15001 as in
Istio (the proxy's own group 1337 and 127.0.0.1 excepted), and one proxy
serves a "service VIP" by address, HTTP by port, a server outside the mesh by
passthrough, and blackholes connections sent to 15001 itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
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

PEER = Path(__file__).with_name("netns_peer.py")
OUTBOUND_PORT, ADMIN_PORT, PROXY_GID = 15001, 15000, 1337
HTTP_APP, TCP_APP = 18080, 15432  # where the local applications listen
SUBNET, LOCAL = "10.211.0.0/24", "10.211.0.1"  # a dummy interface's network and address
VIP, DB_PORT = "10.211.0.9", 5432  # a TCP service's virtual IP: nothing listens on it
OUTSIDE_PORT, HTTP_PORT = 7000, 8080  # a server outside the mesh; an HTTP service port
STEP_TIMEOUT = 30.0


def _passthrough_cluster() -> Json:
    return {
        "name": "PassthroughCluster",
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "2s",
    }


def _chain(listener: Json, name: str, **match: Any) -> Json:
    """The filters of a one-chain `listener` as a chain with `match`."""
    chain: Json = {"name": name, "filters": listener["filter_chains"][0]["filters"]}
    if match:
        chain["filter_chain_match"] = match
    return chain


def _exchange(port: int) -> tuple[bytes, bool]:
    """Send a line and half-close; what came back and whether the proxy closed."""
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
        except OSError:
            return b"", True
    return data, False


# --- without a redirect ------------------------------------------------------------------


def test_a_passthrough_that_was_not_redirected_is_refused_not_looped(
    start_proxy: ProxyFactory,
) -> None:
    port = free_port()
    listener = {
        "name": "virtualOutbound",
        "address": address(port),
        "use_original_dst": True,
        "filter_chains": [
            _chain(tcp_listener("pass", 0, "PassthroughCluster"), "PassthroughFilterChain")
        ],
    }
    proxy = start_proxy(bootstrap(free_port(), [listener], [_passthrough_cluster()]))
    # The original destination is the listener itself: connecting there would come back.
    assert _exchange(port) == (b"", True)
    samples = proxy.samples()
    accepted = metric_sum(
        samples,
        "envoy_listener_downstream_cx_total",
        envoy_listener_address=f"127.0.0.1:{port}",
    )
    assert accepted == 1  # the proxy never connected to itself
    refused = metric_sum(samples, "istio_tcp_connections_opened_total", response_flags="UH")
    assert refused == 1


def test_an_address_chain_wins_over_the_passthrough_without_a_redirect(
    start_proxy: ProxyFactory, tcp_upstream_factory: Callable[[str], TcpUpstream]
) -> None:
    # Not redirected, the destination is the listener's own 127.0.0.1:PORT: the chain
    # naming 127.0.0.1/32 takes it; the portless passthrough is not consulted.
    service = tcp_upstream_factory("reply")
    port = free_port()
    listener = {
        "name": "virtualOutbound",
        "address": address(port),
        "use_original_dst": True,
        "filter_chains": [
            _chain(
                tcp_listener("db", 0, "db"),
                "db",
                destination_port=port,
                prefix_ranges=[{"address_prefix": "127.0.0.1", "prefix_len": 32}],
            ),
            _chain(tcp_listener("pass", 0, "PassthroughCluster"), "PassthroughFilterChain"),
        ],
    }
    clusters = [cluster("db", [service.port]), _passthrough_cluster()]
    start_proxy(bootstrap(free_port(), [listener], clusters))
    assert _exchange(port) == (b"received 1 bytes", True)
    assert service.connections_accepted == 1


# --- in a network namespace, with iptables -------------------------------------------


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=STEP_TIMEOUT, check=check)


def _in(namespace: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace with lo up and on `SUBNET`, and Istio-like outbound
    capture: all TCP to 15001 except 127.0.0.1 and group 1337's."""
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns and iptables")
    for tool in ("ip", "iptables", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    name = f"trellis-pass-{uuid.uuid4().hex[:8]}"
    made = _run("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        _run(*_in(name, "ip", "link", "set", "lo", "up"))
        # LOCAL is an address of this namespace; the rest of SUBNET (the VIP) is routed
        # to lo and answered by no one: only the redirect can reach it.
        _run(*_in(name, "ip", "addr", "add", f"{LOCAL}/24", "dev", "lo"))
        rules = [
            ["-d", "127.0.0.1/32", "-j", "RETURN"],
            ["-m", "owner", "--gid-owner", str(PROXY_GID), "-j", "RETURN"],
            ["-j", "REDIRECT", "--to-ports", str(OUTBOUND_PORT)],
        ]
        for rule in rules:
            added = _run(
                *_in(name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", *rule),
                check=False,
            )
            if added.returncode != 0:
                pytest.skip(f"iptables nat/owner is not available: {added.stderr.strip()}")
        yield name
    finally:
        _run("ip", "netns", "del", name, check=False)


def _virtual_outbound() -> Json:
    db = tcp_listener("outbound|5432||db", 0, "outbound|5432||db")
    web = http_listener("outbound_0.0.0.0_8080", 0, [virtual_host("app", [route("web")])])
    passthrough = tcp_listener("PassthroughCluster", 0, "PassthroughCluster")
    blackhole = tcp_listener("BlackHoleCluster", 0, "BlackHoleCluster")
    listener = {
        "name": "virtualOutbound",
        "address": address(OUTBOUND_PORT, "0.0.0.0"),
        "use_original_dst": True,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            _chain(
                db,
                "outbound|5432||db",
                destination_port=DB_PORT,
                prefix_ranges=[{"address_prefix": VIP, "prefix_len": 32}],
            ),
            _chain(passthrough, "PassthroughFilterChain_5432", destination_port=DB_PORT),
            _chain(web, "0.0.0.0_8080", destination_port=HTTP_PORT),
            _chain(blackhole, "virtualOutbound-blackhole", destination_port=OUTBOUND_PORT),
            _chain(passthrough, "PassthroughFilterChain"),
        ],
    }
    clusters = [
        cluster("outbound|5432||db", [TCP_APP]),
        cluster("web", [HTTP_APP]),
        _passthrough_cluster(),
        {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s"},
    ]
    return bootstrap(ADMIN_PORT, [listener], clusters)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_tcp_by_address_http_by_port_and_the_rest_passed_through(
    namespace: str, tmp_path: Path
) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(_virtual_outbound()))
    serve = [sys.executable, str(PEER), "serve", str(HTTP_APP), str(TCP_APP)]
    outside = [f"{LOCAL}:{OUTSIDE_PORT}", f"{LOCAL}:{DB_PORT}"]  # not in the mesh
    apps = subprocess.Popen(
        _in(namespace, *serve, *outside), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    stderr = tmp_path / "proxy.stderr"
    as_proxy = ["setpriv", f"--regid={PROXY_GID}", "--clear-groups", "--"]
    with stderr.open("wb") as err:
        proxy = subprocess.Popen(
            _in(namespace, *as_proxy, *proxy_command(path)),
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        assert apps.stdout is not None and apps.stdout.readline().strip() == "ready"
        steps = [
            f"tcp:{VIP}:{DB_PORT}",  # the service, by its VIP: to its cluster
            f"tcp:{LOCAL}:{OUTSIDE_PORT}",  # outside the mesh: passed through
            f"tcp:{LOCAL}:{DB_PORT}",  # the service's port, another address: passed through
            f"http:{LOCAL}:{HTTP_PORT}",  # HTTP by port: routed (nothing listens there)
            f"tcp:{LOCAL}:{OUTBOUND_PORT}",  # the capture port itself: blackholed
            "admin:/stats/prometheus",
        ]
        fetch = [sys.executable, str(PEER), "fetch", str(ADMIN_PORT), *steps]
        fetched = _run(*_in(namespace, *fetch), check=False)
        assert fetched.returncode == 0, f"{fetched.stderr}\n{stderr.read_text()[-4000:]}"
        service, outside_mesh, other_address, web, blackhole, stats = json.loads(fetched.stdout)
    finally:
        _stop(proxy)
        if apps.stdin is not None:
            apps.stdin.close()
        _stop(apps)
        if apps.stdout is not None:
            apps.stdout.close()
    assert service == {"data": "from-tcp-app\n", "closed": True}
    assert outside_mesh == {"data": "from-tcp-app\n", "closed": True}
    assert other_address == {"data": "from-tcp-app\n", "closed": True}
    assert web.get("status") == 200, web
    assert web["body"] == "from-http-app"
    assert "x-envoy-upstream-service-time" in web["headers"]  # the connection manager's
    assert blackhole.get("closed") and blackhole["data"] == "", blackhole
    # which cluster each connection took: the VIP to the service, two passed through,
    # the capture port blackholed (no healthy upstream)
    counts: dict[tuple[str, str], float] = {}
    for line in stats["body"].splitlines():
        if line.startswith("istio_tcp_connections_opened_total{"):
            service_name = line.split('destination_service="', 1)[1].split('"', 1)[0]
            flags = line.split('response_flags="', 1)[1].split('"', 1)[0]
            counts[service_name, flags] = float(line.rsplit(" ", 1)[1])
    assert counts == {
        ("db", "-"): 1,
        ("PassthroughCluster", "-"): 2,
        ("BlackHoleCluster", "UH"): 1,
    }
    assert "Traceback" not in stderr.read_text()
