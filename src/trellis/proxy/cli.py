"""`trellis proxy`'s command line, parsed without click.

The sidecar's memory is budgeted (DESIGN.md §8) and click with the other
commands of `trellis` costs ~2 MiB of it, so the console script hands
`trellis proxy ...` straight to this argparse parser (`trellis.cli.entry`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from trellis.core.addresses import PIPE_PATH_MAX_BYTES, EndpointAddress, PipeAddress, SocketAddress
from trellis.core.app_probe import APP_PROBERS_ENV, AppProbe, parse_app_probes
from trellis.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error", "critical")


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, given its width: left to itself it imports shutil (and
    with it bz2 and lzma, ~0.5 MiB the sidecar would keep) for `add_argument` to check
    each flag's metavar."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


def _terminal_columns() -> int:
    """`shutil.get_terminal_size().columns` without shutil: $COLUMNS, the terminal, or 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    stream = sys.__stdout__
    if columns <= 0 and stream is not None:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (ValueError, OSError):  # not a terminal, or closed
            columns = 0
    return columns if columns > 0 else 80


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"Error: {message}\nTry 'trellis proxy --help' for help.\n")


def parser() -> argparse.ArgumentParser:
    found = _Parser(
        prog="trellis proxy",
        formatter_class=_Formatter,
        description="Run the sidecar proxy from a bootstrap file and/or a control plane.",
    )
    add = found.add_argument
    add(
        "-c",
        "--bootstrap",
        type=str,  # not pathlib.Path: the sidecar does not load pathlib (~0.5 MiB)
        metavar="FILE",
        help="Envoy v3 Bootstrap (YAML or JSON). Required unless --xds is given.",
    )
    add(
        "--xds",
        metavar="HOST:PORT",
        help="Take listeners and clusters from this control plane; unix:PATH for its Unix "
        "socket (reachable from another network namespace).",
    )
    add(
        "--xds-protocol",
        choices=("delta", "sotw"),
        default=None,
        help="How --xds speaks xDS: delta (incremental, Envoy's DELTA_GRPC; the default) or "
        "sotw (state of the world, GRPC).",
    )
    add(
        "--xds-root-ca",
        type=str,
        metavar="FILE",
        help="Connect to --xds (and a HOST:PORT CA) over TLS, trusting this root (PEM): the "
        "control plane's --xds-tls-address. Never falls back to plaintext.",
    )
    add(
        "--xds-server-name",
        metavar="NAME",
        help="The name the control plane's certificate must carry, also sent as SNI "
        "(default: the host of --xds).",
    )
    add("--node-id", metavar="ID", help="The node id sent to the control plane.")
    add("--node-cluster", metavar="NAME", help="The node cluster (Envoy's service cluster).")
    add(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Node metadata, e.g. WORKLOAD_NAME=web NAMESPACE=shop SERVICE_ACCOUNT=web "
        "(repeatable).",
    )
    add("--label", action="append", default=[], metavar="KEY=VALUE", help="Workload label.")
    add(
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Workload annotation, e.g. prometheus.io/port=9100 to merge the application's "
        "metrics into /stats/prometheus (repeatable).",
    )
    add("--admin-port", type=_port, metavar="PORT", help="Admin port (on --admin-address).")
    add(
        "--admin-address",
        type=_ip,
        default="127.0.0.1",
        metavar="IP",
        help="Where --admin-port listens (default: 127.0.0.1).",
    )
    add(
        "--stats-port",
        type=_port,
        metavar="PORT",
        help="Serve the merged Prometheus metrics (GET /stats/prometheus: the proxy's and "
        "the application's), /healthz/ready and the application's probes "
        "(GET /app-health/..., from $TRELLIS_KUBE_APP_PROBERS) on --public-address:PORT, "
        "like Istio's 15020 (default: not served).",
    )
    add(
        "--health-port",
        type=_port,
        metavar="PORT",
        help="Serve GET /healthz/ready on --public-address:PORT: 200 once the proxy is "
        "ready, 503 before and while draining, like Istio's 15021 (default: not served).",
    )
    add(
        "--public-address",
        type=_ip,
        default="127.0.0.1",
        metavar="IP",
        help="Where --stats-port and --health-port listen (default: 127.0.0.1). Both are "
        "read-only, so a pod binds them to 0.0.0.0, as Istio's agent does.",
    )
    add(
        "--ca-address",
        metavar="HOST:PORT",
        help="The CA's certificate service, or unix:PATH (default: the --xds address).",
    )
    add(
        "--join-token-file",
        type=str,
        metavar="FILE",
        default=os.environ.get("TRELLIS_JOIN_TOKEN_FILE") or None,
        help="Join token (from `trellis join-token`) to obtain the workload certificate "
        "with; read on every renewal. Or the token itself in TRELLIS_JOIN_TOKEN. "
        "(env: TRELLIS_JOIN_TOKEN_FILE)",
    )
    add(
        "--drain-time-s",
        dest="drain_time",
        type=_non_negative,
        metavar="SECONDS",
        help="How long SIGTERM waits for in-flight requests "
        "(default: the longest HCM drain_timeout, 5s if none).",
    )
    add("-l", "--log-level", choices=LEVELS, default="info", help="(default: info)")
    return found


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535, got {text!r}")
    return int(text)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def host_port(value: str | None) -> tuple[str, int] | None:
    """HOST:PORT (port 1-65535) as a pair; ValueError naming the problem."""
    if value is None:
        return None
    address = SocketAddress.parse(value)
    if address.port == 0:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return address.host, address.port


UNIX_PREFIX = "unix:"


def control_plane_address(value: str | None, flag: str) -> EndpointAddress | None:
    """HOST:PORT, or `unix:PATH` (also gRPC's `unix:///PATH`) for a Unix socket.

    A relative PATH is made absolute. ValueError naming `flag` and the problem.
    """
    if value is None:
        return None
    if not value.startswith(UNIX_PREFIX):
        try:
            pair = host_port(value)
        except ValueError:
            raise ValueError(f"{flag}: expected HOST:PORT or unix:PATH, got {value!r}") from None
        assert pair is not None
        return SocketAddress(*pair)
    path = value[len(UNIX_PREFIX) :]
    if path.startswith("//"):  # unix://ABSOLUTE_PATH, as gRPC spells it
        path = path[2:]
        if not path.startswith("/"):
            raise ValueError(f"{flag}: unix:// needs an absolute path, got {value!r}")
    if not path:
        raise ValueError(f"{flag}: unix: needs a socket path, got {value!r}")
    if path.startswith("@"):
        raise ValueError(f"{flag}: abstract Unix sockets ({path!r}) are not supported")
    path = os.path.abspath(path)
    size = len(os.fsencode(path))
    if size > PIPE_PATH_MAX_BYTES:
        raise ValueError(
            f"{flag}: the socket path {path!r} is {size} bytes long; "
            f"at most {PIPE_PATH_MAX_BYTES} fit in a Unix socket address"
        )
    return PipeAddress(path)


def xds_tls_settings(
    root_file: str | os.PathLike[str] | None,
    server_name: str | None,
    control_plane: EndpointAddress | None,
) -> tuple[str, str] | None:
    """--xds-root-ca and --xds-server-name as (root PEM, server name); None: plaintext.

    ValueError naming the flag: an unreadable or non-PEM root, TLS without a
    HOST:PORT --xds, or a server name without a root.
    """
    if root_file is None:
        if server_name is not None:
            raise ValueError("--xds-server-name: needs --xds-root-ca")
        return None
    if not isinstance(control_plane, SocketAddress):
        raise ValueError("--xds-root-ca: needs --xds HOST:PORT (a Unix socket is plaintext)")
    try:
        with open(root_file, encoding="ascii") as file:
            root = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--xds-root-ca: cannot read {os.fspath(root_file)!r}: {exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in root:
        raise ValueError(f"--xds-root-ca: {os.fspath(root_file)!r} holds no PEM certificate")
    name = control_plane.host if server_name is None else server_name
    if not name:
        raise ValueError("--xds-server-name: must not be empty")
    return root, name


def node_fields(
    node_id: str | None,
    cluster: str | None,
    metadata: Sequence[str],
    labels: Sequence[str],
    annotations: Sequence[str] = (),
) -> dict[str, object]:
    """The `node` of the bootstrap from flags; ValueError naming a bad KEY=VALUE."""
    node: dict[str, object] = {}
    if node_id:
        node["id"] = node_id
    if cluster:
        node["cluster"] = cluster
    meta: dict[str, object] = {}
    mappings: dict[str, dict[str, str]] = {"--label": {}, "--annotation": {}}
    for flag, items in (
        ("--metadata", metadata),
        ("--label", labels),
        ("--annotation", annotations),
    ):
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"{flag}: expected KEY=VALUE, got {item!r}")
            if flag in mappings:
                mappings[flag][key] = value
            else:
                meta[key] = value
    for flag, key in (("--label", "LABELS"), ("--annotation", "ANNOTATIONS")):
        if mappings[flag]:
            meta[key] = mappings[flag]
    if meta:
        node["metadata"] = meta
    return node


def app_probes(environ: Mapping[str, str], stats_port: int | None) -> dict[str, AppProbe]:
    """The application's probes from $TRELLIS_KUBE_APP_PROBERS (set by the injector);
    ValueError naming the variable and the key, or the missing --stats-port."""
    text = environ.get(APP_PROBERS_ENV, "").strip()
    if not text:
        return {}
    try:
        probes = parse_app_probes(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    if probes and stats_port is None:
        raise ValueError(f"{APP_PROBERS_ENV}: the probes are served on --stats-port; give it")
    return probes


def main(argv: Sequence[str]) -> int:
    """Parse `argv` (after `proxy`) and run the proxy; returns the exit status."""
    args_parser = parser()
    args = args_parser.parse_args(list(argv))
    if args.bootstrap is None and args.xds is None:
        args_parser.error("give --bootstrap FILE, --xds HOST:PORT, or both")
    if args.xds_protocol is not None and args.xds is None:
        args_parser.error("--xds-protocol: needs --xds (a bootstrap sets ads_config.api_type)")
    try:
        control_plane = control_plane_address(args.xds, "--xds")
        ca = control_plane_address(args.ca_address, "--ca-address") or control_plane
        node = node_fields(
            args.node_id, args.node_cluster, args.metadata, args.label, args.annotation
        )
    except ValueError as exc:
        args_parser.error(str(exc))
    try:
        xds_tls = xds_tls_settings(args.xds_root_ca, args.xds_server_name, control_plane)
    except ValueError as exc:
        args_parser.error(str(exc))
    try:
        probes = app_probes(os.environ, args.stats_port)
    except ValueError as exc:
        args_parser.error(str(exc))
    if args.stats_port and args.stats_port == args.health_port:
        args_parser.error(f"--stats-port and --health-port are both {args.stats_port}")
    join_token = os.environ.get("TRELLIS_JOIN_TOKEN") if args.join_token_file is None else None
    if (args.join_token_file is not None or join_token) and ca is None:
        args_parser.error("a join token needs --ca-address HOST:PORT or unix:PATH (or --xds)")
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from trellis.proxy.main import run  # noqa: PLC0415 - parse (and --help) before the imports

    return run(
        args.bootstrap,
        drain_time=args.drain_time,
        xds=control_plane,
        xds_delta=args.xds_protocol != "sotw",
        node=node,
        admin_port=args.admin_port,
        admin_address=args.admin_address,
        ca=ca,
        join_token_file=args.join_token_file,
        join_token=join_token,
        stats_port=args.stats_port,
        health_port=args.health_port,
        public_address=args.public_address,
        xds_tls=xds_tls,
        app_probes=probes,
        # The kubelet probes the pod's IP (the injector sets INSTANCE_IP), and so does
        # Istio's agent: an application listening only there still passes.
        app_probe_host=os.environ.get("INSTANCE_IP") or "127.0.0.1",
    )
