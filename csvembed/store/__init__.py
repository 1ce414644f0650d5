"""Where vectors are kept: `open_store` picks a backend from the --db value.

A postgresql:// URL is PostgreSQL with pgvector (many hosts); anything else is a SQLite file with
sqlite-vec. Each backend is imported only when used, so psycopg stays out of SQLite-only
commands. A third backend is one new module that satisfies `Store`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from csvembed.errors import NoStore
from csvembed.store.base import (
    COLUMNS_SAMPLE,
    LATER_WINS,
    Hit,
    Store,
    StoredRow,
    content_hash,
    reading,
    row_json,
    row_vector,
)

__all__ = ["COLUMNS_SAMPLE", "LATER_WINS", "Hit", "Store", "StoredRow", "content_hash", "is_postgres_url",
           "open_existing_store", "open_store", "reading_store", "reading", "row_json", "row_vector"]


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def open_store(db: str) -> Store:
    """The store named by --db: a postgresql:// URL, else a SQLite file path (created if missing)."""
    if is_postgres_url(db):
        from csvembed.store.postgres import PostgresStore  # psycopg: only for a PostgreSQL URL

        return PostgresStore(db)
    from csvembed.store.sqlite import SqliteStore

    return SqliteStore(Path(db))


def open_existing_store(db: str, read_only: bool = False) -> Store | None:
    """The store, or None if nothing was ever stored there; readers never create an empty file.

    read_only: a SQLite store is opened read-only and written nothing (no schema, no journal mode), so
    search and export work on a store they may not write; one without csvembed's tables is None.
    """
    if is_postgres_url(db):
        from csvembed.store.postgres import PostgresStore  # psycopg: only for a PostgreSQL URL

        return PostgresStore(db)
    if not Path(db).exists():
        return None
    from csvembed.store.sqlite import SqliteStore

    store = SqliteStore(Path(db), read_only=read_only)
    if not store.has_schema:
        store.close()
        return None
    return store


@contextmanager
def reading_store(db: str) -> Iterator[Store]:
    """The store opened read-only for search and export, holding at least one vector; NoStore otherwise."""
    store = open_existing_store(db, read_only=True)
    if store is None:
        raise NoStore(db)
    try:
        if store.dimension is None:
            raise NoStore(db)
        yield store
    finally:
        store.close()
