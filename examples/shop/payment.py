"""payment: takes payments; two versions run side by side for the canary.

    POST /pay           body {"user", "amount_cents": int > 0}
                        -> {"status": "paid", "id", "version", "user", "amount_cents"}
    GET  /admin/faults  -> {"version", "fail_rate", "delay_ms", "requests", "failed"}
    POST /admin/faults  body {"fail_rate"?: 0-1, "delay_ms"?: 0-60000} -> the same

Faults (to show what the mesh's retries and timeouts do): each /pay waits
`delay_ms`, then fails with 503 with probability `fail_rate`. Set them at
start (`--fail-rate 0.2 --delay-ms 300`) or at run time on /admin/faults.
An `idempotency-key` header makes a repeated payment (a retry after a lost
answer) return the first result instead of paying twice, within one process.

Run alone: `python examples/shop/payment.py --port 8104 --version v2`. It calls no one.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from _http import HttpError, Reply, Request, route, serve, service_parser

MAX_DELAY_MS = 60_000
MAX_REMEMBERED_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class Faults:
    fail_rate: float = 0.0
    delay_ms: int = 0

    def updated(self, document: dict[str, Any]) -> Faults:
        """These faults with the fields of `document` replaced; a bad value is a 400."""
        unknown = set(document) - {"fail_rate", "delay_ms"}
        if unknown:
            raise HttpError(400, f"unknown fields: {', '.join(sorted(unknown))}")
        fail_rate = document.get("fail_rate", self.fail_rate)
        delay_ms = document.get("delay_ms", self.delay_ms)
        if isinstance(fail_rate, bool) or not isinstance(fail_rate, int | float):
            raise HttpError(400, "fail_rate must be a number 0-1")
        if not 0 <= fail_rate <= 1:
            raise HttpError(400, "fail_rate must be a number 0-1")
        if type(delay_ms) is not int or not 0 <= delay_ms <= MAX_DELAY_MS:
            raise HttpError(400, f"delay_ms must be an integer 0-{MAX_DELAY_MS}")
        return Faults(float(fail_rate), delay_ms)


class Payments:
    """The payment routes of one version, with its faults and counters."""

    def __init__(self, version: str, faults: Faults, rng: random.Random) -> None:
        self.version = version
        self._faults = faults
        self._rng = rng
        self._lock = threading.Lock()
        self._requests = 0
        self._failed = 0
        self._done: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def pay(self, request: Request) -> Reply:
        body = request.json_object()
        user, amount = body.get("user"), body.get("amount_cents")
        if not isinstance(user, str) or not user:
            raise HttpError(400, "user must be a non-empty string")
        if type(amount) is not int or amount <= 0:
            raise HttpError(400, "amount_cents must be a positive integer")
        key = request.headers.get("idempotency-key")
        with self._lock:
            self._requests += 1
            faults = self._faults
            fail = self._rng.random() < faults.fail_rate
            earlier = self._done.get(key) if key else None
        if faults.delay_ms:
            time.sleep(faults.delay_ms / 1000)
        if fail:
            with self._lock:
                self._failed += 1
            raise HttpError(503, "injected failure", version=self.version)
        if earlier is not None:
            return Reply(200, {**earlier, "replayed": True})
        receipt = {
            "status": "paid",
            "id": f"pay-{uuid.uuid4().hex[:16]}",
            "version": self.version,
            "user": user,
            "amount_cents": amount,
        }
        if key:
            with self._lock:
                self._done[key] = receipt
                while len(self._done) > MAX_REMEMBERED_KEYS:
                    self._done.popitem(last=False)
        return Reply(200, receipt)

    def get_faults(self, request: Request) -> Reply:
        with self._lock:
            return Reply(200, self._state())

    def set_faults(self, request: Request) -> Reply:
        with self._lock:
            self._faults = self._faults.updated(request.json_object())
            return Reply(200, self._state())

    def _state(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fail_rate": self._faults.fail_rate,
            "delay_ms": self._faults.delay_ms,
            "requests": self._requests,
            "failed": self._failed,
        }


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be 0-1, not {text}")
    return value


def _delay(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_DELAY_MS:
        raise argparse.ArgumentTypeError(f"must be 0-{MAX_DELAY_MS}, not {text}")
    return value


def main() -> None:
    parser = service_parser("The shop's payment service.")
    parser.add_argument("--version", choices=["v1", "v2"], default="v1", help="default: v1")
    parser.add_argument("--fail-rate", type=_rate, default=0.0, help="share of 503s, 0-1")
    parser.add_argument("--delay-ms", type=_delay, default=0, help="delay before answering")
    parser.add_argument("--seed", type=int, help="seed the failure draws (reproducible runs)")
    args = parser.parse_args()
    payments = Payments(
        args.version, Faults(args.fail_rate, args.delay_ms), random.Random(args.seed)
    )
    routes = [
        route("POST", "/pay", payments.pay),
        route("GET", "/admin/faults", payments.get_faults),
        route("POST", "/admin/faults", payments.set_faults),
    ]
    serve(f"payment-{args.version}", routes, args.host, args.port)


if __name__ == "__main__":
    main()
