"""Simulated proxies for the xDS benchmark: many ADS streams in one process.

Each stream is a real gRPC `StreamAggregatedResources` call (`--protocol
sotw`) or `DeltaAggregatedResources` call (`--protocol delta`) (grpc.aio, the
`ads_pb2_grpc` stub) on its own channel and TCP connection, driven by a
`SimulatedProxy` or a `SimulatedDeltaProxy` (`--vhds on`: one whose node
announces VHDS, so it takes virtual hosts as resources of their own). The channels keep grpc's flow
control windows (4 MiB per stream, as `GRPC_TRACE=http` shows), far above
the largest response here (~0.5 MiB), so as with Envoy's 256 MiB windows
no response waits for a WINDOW_UPDATE. The process is steered over stdin and reports over stdout,
one JSON object per line; times are `time.monotonic()` readings, which are
comparable between processes of one Linux machine.

    {"cmd": "connect"}                  -> {"event": "synced", "times": [...], "errors": {...},
                                            "vhds": N}  (N: streams given route configurations
                                            that carry `vhds`)
    {"cmd": "arm", "id": I, "watch": [[type_url, name], ...]}
                                        -> {"event": "armed", "id": I}
                                           later {"event": "updated", "id": I, "times": [...], ...}
    {"cmd": "collect", "id": I}         -> {"event": "updated", "id": I, ...} (also if incomplete)
    {"cmd": "quit"}                     -> exits

It prints {"event": "ready"} once its imports are done.

    python bench/_xds_clients.py --ads 127.0.0.1:PORT --first 0 --count 500 --services 1000 \
        --protocol delta --vhds on
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from _xds_config import node_id, node_metadata
from _xds_delta import SimulatedDeltaProxy
from _xds_stream import Decoder, SimulatedProxy, make_node
from trellis.xds.vhds import VHDS_CLIENT_FEATURE

_MAX_MESSAGE = 256 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per stream, like real proxies
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
)


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Fleet:
    """The process's streams and what it has reported about them."""

    def __init__(
        self,
        target: str,
        first: int,
        count: int,
        services: int,
        protocol: str = "sotw",
        *,
        vhds: bool = False,
    ) -> None:
        self.target = target
        self.delta = protocol == "delta"
        self.decoder = Decoder()
        kind = SimulatedDeltaProxy if self.delta else SimulatedProxy
        features = [VHDS_CLIENT_FEATURE] if vhds and self.delta else []
        self.proxies = [
            kind(make_node(node_id(i), node_metadata(i, services), features), self.decoder)
            for i in range(first, first + count)
        ]
        self.errors: dict[int, str] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.connect_started = 0.0
        self._sync_reported = False
        self._round: Any = None
        self._watch: list[tuple[str, str]] = []

    # --- streams ---------------------------------------------------------------------------

    def connect(self) -> None:
        self.connect_started = time.monotonic()
        for index, proxy in enumerate(self.proxies):
            self.tasks.append(asyncio.create_task(self._stream(index, proxy), name=f"ads-{index}"))

    async def _stream(self, index: int, proxy: SimulatedProxy) -> None:
        channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call: Any = (
                stub.DeltaAggregatedResources() if self.delta else stub.StreamAggregatedResources()
            )
            for request in proxy.initial():
                await call.write(request)
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    self._fail(index, "the control plane ended the stream")
                    return
                for request in proxy.receive(response):
                    await call.write(request)
                synced, updated = proxy.settle(time.monotonic())
                if synced:
                    self._check_sync()
                if updated:
                    self._check_update()
        except grpc.aio.AioRpcError as error:
            self._fail(index, f"{error.code().name}: {error.details()}")
        except ValueError as error:
            self._fail(index, str(error))
        finally:
            await channel.close()

    def _fail(self, index: int, reason: str) -> None:
        self.errors.setdefault(index, reason)
        self._check_sync()
        self._check_update()

    # --- reports ---------------------------------------------------------------------------

    def _check_sync(self) -> None:
        if self._sync_reported:
            return
        if all(p.synced_at is not None or i in self.errors for i, p in enumerate(self.proxies)):
            self._sync_reported = True
            self.report_sync()

    def report_sync(self) -> None:
        emit(
            {
                "event": "synced",
                "started": self.connect_started,
                "times": [p.synced_at for p in self.proxies],
                "errors": {str(i): e for i, e in self.errors.items()},
                "decoded": self.decoder.decoded,
                "vhds": sum(
                    isinstance(p, SimulatedDeltaProxy) and p.uses_vhds for p in self.proxies
                ),
            }
        )

    @property
    def round_id(self) -> Any:
        """The armed round not yet reported, or None."""
        return self._round

    def arm(self, round_id: Any, watch: list[tuple[str, str]]) -> None:
        self._round, self._watch = round_id, watch
        for proxy in self.proxies:
            proxy.arm(watch)
        emit({"event": "armed", "id": round_id})

    def _check_update(self) -> None:
        if self._round is None:
            return
        if all(p.updated_at is not None or i in self.errors for i, p in enumerate(self.proxies)):
            self.report_update(complete=True)

    def report_update(self, *, complete: bool) -> None:
        """Per proxy the update time (None: not updated), distinct final contents, a sample."""
        distinct: dict[str, int] = {}
        sample: dict[str, str | None] = {}
        for type_url, name in self._watch:
            key = f"{type_url}|{name}"
            held = [p.held(type_url, name) for p in self.proxies if p.updated_at is not None]
            distinct[key] = len({info.value for info in held if info is not None})
            first = next((info for info in held if info is not None), None)
            sample[key] = base64.b64encode(first.value).decode() if first else None
        emit(
            {
                "event": "updated",
                "id": self._round,
                "complete": complete,
                "times": [p.updated_at for p in self.proxies],
                "errors": {str(i): e for i, e in self.errors.items()},
                "distinct": distinct,
                "sample": sample,
            }
        )
        self._round = None

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _serve(fleet: Fleet) -> None:
    emit({"event": "ready"})
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        cmd = command.get("cmd")
        if cmd == "connect":
            fleet.connect()
        elif cmd == "arm":
            fleet.arm(command["id"], [tuple(item) for item in command["watch"]])
        elif cmd == "collect":
            if command.get("id") == fleet.round_id:
                fleet.report_update(complete=False)
        elif cmd == "sync-status":
            fleet.report_sync()
        elif cmd == "quit":
            break
        else:
            emit({"event": "error", "message": f"unknown command {cmd!r}"})
    await fleet.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated proxies on ADS streams.")
    parser.add_argument("--ads", required=True, help="HOST:PORT of the control plane's ADS")
    parser.add_argument("--first", type=int, required=True, help="index of the first proxy")
    parser.add_argument("--count", type=int, required=True, help="how many proxies")
    parser.add_argument("--services", type=int, required=True, help="services in the mesh")
    parser.add_argument("--protocol", choices=("sotw", "delta"), default="sotw")
    parser.add_argument(
        "--vhds", choices=("on", "off"), default="off", help="announce VHDS (delta only)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    fleet = Fleet(
        args.ads, args.first, args.count, args.services, args.protocol, vhds=args.vhds == "on"
    )
    asyncio.run(_serve(fleet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
