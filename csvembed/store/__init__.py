"""Where vectors are kept: `open_store` picks a backend from the --db value.

A postgresql:// URL is PostgreSQL with pgvector (many hosts); anything else is a SQLite file with
sqlite-vec. Each backend is imported only when used, so psycopg stays out of SQLite-only
commands. A third backend is one new module that satisfies `Store`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from csvembed.errors import InputError, NoStore
from csvembed.store.base import (
    COLUMNS_SAMPLE,
    LATER_WINS,
    Hit,
    Store,
    StoredRow,
    content_hash,
    other_model,
    reading,
    row_json,
    row_vector,
)

__all__ = ["COLUMNS_SAMPLE", "LATER_WINS", "Hit", "Store", "StoredRow", "check_same_store", "content_hash",
           "is_postgres_url", "open_existing_store", "open_store", "other_model", "reading", "reading_store",
           "row_json", "row_vector", "store_label"]


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def store_label(db: str) -> str:
    """Where a submission's rows go, as its record keeps it: a SQLite file's absolute path, or a PostgreSQL
    server and database without user or password. Workers, readers and owners connect as different roles
    (and passwords change): every URL of the same database names the same store, and no secret is kept."""
    if not is_postgres_url(db):
        return str(Path(db).expanduser().absolute())
    parts = urlsplit(db)
    server = parts.netloc.rpartition("@")[2]  # rpartition: a password may hold a raw "@"
    host = parse_qs(parts.query).get("host")  # a unix socket's folder, given as ?host=
    return f"postgresql://{server}{parts.path}" + (f"?host={host[0]}" if host else "")


def check_same_store(recorded: str, db: str, submission_id: str) -> None:
    """Refuse a --db other than the one a submission stored its rows in (records made before this have none):
    a delete there would drop its records and leave its rows behind."""
    if recorded and recorded != store_label(db):
        raise InputError(f"submission {submission_id} stored its rows in {recorded}, not {store_label(db)}:"
                         f" use --db {recorded}")


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
