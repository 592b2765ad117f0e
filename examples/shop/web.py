"""web: the shop's front door.

    GET  /                   -> an HTML page listing the products
    GET  /products           -> the catalog, as JSON
    GET  /cart/{user}        -> the user's cart
    POST /cart/{user}/add    body {"product_id", "quantity"?} -> the cart
    POST /checkout/{user}    -> {"status": "paid", "order", "payment": {"id", "version"}, ...}

Checkout reads the cart, asks `payment` for its total (with an
`idempotency-key`), then clears the cart; a failed payment leaves the cart as
it was and answers 502. Calls `http://catalog`, `http://cart` and
`http://payment`. Run alone: `python examples/shop/web.py --port 8100`, with
HTTP_PROXY pointing at something that knows those names.
"""

from __future__ import annotations

import html
import uuid
from typing import Any

from _http import (
    USER_ID,
    HttpError,
    Reply,
    Request,
    Response,
    call,
    expect_ok,
    route,
    serve,
    service_parser,
)

CATALOG = "http://catalog"
CART = "http://cart"
PAYMENT = "http://payment"


def _relay(response: Response, peer: str) -> dict[str, Any]:
    """A 2xx document; a 400/404 the peer's application explained is passed on; else 502."""
    document = response.document
    explained = isinstance(document, dict) and isinstance(document.get("error"), str)
    if response.status in (400, 404) and explained:
        raise HttpError(response.status, document["error"])
    return expect_ok(response, peer)


def home(request: Request) -> Reply:
    products = expect_ok(call("GET", f"{CATALOG}/products", request.trace), "catalog")
    rows = "\n".join(
        f"<tr><td><code>{html.escape(str(p['id']))}</code></td>"
        f"<td>{html.escape(str(p['name']))}</td>"
        f"<td>{int(p['price_cents']) / 100:.2f} {html.escape(str(p['currency']))}</td></tr>"
        for p in products.get("products", [])
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Trellis shop</title></head>
<body>
<h1>Trellis shop</h1>
<table>
<tr><th>id</th><th>product</th><th>price</th></tr>
{rows}
</table>
<p>API: <code>GET /products</code>, <code>GET /cart/USER</code>,
<code>POST /cart/USER/add {{"product_id": "...", "quantity": 1}}</code>,
<code>POST /checkout/USER</code>.</p>
</body></html>
"""
    return Reply.html(page)


def products(request: Request) -> Reply:
    return Reply(200, expect_ok(call("GET", f"{CATALOG}/products", request.trace), "catalog"))


def get_cart(request: Request) -> Reply:
    (user,) = request.params
    return Reply(200, _relay(call("GET", f"{CART}/cart/{user}", request.trace), "cart"))


def add_to_cart(request: Request) -> Reply:
    (user,) = request.params
    body = request.json_object()
    item = {"product_id": body.get("product_id"), "quantity": body.get("quantity", 1)}
    answer = call("POST", f"{CART}/cart/{user}/items", request.trace, item)
    return Reply(200, _relay(answer, "cart"))


def checkout(request: Request) -> Reply:
    (user,) = request.params
    cart = _relay(call("GET", f"{CART}/cart/{user}", request.trace), "cart")
    if not cart.get("items"):
        raise HttpError(400, "cart is empty")
    order = {key: cart[key] for key in ("items", "total_cents", "currency")}
    headers = {**request.trace, "idempotency-key": f"checkout-{uuid.uuid4().hex}"}
    bill = {"user": user, "amount_cents": cart["total_cents"]}
    paid = expect_ok(call("POST", f"{PAYMENT}/pay", headers, bill), "payment")
    try:  # the payment went through: a cart that could not be cleared is not an error
        cleared = call("DELETE", f"{CART}/cart/{user}", request.trace).ok
    except HttpError:
        cleared = False
    receipt = {key: paid.get(key) for key in ("id", "status", "version")}
    return Reply(
        200,
        {
            "user": user,
            "status": "paid",
            "order": order,
            "payment": receipt,
            "cart_cleared": cleared,
        },
    )


def main() -> None:
    args = service_parser("The shop's front door.").parse_args()
    routes = [
        route("GET", "/", home),
        route("GET", "/products", products),
        route("GET", f"/cart/({USER_ID})", get_cart),
        route("POST", f"/cart/({USER_ID})/add", add_to_cart),
        route("POST", f"/checkout/({USER_ID})", checkout),
    ]
    serve("web", routes, args.host, args.port)


if __name__ == "__main__":
    main()
