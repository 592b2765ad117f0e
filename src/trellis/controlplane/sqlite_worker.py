"""The thread side of `SqliteConfigStore`: schema, row codec and transactions.

Everything here runs on the store's single worker thread, which owns the
sqlite3 connection; `sqlite_store` is the asyncio facade.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from trellis.api.meta import ResourceKey
from trellis.controlplane.store import (
    ResourceList,
    ResourceWrite,
    StoredResource,
    StoreError,
    WatchEvent,
    WatchEventType,
    canonical_json,
)
from trellis.controlplane.write_plan import (
    BatchPlan,
    plan_batch,
    plan_delete,
    prepare_writes,
)

SCHEMA_VERSION = "1"
BACKLOG_PAGE = 1_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    api_version TEXT NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    spec TEXT NOT NULL,
    resource_version INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    uid TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER PRIMARY KEY,
    type TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    document TEXT NOT NULL
);
"""

COLUMNS = (
    "kind, namespace, name, api_version, labels, annotations, spec, "
    "resource_version, generation, uid, created, updated"
)


def row_to_resource(row: Sequence[Any]) -> StoredResource:
    kind, namespace, name, api_version, labels, annotations, spec, version, generation = row[:9]
    uid, created, updated = row[9:]
    return StoredResource(
        api_version=api_version,
        kind=kind,
        namespace=namespace,
        name=name,
        spec_json=spec,
        resource_version=str(version),
        generation=generation,
        uid=uid,
        created_at=created,
        updated_at=updated,
        labels=MappingProxyType(json.loads(labels)),
        annotations=MappingProxyType(json.loads(annotations)),
    )


def resource_to_row(resource: StoredResource) -> tuple[Any, ...]:
    return (
        resource.kind,
        resource.namespace,
        resource.name,
        resource.api_version,
        canonical_json(dict(resource.labels)),
        canonical_json(dict(resource.annotations)),
        resource.spec_json,
        int(resource.resource_version),
        resource.generation,
        resource.uid,
        resource.created_at,
        resource.updated_at,
    )


def _encode_document(resource: StoredResource) -> str:
    """The change log's copy of a resource: one readable JSON object."""
    return canonical_json(
        {
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "namespace": resource.namespace,
            "name": resource.name,
            "labels": dict(resource.labels),
            "annotations": dict(resource.annotations),
            "spec": json.loads(resource.spec_json),
            "resourceVersion": resource.resource_version,
            "generation": resource.generation,
            "uid": resource.uid,
            "created": resource.created_at,
            "updated": resource.updated_at,
        }
    )


def _decode_event(event_type: str, document: str) -> WatchEvent:
    doc = json.loads(document)
    resource = StoredResource(
        api_version=doc["apiVersion"],
        kind=doc["kind"],
        namespace=doc["namespace"],
        name=doc["name"],
        spec_json=canonical_json(doc["spec"]),
        resource_version=doc["resourceVersion"],
        generation=doc["generation"],
        uid=doc["uid"],
        created_at=doc["created"],
        updated_at=doc["updated"],
        labels=MappingProxyType(doc["labels"]),
        annotations=MappingProxyType(doc["annotations"]),
    )
    return WatchEvent(WatchEventType(event_type), resource, resource.resource_version)


class SqliteWorker:
    """The SQLite side: runs only on the store's worker thread, which owns the connection."""

    def __init__(self, path: Path, change_log_limit: int) -> None:
        self._path = path
        self._change_log_limit = change_log_limit
        self._conn: sqlite3.Connection | None = None
        self.on_commit: Callable[[list[WatchEvent]], None] | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"config store {self._path} is not open")
        return self._conn

    def open(self) -> int:
        conn = sqlite3.connect(self._path, isolation_level=None)
        self._conn = conn
        (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StoreError(f"config store {self._path}: cannot use WAL journaling (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        with self._transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?), ('version', '0')",
                (SCHEMA_VERSION,),
            )
            (schema,) = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if schema != SCHEMA_VERSION:
            raise StoreError(
                f"config store {self._path}: schema version {schema}, "
                f"this Trellis reads version {SCHEMA_VERSION}"
            )
        return self.version()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def version(self) -> int:
        (value,) = self.conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(value)

    def get(self, key: ResourceKey) -> StoredResource | None:
        row = self.conn.execute(
            f"SELECT {COLUMNS} FROM resources WHERE kind = ? AND namespace = ? AND name = ?", key
        ).fetchone()
        return None if row is None else row_to_resource(row)

    def list_resources(self, kind: str | None, namespace: str | None) -> ResourceList:
        with self._transaction(immediate=False):
            rows = self.conn.execute(
                f"SELECT {COLUMNS} FROM resources"
                " WHERE (:kind IS NULL OR kind = :kind)"
                " AND (:namespace IS NULL OR namespace = :namespace)"
                " ORDER BY kind, namespace, name",
                {"kind": kind, "namespace": namespace},
            ).fetchall()
            version = self.version()
        items = tuple(row_to_resource(row) for row in rows)
        return ResourceList(items=items, resource_version=str(version))

    def apply(self, items: Sequence[ResourceWrite], now: str) -> BatchPlan:
        prepared = prepare_writes(items)
        with self._transaction():
            plan = plan_batch(prepared, self.get, self.version(), now)
            self._record(plan.events)
        self._announce(plan.events)
        return plan

    def delete(self, key: ResourceKey, expected: str | None) -> WatchEvent | None:
        with self._transaction():
            current = self.get(key)
            if current is None:
                return None
            event = plan_delete(current, expected, self.version())
            self._record([event])
        self._announce([event])
        return event

    def backlog(self, after: int, upto: int) -> list[WatchEvent]:
        rows = self.conn.execute(
            "SELECT type, document FROM changes WHERE version > ? AND version <= ?"
            " ORDER BY version LIMIT ?",
            (after, upto, BACKLOG_PAGE),
        ).fetchall()
        return [_decode_event(event_type, document) for event_type, document in rows]

    def _record(self, events: Sequence[WatchEvent]) -> None:
        if not events:
            return
        conn = self.conn
        for event in events:
            resource = event.resource
            if event.type is WatchEventType.DELETED:
                conn.execute(
                    "DELETE FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
                    resource.key,
                )
            else:
                conn.execute(
                    f"INSERT OR REPLACE INTO resources ({COLUMNS}) VALUES ({', '.join('?' * 12)})",
                    resource_to_row(resource),
                )
            conn.execute(
                "INSERT INTO changes (version, type, kind, namespace, name, document)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    int(event.resource_version),
                    event.type.value,
                    *resource.key,
                    _encode_document(resource),
                ),
            )
        last = int(events[-1].resource_version)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(last),))
        conn.execute("DELETE FROM changes WHERE version <= ?", (last - self._change_log_limit,))

    def _announce(self, events: list[WatchEvent]) -> None:
        if events and self.on_commit is not None:
            self.on_commit(events)

    def _transaction(self, *, immediate: bool = True) -> Transaction:
        return Transaction(self.conn, immediate)


class Transaction:
    """BEGIN on enter; COMMIT on success (durable when it returns), ROLLBACK on any error."""

    def __init__(self, conn: sqlite3.Connection, immediate: bool) -> None:
        self._conn = conn
        self._begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    def __enter__(self) -> None:
        self._conn.execute(self._begin)

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
