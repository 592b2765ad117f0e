"""What tracing costs on the hot path: `hotpath.py` with the connection manager's
`tracing` off, at 1% sampling (Istio's default) and at 100%.

The collector cluster points at a closed port and the bench never runs the
event loop, so sampled spans stop at the exporter's bounded queue (then are
dropped and counted): what is measured is the request path's share only,
header parsing and injection, the sampling roll, ids, and span records.

    .venv/bin/python bench/tracing_hotpath.py [--requests N] [--repeats K]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import uvloop

from _servers import trellis_bootstrap
from hotpath import measure
from trellis.core.config import ProxyConfig
from trellis.xds.compile import compile_file

OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"


def traced_config(sampling: float | None) -> ProxyConfig:
    """The hot-path bootstrap, with `tracing` at `sampling` percent (None: off)."""
    bootstrap: dict[str, Any] = trellis_bootstrap(18000, 18001, 18080)
    static = bootstrap["static_resources"]
    if sampling is not None:
        hcm = static["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["tracing"] = {
            "random_sampling": {"value": sampling},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": OTEL,
                    "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}},
                },
            },
        }
        otel = json.loads(json.dumps(static["clusters"][0]))
        otel["name"] = "otel"
        otel["load_assignment"]["cluster_name"] = "otel"
        static["clusters"].append(otel)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "bootstrap.json")
        path.write_text(json.dumps(bootstrap))
        return compile_file(path)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for label, sampling in (("off", None), ("1%", 1.0), ("100%", 100.0)):
        results = uvloop.run(measure(traced_config(sampling), args.requests, args.repeats))
        best, median = min(results), sorted(results)[len(results) // 2]
        print(f"tracing {label:>4}: best {best:.2f} us, median {median:.2f} us per request")
    print(f"({args.repeats} x {args.requests} keep-alive GETs, 1 KiB responses, no sockets)")


if __name__ == "__main__":
    main()
