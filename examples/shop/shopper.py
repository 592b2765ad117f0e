"""shopper: simulated users browsing, filling carts and checking out against `web`.

    python examples/shop/shopper.py --web http://web --users 5 --duration 30

Each user repeats a visit until the time is up or `--checkouts` checkouts were
attempted: the home page, the product list, then (mostly) one to three
products added to the cart, a look at the cart and a checkout. It prints a
summary: requests by step and outcome, the checkout success rate, the payment
versions that answered, latency percentiles (`--json` for a JSON document).
Exits 1 when no request succeeded at all.

Like the services it uses only the standard library; `--web http://web` goes
through `HTTP_PROXY` when the environment sets one (a sidecar), a direct
address (`--web http://127.0.0.1:8100`) does not (loopback is in NO_PROXY).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

REQUEST_TIMEOUT_S = 10.0
JOIN_GRACE_S = REQUEST_TIMEOUT_S + 2


@dataclass
class Tally:
    """What all users saw, behind one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    checkouts: int = 0
    paid: int = 0

    def record(self, step: str, outcome: str, elapsed_ms: float) -> None:
        with self.lock:
            self.outcomes[f"{step} {outcome}"] += 1
            self.latencies_ms.append(elapsed_ms)

    def summary(self, users: int, seconds: float) -> dict[str, Any]:
        with self.lock:
            ordered = sorted(self.latencies_ms)
            requests = sum(self.outcomes.values())
            return {
                "users": users,
                "duration_s": round(seconds, 2),
                "requests": requests,
                "requests_per_s": round(requests / seconds, 1) if seconds > 0 else 0.0,
                "by_outcome": dict(sorted(self.outcomes.items())),
                "checkouts": {
                    "attempted": self.checkouts,
                    "succeeded": self.paid,
                    "success_rate": _ratio(self.paid, self.checkouts),
                },
                "payment_versions": dict(sorted(self.versions.items())),
                "latency_ms": {"p50": _percentile(ordered, 50), "p99": _percentile(ordered, 99)},
            }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentile(ordered: list[float], pct: int) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, len(ordered) * pct // 100)], 1)


@dataclass(frozen=True)
class Settings:
    web: str
    users: int
    deadline: float
    max_checkouts: int
    think_s: float
    seed: int | None


class Shopper:
    """One simulated user, run in its own thread."""

    def __init__(self, name: str, settings: Settings, tally: Tally, stop: threading.Event) -> None:
        self.name = name
        self.settings = settings
        self.tally = tally
        self.stop = stop
        seed = None if settings.seed is None else f"{settings.seed}-{name}"
        self.rng = random.Random(seed)

    def run(self) -> None:
        while not self._done():
            self.visit()
            if self.stop.wait(self.rng.uniform(0, 2 * self.settings.think_s)):
                return

    def visit(self) -> None:
        self.request("browse", "GET", "/")
        listing = self.request("products", "GET", "/products")
        ids = [p["id"] for p in (listing or {}).get("products", []) if isinstance(p, dict)]
        if not ids or self.rng.random() >= 0.8 or self._done():
            return
        for product_id in self.rng.sample(ids, self.rng.randint(1, min(3, len(ids)))):
            item = {"product_id": product_id, "quantity": self.rng.randint(1, 2)}
            self.request("add", "POST", f"/cart/{self.name}/add", item)
        self.request("cart", "GET", f"/cart/{self.name}")
        if self.rng.random() >= 0.9 or not self._claim_checkout():
            return
        receipt = self.request("checkout", "POST", f"/checkout/{self.name}")
        if receipt is not None:
            version = str((receipt.get("payment") or {}).get("version"))
            with self.tally.lock:
                self.tally.paid += 1
                self.tally.versions[version] += 1

    def request(
        self, step: str, method: str, path: str, document: object = None
    ) -> dict[str, Any] | None:
        """Send one request; the JSON object of a 2xx answer, else None (all recorded)."""
        data = None if document is None else json.dumps(document).encode()
        headers = {"content-type": "application/json"} if data else {}
        request = urllib.request.Request(
            self.settings.web + path, data=data, headers=headers, method=method
        )
        started = time.monotonic()
        body: Any = None
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
                outcome = str(answer.status)
                raw = answer.read()
                if "json" in answer.headers.get("content-type", ""):
                    body = json.loads(raw)
        except urllib.error.HTTPError as exc:
            outcome = str(exc.code)
            exc.close()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            timed_out = isinstance(reason, TimeoutError)
            outcome = "error:timeout" if timed_out else f"error:{type(reason).__name__}"
        except ValueError:
            outcome = "error:bad-json"
        self.tally.record(step, outcome, (time.monotonic() - started) * 1000)
        return body if isinstance(body, dict) else None

    def _claim_checkout(self) -> bool:
        with self.tally.lock:
            if self.tally.checkouts >= self.settings.max_checkouts:
                return False
            self.tally.checkouts += 1
            return True

    def _done(self) -> bool:
        if self.stop.is_set() or time.monotonic() >= self.settings.deadline:
            return True
        with self.tally.lock:
            return self.tally.checkouts >= self.settings.max_checkouts


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"shopper: {summary['users']} users, {summary['duration_s']} s, "
        f"{summary['requests']} requests ({summary['requests_per_s']}/s)"
    )
    print("requests by step and outcome:")
    for key, count in summary["by_outcome"].items():
        step, outcome = key.split(" ", 1)
        print(f"  {step:<9} {outcome:<22} {count}")
    checkouts = summary["checkouts"]
    rate = checkouts["success_rate"]
    shown = "n/a" if rate is None else f"{rate * 100:.1f}%"
    print(f"checkout success: {checkouts['succeeded']}/{checkouts['attempted']} ({shown})")
    paid = sum(summary["payment_versions"].values())
    versions = ", ".join(
        f"{version} {count} ({count * 100 / paid:.1f}%)"
        for version, count in summary["payment_versions"].items()
    )
    print(f"payment versions: {versions or 'none'}")
    latency = summary["latency_ms"]
    print(f"latency ms: p50 {latency['p50']} p99 {latency['p99']}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Simulated shoppers against the shop's web.")
    parser.add_argument("--web", default="http://web", help="web's base URL (default http://web)")
    parser.add_argument("--users", type=_positive, default=5, help="concurrent users (default 5)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--checkouts", type=_positive, default=10**9, help="stop after N")
    parser.add_argument("--think-ms", type=float, default=100.0, help="mean pause between visits")
    parser.add_argument("--progress", type=float, default=0.0, help="status line every N s")
    parser.add_argument("--seed", type=int, help="seed the users' choices")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 86_400:
        parser.error("--duration must be 0-86400 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.monotonic()
    settings = Settings(
        web=args.web.rstrip("/"),
        users=args.users,
        deadline=started + args.duration,
        max_checkouts=args.checkouts,
        think_s=max(0.0, args.think_ms) / 1000,
        seed=args.seed,
    )
    tally, stop = Tally(), threading.Event()
    tag = f"{random.Random(args.seed).getrandbits(24):06x}"  # fresh carts for every run
    threads = [
        threading.Thread(
            target=Shopper(f"shopper-{tag}-{i}", settings, tally, stop).run,
            name=f"shopper-{i}",
            daemon=True,
        )
        for i in range(args.users)
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop early, still summarise
        _wait(threads, settings.deadline, args.progress, tally, started)
    stop.set()
    for thread in threads:
        thread.join(timeout=JOIN_GRACE_S)
    summary = tally.summary(args.users, time.monotonic() - started)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    succeeded = sum(n for key, n in summary["by_outcome"].items() if key.split()[1][0] == "2")
    return 0 if succeeded else 1


def _wait(
    threads: list[threading.Thread], deadline: float, every: float, tally: Tally, started: float
) -> None:
    """Wait for the users to finish (they stop by the deadline), printing progress."""
    next_report = started + every if every > 0 else float("inf")
    for thread in threads:
        while thread.is_alive() and time.monotonic() < deadline + JOIN_GRACE_S:
            thread.join(timeout=min(0.5, max(0.01, next_report - time.monotonic())))
            if time.monotonic() >= next_report:
                next_report += every
                with tally.lock:
                    line = f"{sum(tally.outcomes.values())} requests, {tally.paid} paid"
                print(f"shopper: {time.monotonic() - started:.0f} s, {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
