"""db: a small SQLite-backed JSON document store over HTTP.

    GET    /{collection}        -> {"collection", "keys": [...]}
    GET    /{collection}/{key}  -> {"collection", "key", "value", "version"}, or 404
    PUT    /{collection}/{key}  body: a JSON object -> the stored envelope (version + 1)
    DELETE /{collection}/{key}  -> {"collection", "key", "deleted": true|false}

The last write wins (no conditional writes). The data file is `--data PATH`,
else `$SHOP_DB_PATH`, else `shop.db` in a new temporary directory (logged at
start). Run alone: `python examples/shop/db.py --port 8102 --data /tmp/shop.db`.
It calls no one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from pathlib import Path

from _http import HttpError, Reply, Request, log, route, serve, service_parser

COLLECTION = r"([a-z][a-z0-9_-]{0,31})"
KEY = r"([A-Za-z0-9_.-]{1,128})"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (collection, key)
)
"""


class DocumentStore:
    """One SQLite connection shared by the server's threads behind a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def keys(self, collection: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM documents WHERE collection = ? ORDER BY key", (collection,)
            ).fetchall()
        return [str(row[0]) for row in rows]

    def get(self, collection: str, key: str) -> tuple[object, int] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value, version FROM documents WHERE collection = ? AND key = ?",
                (collection, key),
            ).fetchone()
        return None if row is None else (json.loads(row[0]), int(row[1]))

    def put(self, collection: str, key: str, value: object) -> int:
        encoded = json.dumps(value, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT INTO documents (collection, key, value, version) VALUES (?, ?, ?, 1)"
                " ON CONFLICT (collection, key) DO UPDATE"
                " SET value = excluded.value, version = documents.version + 1",
                (collection, key, encoded),
            )
            row = self._db.execute(
                "SELECT version FROM documents WHERE collection = ? AND key = ?",
                (collection, key),
            ).fetchone()
        return int(row[0])

    def delete(self, collection: str, key: str) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM documents WHERE collection = ? AND key = ?", (collection, key)
            )
        return cursor.rowcount > 0


class DocumentApi:
    """The HTTP routes over a `DocumentStore`."""

    def __init__(self, store: DocumentStore) -> None:
        self.store = store

    def list_keys(self, request: Request) -> Reply:
        (collection,) = request.params
        return Reply(200, {"collection": collection, "keys": self.store.keys(collection)})

    def get(self, request: Request) -> Reply:
        collection, key = request.params
        found = self.store.get(collection, key)
        if found is None:
            raise HttpError(404, f"no document {collection}/{key}")
        value, version = found
        return Reply(
            200, {"collection": collection, "key": key, "value": value, "version": version}
        )

    def put(self, request: Request) -> Reply:
        collection, key = request.params
        value = request.json_object()
        version = self.store.put(collection, key, value)
        return Reply(
            200, {"collection": collection, "key": key, "value": value, "version": version}
        )

    def delete(self, request: Request) -> Reply:
        collection, key = request.params
        deleted = self.store.delete(collection, key)
        return Reply(200, {"collection": collection, "key": key, "deleted": deleted})


def _data_path(flag: str | None) -> Path:
    chosen = flag or os.environ.get("SHOP_DB_PATH")
    if chosen:
        return Path(chosen)
    return Path(tempfile.mkdtemp(prefix="shop-db-")) / "shop.db"


def main() -> None:
    parser = service_parser("The shop's SQLite-backed document store.")
    parser.add_argument("--data", help="SQLite file (default: $SHOP_DB_PATH, else a temp dir)")
    args = parser.parse_args()
    path = _data_path(args.data)
    try:
        store = DocumentStore(path)
    except sqlite3.Error as exc:
        raise SystemExit(f"db: cannot open {path}: {exc}") from None
    log(f"db data file {path}")
    api = DocumentApi(store)
    routes = [
        route("GET", f"/{COLLECTION}", api.list_keys),
        route("GET", f"/{COLLECTION}/{KEY}", api.get),
        route("PUT", f"/{COLLECTION}/{KEY}", api.put),
        route("DELETE", f"/{COLLECTION}/{KEY}", api.delete),
    ]
    serve("db", routes, args.host, args.port)


if __name__ == "__main__":
    main()
