"""The shop's services end to end, as plain processes on 127.0.0.1 without the mesh.

Services reach each other by name through `HTTP_PROXY` (see shop_harness).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from shop_harness import SHOP_DIR, NameProxy, ShopProcess, fetch, service_env

TRACE = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "vendor=opaque",
    "x-request-id": "7f5c1a0e-shop-test",
    "x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
    "x-b3-spanid": "00f067aa0ba902b7",
    "x-b3-parentspanid": "a3ce929d0e0e4736",
    "x-b3-sampled": "1",
    "x-b3-flags": "1",
    "b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
}
# What urllib adds on its own (and web's idempotency key for payment): the only
# headers besides the trace headers a service may send to a peer.
CLIENT_HEADERS = {"host", "user-agent", "accept-encoding", "connection", "accept"}
BODY_HEADERS = {"content-type", "content-length"}


@dataclass
class Shop:
    proxy: NameProxy
    workdir: Path
    services: dict[str, ShopProcess]

    def port(self, name: str) -> int:
        return self.services[name].port

    def start(self, name: str, script: str, *args: str) -> ShopProcess:
        started = ShopProcess(name, script, list(args), service_env(self.proxy.url), self.workdir)
        self.services[name] = started
        return started.wait_listening()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    workdir = tmp_path_factory.mktemp("shop")
    proxy = NameProxy().start()
    env = service_env(proxy.url)
    specs = {
        "catalog": ("catalog.py", []),
        "db": ("db.py", ["--data", str(workdir / "shop.db")]),
        "cart": ("cart.py", []),
        "payment-v1": ("payment.py", ["--version", "v1", "--seed", "1"]),
        "payment-v2": ("payment.py", ["--version", "v2", "--seed", "2"]),
        "web": ("web.py", []),
    }
    services: dict[str, ShopProcess] = {}
    try:
        for name, (script, args) in specs.items():
            services[name] = ShopProcess(name, script, args, env, workdir)
        for service in services.values():
            service.wait_listening()
        for name in ("catalog", "db", "cart", "web"):
            proxy.route(name, services[name].port)
        proxy.route("payment", services["payment-v1"].port, services["payment-v2"].port)
        yield Shop(proxy, workdir, services)
    finally:
        for service in services.values():
            service.terminate()  # all at once, then wait for each
        for service in services.values():
            service.stop()
        proxy.stop()


def set_faults(shop: Shop, fail_rate: float = 0.0, delay_ms: int = 0) -> None:
    for name in ("payment-v1", "payment-v2"):
        faults = {"fail_rate": fail_rate, "delay_ms": delay_ms}
        assert fetch(shop.port(name), "POST", "/admin/faults", faults).status == 200


def test_browse_add_and_checkout(shop: Shop) -> None:
    web = shop.port("web")
    home = fetch(web, "GET", "/")
    assert home.status == 200 and home.headers["content-type"].startswith("text/html")
    assert b"Hand grinder" in home.body and b"59.00 EUR" in home.body
    listing = fetch(web, "GET", "/products").json()
    assert {p["id"] for p in listing["products"]} >= {"p-grinder", "p-mug"}

    assert (
        fetch(web, "POST", "/cart/alice/add", {"product_id": "p-grinder", "quantity": 2}).status
        == 200
    )
    cart = fetch(web, "POST", "/cart/alice/add", {"product_id": "p-mug"}).json()
    assert cart["total_cents"] == 2 * 5900 + 1200
    assert [(i["product_id"], i["quantity"]) for i in cart["items"]] == [
        ("p-grinder", 2),
        ("p-mug", 1),
    ]

    receipt = fetch(web, "POST", "/checkout/alice")
    assert receipt.status == 200, receipt.body
    paid = receipt.json()
    assert paid["status"] == "paid" and paid["cart_cleared"] is True
    assert paid["order"]["total_cents"] == 13000
    assert paid["payment"]["version"] in {"v1", "v2"} and paid["payment"]["id"].startswith("pay-")
    assert fetch(web, "GET", "/cart/alice").json()["items"] == []

    empty = fetch(web, "POST", "/checkout/alice")
    assert (empty.status, empty.json()["error"]) == (400, "cart is empty")
    unknown = fetch(web, "POST", "/cart/alice/add", {"product_id": "p-nope"})
    assert unknown.status == 404 and "p-nope" in unknown.json()["error"]
    assert (
        fetch(web, "POST", "/cart/alice/add", {"product_id": "p-mug", "quantity": 0}).status == 400
    )


def test_failed_payment_is_a_502_and_keeps_the_cart(shop: Shop) -> None:
    web = shop.port("web")
    assert fetch(web, "POST", "/cart/bob/add", {"product_id": "p-kettle"}).status == 200
    set_faults(shop, fail_rate=1.0)
    try:
        failed = fetch(web, "POST", "/checkout/bob")
    finally:
        set_faults(shop)
    assert failed.status == 502
    assert failed.json() == {
        "error": "payment answered 503",
        "upstream_status": 503,
        "upstream": "injected failure",
    }
    assert [i["product_id"] for i in fetch(web, "GET", "/cart/bob").json()["items"]] == ["p-kettle"]
    assert fetch(web, "POST", "/checkout/bob").status == 200


def test_payment_faults_at_the_configured_rate(shop: Shop) -> None:
    payment = shop.port("payment-v1")
    set_faults(shop, fail_rate=0.25)
    try:
        statuses = [
            fetch(payment, "POST", "/pay", {"user": "u", "amount_cents": 100}).status
            for _ in range(200)
        ]
    finally:
        set_faults(shop)
    assert set(statuses) == {200, 503}
    assert 25 <= statuses.count(503) <= 75  # expected 50; 4 standard deviations either side

    state = fetch(payment, "GET", "/admin/faults").json()
    assert (state["version"], state["fail_rate"], state["delay_ms"]) == ("v1", 0.0, 0)
    bad = fetch(payment, "POST", "/admin/faults", {"fail_rate": 2})
    assert bad.status == 400 and "fail_rate" in bad.json()["error"]

    set_faults(shop, delay_ms=150)
    try:
        started = time.monotonic()
        slow = fetch(payment, "POST", "/pay", {"user": "u", "amount_cents": 100})
        elapsed = time.monotonic() - started
    finally:
        set_faults(shop)
    assert slow.status == 200 and elapsed >= 0.15

    key = {"idempotency-key": "order-42"}
    first = fetch(payment, "POST", "/pay", {"user": "u", "amount_cents": 5}, key).json()
    again = fetch(payment, "POST", "/pay", {"user": "u", "amount_cents": 5}, key).json()
    assert again["id"] == first["id"] and again["replayed"] is True


def test_payment_fault_flags_and_version(shop: Shop) -> None:
    failing = shop.start("payment-flags", "payment.py", "--version", "v2", "--fail-rate", "1")
    try:
        answer = fetch(failing.port, "POST", "/pay", {"user": "u", "amount_cents": 1})
    finally:
        failing.stop()
    assert answer.status == 503
    assert answer.json() == {"error": "injected failure", "version": "v2"}
    assert failing.process.returncode == 0  # SIGTERM is a clean stop
    assert failing.log().rstrip().endswith("payment-v2 stopped")


def test_trace_headers_are_forwarded_and_nothing_else(shop: Shop) -> None:
    web = shop.port("web")
    private = {"authorization": "Bearer not-for-peers", "cookie": "session=1", "x-custom": "no"}
    shop.proxy.take()
    assert (
        fetch(web, "POST", "/cart/carol/add", {"product_id": "p-filter"}, TRACE | private).status
        == 200
    )
    assert fetch(web, "POST", "/checkout/carol", None, TRACE | private).status == 200
    calls = shop.proxy.take()
    assert [(c.service, c.method, c.path) for c in calls] == [
        ("cart", "POST", "/cart/carol/items"),
        ("catalog", "GET", "/products/p-filter"),
        ("db", "GET", "/carts/carol"),
        ("db", "PUT", "/carts/carol"),
        ("cart", "GET", "/cart/carol"),
        ("db", "GET", "/carts/carol"),
        ("payment", "POST", "/pay"),
        ("cart", "DELETE", "/cart/carol"),
        ("db", "DELETE", "/carts/carol"),
    ]
    for call in calls:
        assert {k: call.headers.get(k) for k in TRACE} == TRACE, call
        extra = set(call.headers) - set(TRACE) - CLIENT_HEADERS - BODY_HEADERS
        assert extra == ({"idempotency-key"} if call.service == "payment" else set()), call

    # Only what arrived is forwarded: no trace header is invented.
    fetch(web, "GET", "/products", headers={"x-request-id": "only-this"})
    (catalog_call,) = shop.proxy.take()
    assert {k: v for k, v in catalog_call.headers.items() if k in TRACE} == {
        "x-request-id": "only-this"
    }


def test_cart_persists_through_db(shop: Shop) -> None:
    web = shop.port("web")
    assert (
        fetch(web, "POST", "/cart/dave/add", {"product_id": "p-espresso", "quantity": 3}).status
        == 200
    )

    shop.services["cart"].stop()  # cart keeps nothing itself
    shop.proxy.route("cart", shop.start("cart", "cart.py").port)
    assert fetch(web, "GET", "/cart/dave").json()["total_cents"] == 3 * 2490

    shop.services["db"].stop()  # db keeps it in its SQLite file
    down = fetch(web, "GET", "/cart/dave")
    assert down.status == 502
    assert (down.json()["error"], down.json()["upstream"]) == (
        "cart answered 502",
        "db answered 502",
    )
    db = shop.start("db", "db.py", "--data", str(shop.workdir / "shop.db"))
    shop.proxy.route("db", db.port)
    assert [i["quantity"] for i in fetch(web, "GET", "/cart/dave").json()["items"]] == [3]
    assert "dave" in fetch(db.port, "GET", "/carts").json()["keys"]


def test_errors_are_json(shop: Shop, tmp_path: Path) -> None:
    web = shop.port("web")
    assert fetch(web, "GET", "/healthz").json() == {"status": "ok", "service": "web"}
    assert fetch(web, "GET", "/nowhere").status == 404
    patch = fetch(web, "PATCH", "/")
    assert patch.status == 501 and "PATCH" in patch.json()["error"]
    wrong = fetch(web, "DELETE", "/checkout/erin")
    assert wrong.status == 405 and wrong.json()["allowed"] == ["POST"]
    not_json = _raw(web, b"content-length: 3", b"{x}")
    assert not_json.startswith(b"HTTP/1.1 400") and b"not JSON" in not_json
    chunked = _raw(web, b"transfer-encoding: chunked", b'5\r\n{"pro\r\n0\r\n\r\n')
    assert chunked.startswith(b"HTTP/1.1 400") and b"not JSON" in chunked
    too_big = _raw(web, b"content-length: 999999", b"")
    assert too_big.startswith(b"HTTP/1.1 413")
    both = _raw(web, b"content-length: 3\r\ntransfer-encoding: chunked", b"0\r\n\r\n")
    assert both.startswith(b"HTTP/1.1 400")

    # A peer that cannot be reached at all (no proxy listening) is a 502 naming it.
    lonely = ShopProcess("web-lonely", "web.py", [], service_env("http://127.0.0.1:9"), tmp_path)
    try:
        down = fetch(lonely.wait_listening().port, "GET", "/products")
    finally:
        lonely.stop()
    assert down.status == 502 and down.json()["error"].startswith("catalog unreachable:")
    assert "GET /products 502" in lonely.log()


def _raw(port: int, framing: bytes, body: bytes) -> bytes:
    """POST /cart/erin/add with hand-made framing; the whole answer (the connection closes)."""
    head = b"POST /cart/erin/add HTTP/1.1\r\nhost: web\r\nconnection: close\r\n"
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + framing + b"\r\n\r\n" + body)
        for _ in range(100):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_shopper_drives_the_shop(shop: Shop) -> None:
    web = shop.port("web")
    command = [sys.executable, str(SHOP_DIR / "shopper.py"), "--web", f"http://127.0.0.1:{web}"]
    command += ["--users", "3", "--checkouts", "8", "--duration", "8", "--think-ms", "0"]
    done = subprocess.run(
        [*command, "--seed", "5", "--json"],
        env=service_env(shop.proxy.url),
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert summary["checkouts"] == {"attempted": 8, "succeeded": 8, "success_rate": 1.0}
    assert all(key.split()[1] == "200" for key in summary["by_outcome"]), summary
    assert summary["payment_versions"].keys() == {"v1", "v2"}  # the test proxy alternates
    assert sum(summary["payment_versions"].values()) == 8
