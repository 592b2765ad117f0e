"""A stand-in launcher: makes workload networks, prints them, holds them.

    netns_holder.py SETTINGS_JSON COUNT

SETTINGS_JSON holds `NetworkSettings` fields (state_dir a string). Prints one
JSON line per network ({"namespace", "address", "host_veth", ...}), then
`held`, and waits: a line on stdin closes the networks and exits 0; SIGKILL
plays a crashed launcher.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from trellis.platform.netns import NetworkSettings, create_workload_network


def main(args: list[str]) -> int:
    fields = json.loads(args[0])
    fields["state_dir"] = Path(fields["state_dir"])
    fields["exclude_inbound_ports"] = tuple(fields.get("exclude_inbound_ports", ()))
    settings = NetworkSettings(**fields)
    networks = [create_workload_network(f"holder-{i}", settings) for i in range(int(args[1]))]
    try:
        for network in networks:
            print(json.dumps(asdict(network.record)), flush=True)
        print("held", flush=True)
        sys.stdin.readline()
    finally:
        for network in networks:
            network.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
