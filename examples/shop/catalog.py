"""catalog: the shop's products and their prices (a small fixed list).

    GET /products       -> {"products": [{"id", "name", "price_cents", "currency"}, ...]}
    GET /products/{id}  -> one product, or 404

Run alone: `python examples/shop/catalog.py --port 8101`. It calls no one.
"""

from __future__ import annotations

from _http import HttpError, Reply, Request, route, serve, service_parser

PRODUCTS = (
    {"id": "p-espresso", "name": "Espresso beans, 1 kg", "price_cents": 2490, "currency": "EUR"},
    {"id": "p-grinder", "name": "Hand grinder", "price_cents": 5900, "currency": "EUR"},
    {"id": "p-kettle", "name": "Gooseneck kettle", "price_cents": 4450, "currency": "EUR"},
    {"id": "p-filter", "name": "Paper filters, 100", "price_cents": 590, "currency": "EUR"},
    {"id": "p-mug", "name": "Stoneware mug", "price_cents": 1200, "currency": "EUR"},
)


def list_products(request: Request) -> Reply:
    return Reply(200, {"products": list(PRODUCTS)})


def get_product(request: Request) -> Reply:
    (product_id,) = request.params
    for product in PRODUCTS:
        if product["id"] == product_id:
            return Reply(200, product)
    raise HttpError(404, f"no product {product_id!r}")


def main() -> None:
    args = service_parser("The shop's product catalog.").parse_args()
    routes = [
        route("GET", "/products", list_products),
        route("GET", "/products/([A-Za-z0-9_.-]{1,64})", get_product),
    ]
    serve("catalog", routes, args.host, args.port)


if __name__ == "__main__":
    main()
