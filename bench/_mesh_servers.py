"""Start a client + server sidecar pair (`trellis proxy` twice); prove which transport it used."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from _mesh_config import (
    CLIENT_ID,
    Json,
    Pki,
    client_sidecar_bootstrap,
    server_sidecar_bootstrap,
)
from _procs import Pinning, free_port, http_get, stop, wait_until_ready
from _servers import Server

_SAMPLE = re.compile(r"^istio_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>[\d.eE+-]+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class SidecarPair:
    """Two running sidecars: load goes to `client`; `server_admin` serves the server's metrics."""

    scenario: str
    client: Server
    server: Server
    server_admin: str

    @property
    def url(self) -> str:
        return self.client.url

    def members(self) -> tuple[Server, Server]:
        return (self.client, self.server)


def start_sidecar(
    name: str,
    directory: Path,
    config: Json,
    *,
    listen_port: int,
    admin_port: int,
    cpus: str | None,
    pinning: Pinning,
    log_level: str,
    command: list[str],
    ready_timeout: float = 30.0,
) -> Server:
    """Write `config` as the bootstrap, start `trellis proxy` and wait for the admin's /ready."""
    directory.mkdir(parents=True, exist_ok=True)
    bootstrap = directory / "bootstrap.json"
    bootstrap.write_text(json.dumps(config, indent=1))
    bootstrap.chmod(0o600)  # it holds a private key
    log = directory / "trellis.log"
    argv = [*command, "proxy", "--bootstrap", str(bootstrap), "--log-level", log_level]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            pinning.wrap(cpus, argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )
    try:
        wait_until_ready(proc, f"http://127.0.0.1:{admin_port}/ready", ready_timeout, log)
    except BaseException:
        stop(proc)
        raise
    return Server(name, proc, f"http://127.0.0.1:{listen_port}/", log)


def start_pair(
    scenario: str,
    directory: Path,
    *,
    upstream_port: int,
    pki: Pki | None,
    cpus: str | None,
    pinning: Pinning,
    log_level: str,
    command: list[str],
    started: list[Server],
) -> SidecarPair:
    """Start the server sidecar, then the client; `started` collects what must be stopped."""

    def launch(role: str, config: Json, listen_port: int, admin_port: int) -> Server:
        sidecar = start_sidecar(
            f"{scenario}/{role}",
            directory / role,
            config,
            listen_port=listen_port,
            admin_port=admin_port,
            cpus=cpus,
            pinning=pinning,
            log_level=log_level,
            command=command,
        )
        started.append(sidecar)
        return sidecar

    server_port, server_admin = free_port(), free_port()
    server_config = server_sidecar_bootstrap(
        listen_port=server_port, admin_port=server_admin, upstream_port=upstream_port, pki=pki
    )
    server = launch("server", server_config, server_port, server_admin)
    client_port, client_admin = free_port(), free_port()
    client_config = client_sidecar_bootstrap(
        listen_port=client_port, admin_port=client_admin, server_port=server_port, pki=pki
    )
    client = launch("client", client_config, client_port, client_admin)
    return SidecarPair(scenario, client, server, f"http://127.0.0.1:{server_admin}")


def parse_requests_total(text: str) -> list[tuple[dict[str, str], float]]:
    """The `istio_requests_total` samples of a Prometheus text page: (labels, value)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(_LABEL.findall(match.group("labels")))
            samples.append((labels, float(match.group("value"))))
    return samples


def inbound_requests(text: str, *, mutual_tls: bool) -> float:
    """Requests the server sidecar counted as destination, over mTLS from the client or plain."""
    total = 0.0
    for labels, value in parse_requests_total(text):
        if labels.get("reporter") != "destination":
            continue
        if mutual_tls and (
            labels.get("connection_security_policy") != "mutual_tls"
            or labels.get("source_principal") != CLIENT_ID
        ):
            continue
        if not mutual_tls and labels.get("connection_security_policy") != "none":
            continue
        total += value
    return total


def check_transport(pair: SidecarPair, *, mutual_tls: bool) -> str | None:
    """None when the server sidecar's metrics show the expected transport, else the problem."""
    try:
        status, body = http_get(pair.server_admin + "/stats/prometheus")
    except OSError as error:
        return f"{pair.scenario}: cannot read the server sidecar's metrics: {error}"
    if status != 200:
        return f"{pair.scenario}: the server sidecar's /stats/prometheus answered {status}"
    counted = inbound_requests(body.decode(errors="replace"), mutual_tls=mutual_tls)
    if counted < 1:
        what = f"mutual_tls from {CLIENT_ID}" if mutual_tls else "plaintext"
        return f"{pair.scenario}: the server sidecar counted no {what} request"
    return None
