"""The servers the benchmark starts: nginx as upstream, nginx as reverse proxy, trellis proxy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from _procs import Pinning, free_port, stop, wait_until_ready

_NGINX_MAIN = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 4096; }}

http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
{body}
}}
"""

_UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type text/plain;
        location / {{ return 200 "{payload}"; }}
    }}
"""

_PROXY_SERVER = """\
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
_ROUTE_TIMEOUT = "5s"  # route timeout
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


@dataclass(frozen=True, slots=True)
class Server:
    """A started server: its process, the URL to load, and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def payload(size: int) -> str:
    """A response body of `size` bytes that needs no escaping in nginx config."""
    pattern = "trellis-bench-"
    return (pattern * (size // len(pattern) + 1))[:size]


def nginx_upstream_conf(directory: Path, port: int, body_size: int, as_root: bool) -> str:
    """nginx config: one worker answering every GET with a fixed body."""
    server = _UPSTREAM_SERVER.format(port=port, payload=payload(body_size))
    return _render_main(directory, server, as_root)


def nginx_proxy_conf(directory: Path, port: int, upstream_port: int, as_root: bool) -> str:
    """nginx config: one worker reverse-proxying to the upstream over kept-alive connections."""
    server = _PROXY_SERVER.format(port=port, upstream_port=upstream_port)
    return _render_main(directory, server, as_root)


def _render_main(directory: Path, body: str, as_root: bool) -> str:
    # As root, nginx would switch workers to "nobody"; keep the invoking user instead.
    user = "user root root;" if as_root else ""
    return _NGINX_MAIN.format(dir=directory, user=user, body=body)


def _address(port: int) -> dict[str, object]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def trellis_bootstrap(port: int, admin_port: int, upstream_port: int) -> dict[str, object]:
    """Envoy v3 Bootstrap: one HTTP listener routing everything to the upstream."""
    hcm = {
        "@type": _HCM + "HttpConnectionManager",
        "stat_prefix": "bench",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "upstream", "timeout": _ROUTE_TIMEOUT},
                        }
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    listener = {
        "name": "http",
        "address": _address(port),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    host = {"endpoint": {"address": _address(upstream_port)}}
    cluster = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [host]}]},
    }
    return {
        "node": {
            "id": "bench",
            "cluster": "bench",
            "metadata": {"WORKLOAD_NAME": "bench", "NAMESPACE": "default"},
        },
        "admin": {"address": _address(admin_port)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def nginx_version() -> str:
    """`nginx -v` output, or a note when nginx is missing."""
    if shutil.which("nginx") is None:
        return "not installed"
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def start_nginx(
    name: str, directory: Path, conf: str, *, port: int, cpus: str | None, pinning: Pinning
) -> Server:
    """Write `conf` under `directory` and run nginx in the foreground with that prefix."""
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    conf_path = directory / "nginx.conf"
    conf_path.write_text(conf)
    log = directory / "error.log"
    argv = ["nginx", "-p", str(directory), "-e", str(log), "-c", str(conf_path)]
    argv += ["-g", "daemon off;"]
    check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"{name}: nginx rejected its config:\n{check.stderr}")
    proc = subprocess.Popen(pinning.wrap(cpus, argv), stdin=subprocess.DEVNULL)
    server = Server(name, proc, f"http://127.0.0.1:{port}/", log)
    _wait_or_stop(proc, server.url, 10.0, log)
    return server


def trellis_command() -> list[str]:
    """The `trellis` console script beside this Python, else `python -m trellis.cli.main`."""
    script = Path(sys.executable).with_name("trellis")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "trellis.cli.main"]


def start_trellis(
    directory: Path,
    *,
    upstream_port: int,
    cpus: str | None,
    pinning: Pinning,
    log_level: str,
    command: list[str],
    ready_timeout: float = 30.0,
) -> Server:
    """Write a bootstrap under `directory`, start `trellis proxy` and wait for /ready."""
    directory.mkdir(parents=True, exist_ok=True)
    port, admin_port = free_port(), free_port()
    bootstrap = directory / "bootstrap.yaml"
    config = trellis_bootstrap(port, admin_port, upstream_port)
    bootstrap.write_text(yaml.safe_dump(config, sort_keys=False))
    log = directory / "trellis.log"
    argv = [*command, "proxy", "--bootstrap", str(bootstrap), "--log-level", log_level]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            pinning.wrap(cpus, argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )
    server = Server("trellis", proc, f"http://127.0.0.1:{port}/", log)
    _wait_or_stop(proc, f"http://127.0.0.1:{admin_port}/ready", ready_timeout, log)
    return server


def _wait_or_stop(proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    try:
        wait_until_ready(proc, url, timeout=timeout, log=log)
    except BaseException:
        stop(proc)
        raise
