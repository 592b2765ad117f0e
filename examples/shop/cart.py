"""cart: each user's shopping cart, stored through `db`, products checked with `catalog`.

    GET    /cart/{user}        -> {"user", "items": [...], "total_cents", "currency"}
    POST   /cart/{user}/items  body {"product_id", "quantity": 1-99 (default 1)} -> the cart
    DELETE /cart/{user}        -> the (now empty) cart

Calls `http://catalog/products/{id}` and `http://db/carts/{user}` (GET, PUT,
DELETE). Run alone: `python examples/shop/cart.py --port 8103`, with
HTTP_PROXY pointing at something that knows `catalog` and `db`.
"""

from __future__ import annotations

import re
from typing import Any

from _http import USER_ID, HttpError, Reply, Request, call, expect_ok, route, serve, service_parser

CATALOG = "http://catalog"
DB = "http://db"
MAX_QUANTITY = 99
_PRODUCT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _cart_view(user: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(int(item["unit_price_cents"]) * int(item["quantity"]) for item in items)
    currency = items[0]["currency"] if items else "EUR"
    return {"user": user, "items": items, "total_cents": total, "currency": currency}


def _stored_items(user: str, trace: dict[str, str]) -> list[dict[str, Any]]:
    response = call("GET", f"{DB}/carts/{user}", trace)
    if response.status == 404:
        return []
    value = expect_ok(response, "db").get("value")
    items = value.get("items") if isinstance(value, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise HttpError(502, f"db returned a malformed cart for {user}")
    return items


def get_cart(request: Request) -> Reply:
    (user,) = request.params
    return Reply(200, _cart_view(user, _stored_items(user, request.trace)))


def add_item(request: Request) -> Reply:
    (user,) = request.params
    body = request.json_object()
    product_id = body.get("product_id")
    quantity = body.get("quantity", 1)
    if not isinstance(product_id, str) or not _PRODUCT_ID.fullmatch(product_id):
        raise HttpError(400, "product_id must be a product id string")
    if type(quantity) is not int or not 1 <= quantity <= MAX_QUANTITY:
        raise HttpError(400, f"quantity must be an integer 1-{MAX_QUANTITY}")
    found = call("GET", f"{CATALOG}/products/{product_id}", request.trace)
    if found.status == 404:
        raise HttpError(404, f"no product {product_id!r}")
    product = expect_ok(found, "catalog")
    if not {"name", "price_cents", "currency"} <= product.keys():
        raise HttpError(502, f"catalog returned a malformed product {product_id!r}")
    items = _stored_items(user, request.trace)
    for item in items:
        if item.get("product_id") == product_id:
            item["quantity"] = min(MAX_QUANTITY, int(item["quantity"]) + quantity)
            break
    else:
        items.append(
            {
                "product_id": product_id,
                "name": product["name"],
                "unit_price_cents": product["price_cents"],
                "currency": product["currency"],
                "quantity": quantity,
            }
        )
    expect_ok(call("PUT", f"{DB}/carts/{user}", request.trace, {"items": items}), "db")
    return Reply(200, _cart_view(user, items))


def clear_cart(request: Request) -> Reply:
    (user,) = request.params
    expect_ok(call("DELETE", f"{DB}/carts/{user}", request.trace), "db")
    return Reply(200, _cart_view(user, []))


def main() -> None:
    args = service_parser("The shop's carts (stored through db).").parse_args()
    routes = [
        route("GET", f"/cart/({USER_ID})", get_cart),
        route("POST", f"/cart/({USER_ID})/items", add_item),
        route("DELETE", f"/cart/({USER_ID})", clear_cart),
    ]
    serve("cart", routes, args.host, args.port)


if __name__ == "__main__":
    main()
